import collections

import orjson
import pytest
from PIL import Image

from ml_assets.data.sample import CATEGORIES, coco_document, write_sample


def test_same_seed_same_bytes_and_larger_sets_extend_smaller_ones():
    doc_a, files_a = coco_document(seed=5, images=6, size=64)
    doc_b, files_b = coco_document(seed=5, images=9, size=64)
    assert files_a == files_b[:6]
    assert doc_a["annotations"] == [a for a in doc_b["annotations"] if a["image_id"] <= 6]
    _, files_c = coco_document(seed=6, images=6, size=64)
    assert files_c != files_a


def test_sample_has_classes_imbalance_empty_images_and_overlap():
    doc, _ = coco_document(seed=0, images=400, size=96)
    counts = collections.Counter(a["category_id"] for a in doc["annotations"])
    assert set(counts) == {c["id"] for c in CATEGORIES}
    assert counts[1] > 2 * counts[4]  # circles common, crosses rare
    per_image = collections.Counter(a["image_id"] for a in doc["annotations"])
    assert 0 < 400 - len(per_image) < 80  # some images have no objects
    assert max(per_image.values()) >= 4

    def overlaps(a, b):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
        return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah

    by_image = collections.defaultdict(list)
    for a in doc["annotations"]:
        by_image[a["image_id"]].append(a)
    assert any(
        overlaps(a, b)
        for anns in by_image.values()
        for i, a in enumerate(anns)
        for b in anns[i + 1 :]
    )
    widths = [a["bbox"][2] for a in doc["annotations"]]
    assert max(widths) > 2.5 * min(widths)


def test_write_sample_layout_is_read_by_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    root = write_sample(tmp_path / "s", images=5, size=40)
    coco = COCO(str(root / "annotations.json"))
    assert len(coco.getImgIds()) == 5
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(root / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 40.01 and y + h <= 40.01 and w > 0 and h > 0
        assert coco.annToMask(ann).sum() > 0


def test_write_sample_refuses_existing_destination_and_bad_sizes(tmp_path):
    root = write_sample(tmp_path / "s", images=2, size=32)
    before = orjson.loads((root / "annotations.json").read_bytes())
    with pytest.raises(FileExistsError, match="already exists"):
        write_sample(root, images=3)
    assert orjson.loads((root / "annotations.json").read_bytes()) == before
    with pytest.raises(ValueError, match="at least 1"):
        write_sample(tmp_path / "t", images=0)
    assert not (tmp_path / "t").exists()
