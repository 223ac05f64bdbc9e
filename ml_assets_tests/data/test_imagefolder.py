from __future__ import annotations

import pandas as pd
import pytest
from formats_helpers import tree_hash, write_image

from ml_assets.data.formats import convert, read_dataset
from ml_assets.data.imagefolder import read_imagefolder, write_imagefolder
from ml_assets.data.tables import DatasetError


def folder(root):
    write_image(root / "cat" / "a.png", 12, 10, 1)
    write_image(root / "cat" / "more" / "b.png", 8, 8, 2)
    write_image(root / "dog" / "c.png", 9, 11, 3)
    (root / "empty").mkdir()
    return root


def test_reads_one_whole_image_annotation_per_image(tmp_path):
    ds = read_imagefolder(folder(tmp_path / "src")).validated()
    assert ds.category_names == {0: "cat", 1: "dog", 2: "empty"}
    assert ds.images["file_name"].tolist() == ["cat/a.png", "cat/more/b.png", "dog/c.png"]
    boxes = ds.annotations[["image_id", "category_id", "x", "y", "w", "h"]].values.tolist()
    assert boxes == [[0, 0, 0, 0, 12, 10], [1, 0, 0, 0, 8, 8], [2, 1, 0, 0, 9, 11]]


def test_round_trip_through_coco_keeps_classes(tmp_path):
    src = folder(tmp_path / "src")
    before = tree_hash(src)
    convert(src, tmp_path / "coco", to="coco")
    convert(tmp_path / "coco", tmp_path / "back", to="imagefolder")
    assert tree_hash(tmp_path / "back") == {k: v for k, v in before.items()}
    assert (tmp_path / "back" / "empty").is_dir()
    assert tree_hash(src) == before


def test_refuses_images_without_exactly_one_class(tmp_path):
    ds = read_imagefolder(folder(tmp_path / "src"))
    second_class = ds.annotations.iloc[[0]].assign(annotation_id=99, category_id=1)
    ds.annotations = pd.concat([ds.annotations, second_class], ignore_index=True)
    with pytest.raises(DatasetError, match=r"cat/a\.png \[image 0\].*\['cat', 'dog'\]"):
        write_imagefolder(ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_detection_data_converts_when_each_image_has_one_class(tmp_path):
    src = folder(tmp_path / "src")
    convert(src, tmp_path / "yolo", to="yolo")
    ds = read_dataset(tmp_path / "yolo")
    assert sorted(ds.categories["name"]) == ["cat", "dog", "empty"]
    convert(tmp_path / "yolo", tmp_path / "back", to="imagefolder")
    assert sorted(
        p.relative_to(tmp_path / "back").as_posix() for p in (tmp_path / "back").rglob("*.png")
    ) == ["cat/a.png", "cat/more/b.png", "dog/c.png"]
