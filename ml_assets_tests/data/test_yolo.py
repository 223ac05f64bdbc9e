from __future__ import annotations

import pytest
import yaml
from formats_helpers import small_coco, tree_hash, write_image

from ml_assets.data.formats import convert, read_dataset
from ml_assets.data.tables import DatasetError
from ml_assets.data.yolo import read_yolo, write_yolo


def yolo_folder(root, names, labels):
    """Images a..c (20x10) in images/train; ``labels`` maps stem -> label text (None: no file)."""
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / "train" / f"{stem}.png", 20, 10, i)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    config = {"train": "images/train", "val": "images/train", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.parametrize("names", [["cat", "dog"], {0: "cat", 1: "dog"}, {"0": "cat", "1": "dog"}])
def test_reads_boxes_polygons_empty_and_missing_labels(tmp_path, names):
    labels = {"a": "1 0.5 0.5 0.5 0.2\n0 0.1 0.1 0.3 0.1 0.3 0.5\n", "b": "", "c": None}
    ds = read_yolo(yolo_folder(tmp_path / "y", names, labels)).validated()
    assert ds.category_names == {0: "cat", 1: "dog"}
    assert len(ds.images) == 3  # val == train is read once
    assert set(ds.images["split"]) == {"train"}
    box, polygon = ds.annotations.to_dict("records")
    assert (box["category_id"], box["x"], box["y"], box["w"], box["h"]) == (1, 5.0, 4.0, 10.0, 2.0)
    assert polygon["category_id"] == 0
    assert [polygon["x"], polygon["y"], polygon["w"], polygon["h"]] == pytest.approx([2, 1, 4, 4])
    assert polygon["segmentation"] == [pytest.approx([2, 1, 6, 1, 6, 5])]


def test_class_ids_survive_coco_yolo_coco(tmp_path):
    src = small_coco(tmp_path / "src")
    before = tree_hash(src)
    convert(src, tmp_path / "yolo", to="yolo")
    config = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert config["names"] == {0: "car", 1: "toothbrush"}
    assert config["category_ids"] == [1, 90]
    assert (tmp_path / "yolo" / "labels" / "train" / "sub" / "b.txt").read_text() == ""
    # one polygon line (annotation 1), one box line (2), the crowd left out
    lines = (tmp_path / "yolo" / "labels" / "train" / "a.txt").read_text().splitlines()
    assert sorted(len(line.split()) for line in lines) == [5, 9]
    back = convert(tmp_path / "yolo", tmp_path / "coco", to="coco")
    assert back.category_names == {1: "car", 90: "toothbrush"}
    assert tree_hash(src) == before


def test_malformed_line_and_unknown_class_name_the_line(tmp_path):
    root = yolo_folder(tmp_path / "y", ["cat"], {"a": "0 0.5 0.5 0.1 0.1\n0 0.5 x 0.1 0.1\n"})
    with pytest.raises(DatasetError, match=r"labels/train/a\.txt \[line 2\]"):
        read_yolo(root)
    (root / "labels" / "train" / "a.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"a\.txt \[line 1\]: class 3"):
        read_yolo(root)


def test_written_yaml_points_val_at_val_split(tmp_path):
    ds = read_dataset(small_coco(tmp_path / "src"))
    ds.images["split"] = ["train", "train", "val"]
    out = write_yolo(ds, tmp_path / "yolo")
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert (config["train"], config["val"]) == ("images/train", "images/val")
    assert (out / "images" / "val" / "c.png").is_file()
    assert dict(
        zip(read_yolo(out).images["file_name"], read_yolo(out).images["split"], strict=True)
    ) == {
        "images/train/a.png": "train",
        "images/train/sub/b.png": "train",
        "images/val/c.png": "val",
    }


@pytest.mark.slow
def test_ultralytics_trains_on_our_output(tmp_path):
    from ml_assets.runtime import ultralytics_ready

    ultralytics_ready()
    from ultralytics import YOLO

    labels = {f"i{n}": f"{n % 2} 0.5 0.5 0.4 0.6\n" for n in range(6)}
    ds = read_yolo(yolo_folder(tmp_path / "src", ["cat", "dog"], labels))
    out = write_yolo(ds, tmp_path / "yolo")
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(out / "data.yaml"),
        epochs=1,
        imgsz=64,
        batch=2,
        workers=0,
        plots=False,
        amp=False,
        device="cpu",
        project=str(tmp_path / "runs"),
        name="t",
        exist_ok=True,
        verbose=False,
    )
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    assert model.trainer.data["names"] == {0: "cat", 1: "dog"}
    assert (out / "labels" / "train.cache").is_file()  # ultralytics found and parsed our labels
