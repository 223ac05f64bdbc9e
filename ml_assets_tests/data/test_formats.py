from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from formats_helpers import BOX_FORMATS, assert_same_boxes, datasets, small_coco, tree_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_assets.data.formats import convert, detect_format, read_dataset, write_dataset


@pytest.mark.parametrize(("source", "target"), list(itertools.product(BOX_FORMATS, BOX_FORMATS)))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_between_box_formats(source, target, data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        original = data.draw(datasets(tmp / "mem"))
        src = write_dataset(original, tmp / "src", source)
        before = tree_hash(src)
        converted = convert(src, tmp / "dst", to=target)
        back = read_dataset(tmp / "dst", target)
        assert tree_hash(src) == before
        assert_same_boxes(original, converted)
        assert_same_boxes(original, back)
        back.validated()
        if {source, target} <= {"coco", "yolo"}:  # both hold category ids and polygons
            assert back.category_names == original.category_names
            polygons = back.annotations["segmentation"].map(lambda s: s is not None).sum()
            assert (
                polygons == original.annotations["segmentation"].map(lambda s: s is not None).sum()
            )
        several = original.images["split"].nunique() > 1  # COCO keeps splits as files only then
        if (original.images["split"] != "").all() and (several or "coco" not in (source, target)):
            assert sorted(back.images["split"]) == sorted(original.images["split"])


@pytest.mark.parametrize("fmt", [*BOX_FORMATS, "imagefolder"])
def test_detects_what_it_wrote(tmp_path, fmt):
    ds = read_dataset(small_coco(tmp_path / "src"))
    if fmt == "imagefolder":
        ds.annotations = ds.annotations[ds.annotations["category_id"] == 1]
        ds.images = ds.images[ds.images["image_id"].isin(ds.annotations["image_id"])]
    write_dataset(ds, tmp_path / fmt, fmt)
    assert detect_format(tmp_path / fmt) == fmt


def test_unknown_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=str(tmp_path)):
        detect_format(tmp_path)


def test_existing_destination_is_refused_then_replaced(tmp_path):
    ds = read_dataset(small_coco(tmp_path / "src"))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="dst"):
        write_dataset(ds, tmp_path / "dst", "yolo")
    with pytest.raises(FileExistsError, match="dst"):
        convert(tmp_path / "src", tmp_path / "dst", to="yolo")
    assert (tmp_path / "dst" / "old.txt").read_text() == "old"
    convert(tmp_path / "src", tmp_path / "dst", to="yolo", overwrite=True)
    assert (tmp_path / "dst" / "data.yaml").is_file()
    assert not (tmp_path / "dst" / "old.txt").exists()


def test_destination_inside_source_is_refused(tmp_path):
    src = small_coco(tmp_path / "src")
    before = tree_hash(src)
    with pytest.raises(ValueError, match="read-only"):
        convert(src, src / "yolo", to="yolo")
    assert tree_hash(src) == before


def test_failed_conversion_leaves_nothing(tmp_path):
    src = small_coco(tmp_path / "src")  # image a.png has two classes: no image folder for it
    before = tree_hash(src)
    with pytest.raises(ValueError, match="a.png"):
        convert(src, tmp_path / "dst", to="imagefolder")
    assert not (tmp_path / "dst").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left behind
    assert tree_hash(src) == before


def test_missing_image_fails_the_conversion_cleanly(tmp_path):
    src = small_coco(tmp_path / "src")
    (src / "images" / "c.png").unlink()
    with pytest.raises(ValueError, match="c.png"):
        convert(src, tmp_path / "dst", to="voc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
