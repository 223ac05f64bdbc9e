from __future__ import annotations

import pandas as pd
import pytest
from formats_helpers import tree_hash, write_image

from ml_assets.data.formats import convert, read_dataset
from ml_assets.data.imagefolder import export_signs, read_imagefolder, write_imagefolder
from ml_assets.data.tables import Dataset, DatasetError


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


def split_folder(root):
    """train/{cat,dog}, val/{cat,bird}, test/dog: classes differ per split."""
    for seed, name in enumerate(["train/cat/a.png", "train/dog/b.png", "train/cat/sub/c.png"]):
        write_image(root / name, 10 + seed, 8, seed)
    write_image(root / "val" / "cat" / "d.png", 7, 7, 4)
    write_image(root / "val" / "bird" / "e.png", 6, 9, 5)
    write_image(root / "test" / "dog" / "f.png", 5, 5, 6)
    (root / "train" / "README.txt").write_text("a stray file beside the classes is ignored\n")
    return root


def test_split_layout_records_splits_and_reads_the_classes_of_all_splits(tmp_path):
    src = split_folder(tmp_path / "src")
    ds = read_dataset(src, "imagefolder")
    assert ds.attrs["layout"] == "imagefolder-splits" and read_dataset(src).attrs == ds.attrs
    assert ds.category_names == {0: "bird", 1: "cat", 2: "dog"}
    assert dict(zip(ds.images["file_name"], ds.images["split"], strict=True)) == {
        "test/dog/f.png": "test",
        "train/cat/a.png": "train",
        "train/cat/sub/c.png": "train",
        "train/dog/b.png": "train",
        "val/bird/e.png": "val",
        "val/cat/d.png": "val",
    }
    labels = dict(zip(ds.annotations["image_id"], ds.annotations["category_id"], strict=True))
    assert [labels[i] for i in ds.images["image_id"]] == [2, 1, 1, 2, 0, 1]


def test_split_layout_is_written_back_with_every_class_in_every_split(tmp_path):
    src = split_folder(tmp_path / "src")
    convert(src, tmp_path / "coco", to="coco")
    convert(tmp_path / "coco", tmp_path / "back", to="imagefolder")
    back = tmp_path / "back"
    images = {k: v for k, v in tree_hash(src).items() if k.endswith(".png")}
    assert tree_hash(back) == images
    folders = sorted(p.relative_to(back).as_posix() for p in back.glob("*/*") if p.is_dir())
    assert folders == [f"{s}/{c}" for s in ("test", "train", "val") for c in ("bird", "cat", "dog")]
    again = read_dataset(back)
    assert again.category_names == read_dataset(src).category_names
    assert sorted(again.images["split"]) == sorted(read_dataset(src).images["split"])


def test_one_split_is_written_as_class_folders(tmp_path):
    src = folder(tmp_path / "src")
    convert(src, tmp_path / "yolo", to="yolo")  # every image in train
    convert(tmp_path / "yolo", tmp_path / "back", to="imagefolder")
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["cat", "dog", "empty"]


@pytest.mark.parametrize(
    ("files", "shown", "looks"),
    [
        (["cat/labels.json"], "cat/ holds labels.json", "a COCO export"),
        (["cat/coco8.yaml", "cat/images/x.png"], "cat/ holds coco8.yaml, images/", "a YOLO export"),
        (["cat/x.xml"], "cat/ holds x.xml", "a Pascal VOC export"),
        (["cat/classes.txt"], "cat/ holds classes.txt", "a YOLO export"),
        (["cat/obj.data"], "cat/ holds obj.data", "a YOLO export"),
        (["cat/labels/x.txt"], "cat/ holds labels/", "a YOLO export"),
        (["cat/Annotations/x.xml"], "cat/ holds Annotations/", "a Pascal VOC export"),
        (["cat/JPEGImages/x.png"], "cat/ holds JPEGImages/", "a Pascal VOC export"),
        (["cat/train/x.png"], "cat/ holds train/", "a classification set with splits"),
        (["cat/more/images/x.png"], "cat/more/ holds images/", "a part of an export"),
    ],
)
@pytest.mark.parametrize("fmt", ["auto", "imagefolder"])
def test_a_class_folder_that_holds_an_export_is_refused(tmp_path, files, shown, looks, fmt):
    src = folder(tmp_path / "src")
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("")
    with pytest.raises(DatasetError, match=rf"{shown}: it looks like {looks} \(a dataset\), not"):
        read_dataset(src, fmt)


def test_split_folders_beside_class_folders_are_refused(tmp_path):
    src = folder(tmp_path / "src")
    write_image(src / "train" / "cat" / "z.png", 5, 5, 9)
    with pytest.raises(
        ValueError,
        match=r"the split folders train/ stand beside the folders cat/, dog/, empty/: that is "
        r"neither <split>/<class>/<image> nor <class>/<image>",
    ):
        read_dataset(src, "imagefolder")


def test_a_split_folder_that_holds_an_export_is_refused(tmp_path):
    src = split_folder(tmp_path / "src")
    (src / "val" / "labels").mkdir()
    (src / "val" / "images").mkdir()
    with pytest.raises(
        ValueError, match=r"val/ holds images/, labels/: it looks like a YOLO export"
    ):
        read_dataset(src)


def test_images_beside_their_classes_in_a_split_folder_are_refused(tmp_path):
    src = split_folder(tmp_path / "src")
    write_image(src / "val" / "loose.png", 5, 5, 9)
    with pytest.raises(
        ValueError, match=r"val/ holds 1 images directly \(loose\.png\), in no class folder"
    ):
        read_dataset(src)


def test_the_writer_refuses_folders_a_reader_would_misread(tmp_path):
    ds = read_dataset(split_folder(tmp_path / "src"))
    renamed = ds.images.assign(split=ds.images["split"].replace("val", "default"))
    with pytest.raises(DatasetError, match=r"\[split 'default'\]: .*would be read back as a class"):
        write_imagefolder(Dataset(renamed, ds.annotations, ds.categories, ds.root), tmp_path / "a")
    ds.categories.loc[0, "name"] = "train"
    with pytest.raises(DatasetError, match=r"\[category 0\]: 'train' cannot be a class folder"):
        write_imagefolder(ds, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_signs_is_the_rule_for_what_is_never_a_class():
    assert export_signs(["a.jpg", "README.md", "LICENSE"], ["more", "2019"]) == []
    assert export_signs(["coco8.yaml", "README.md", ".hidden.json"], ["images", "labels"]) == [
        "coco8.yaml",
        "images/",
        "labels/",
    ]
    assert export_signs(["obj.data", "x.XML", "a.yml"], ["valid", "obj_train_data"]) == [
        "a.yml",
        "obj.data",
        "obj_train_data/",
        "valid/",
        "x.XML",
    ]
