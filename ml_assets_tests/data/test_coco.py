from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from formats_helpers import small_coco, tree_hash
from pycocotools.coco import COCO

from ml_assets.data.coco import read_coco, write_coco
from ml_assets.data.tables import DatasetError, Issues


def test_reads_ids_crowds_masks_and_subfolders(tmp_path):
    src = small_coco(tmp_path / "src")
    ds = read_coco(src).validated()
    assert ds.root == src
    assert sorted(ds.categories["category_id"]) == [1, 90]
    assert ds.images["file_name"].tolist() == ["images/a.png", "images/sub/b.png", "images/c.png"]
    assert all((ds.root / f).is_file() for f in ds.images["file_name"])
    ann = ds.annotations.set_index("annotation_id")
    assert ann.loc[3, "iscrowd"] == 1
    assert ann.loc[3, "segmentation"]["counts"] == [10, 5, 19, 5, 729]
    assert ann.loc[1, "segmentation"] == [[1, 2, 4, 2, 4, 6, 1, 6]]
    # the crowd has no bbox: its box comes from the RLE (columns 0-1, rows 10-14)
    assert ann.loc[3, ["x", "y", "w", "h"]].tolist() == [0.0, 10.0, 2.0, 5.0]
    assert ds.attrs["boxes_from_masks"] == 1
    assert ann.loc[2, ["x", "y", "w", "h"]].tolist() == [10.5, 3.25, 6.0, 8.0]
    assert ds.images.set_index("image_id").loc[7, "license"] == 1


def test_polygon_without_box_gets_its_extent(tmp_path):
    src = small_coco(tmp_path / "src")
    document = json.loads((src / "annotations.json").read_text())
    document["annotations"][0]["bbox"] = [1, 2, 0, 0]
    (src / "annotations.json").write_text(json.dumps(document))
    ds = read_coco(src)
    row = ds.annotations.set_index("annotation_id").loc[1]
    assert [row.x, row.y, row.w, row.h] == [1.0, 2.0, 3.0, 4.0]
    assert ds.attrs["boxes_from_masks"] == 2


def test_round_trip_keeps_everything_and_pycocotools_loads_it(tmp_path):
    src = small_coco(tmp_path / "src")
    before = tree_hash(src)
    ds = read_coco(src)
    out = write_coco(ds, tmp_path / "out")
    coco = COCO(str(out / "annotations.json"))
    assert sorted(coco.getCatIds()) == [1, 90]
    assert sorted(coco.getImgIds()) == [7, 9, 11]
    assert coco.loadAnns([2])[0]["bbox"] == [10.5, 3.25, 6.0, 8.0]
    assert coco.loadAnns([3])[0]["iscrowd"] == 1
    assert coco.imgs[9]["file_name"] == "sub/b.png"
    assert (out / "images" / "sub" / "b.png").stat().st_ino == (
        src / "images" / "sub" / "b.png"
    ).stat().st_ino
    document = json.loads((out / "annotations.json").read_text())  # no source_file leaks out
    assert {k for i in document["images"] for k in i} == {
        "id",
        "file_name",
        "width",
        "height",
        "license",
    }
    assert {k for a in document["annotations"] for k in a} == {
        "id",
        "image_id",
        "category_id",
        "bbox",
        "area",
        "iscrowd",
        "segmentation",
    }
    again = read_coco(out)
    cols = ["annotation_id", "image_id", "category_id", "x", "y", "w", "h", "iscrowd"]
    assert again.annotations[cols].equals(ds.annotations[cols])
    assert again.annotations["segmentation"].tolist() == ds.annotations["segmentation"].tolist()
    assert again.images[["image_id", "file_name", "width", "height"]].equals(
        ds.images[["image_id", "file_name", "width", "height"]]
    )
    assert tree_hash(src) == before


def test_instances_layout_with_splits_round_trips(tmp_path):
    src = tmp_path / "src"
    small_coco(tmp_path / "one")
    document = json.loads((tmp_path / "one" / "annotations.json").read_text())
    (src / "annotations").mkdir(parents=True)
    for split, ids in (("train", {7, 9}), ("val", {11})):
        part = dict(
            document,
            images=[i for i in document["images"] if i["id"] in ids],
            annotations=[a for a in document["annotations"] if a["image_id"] in ids],
        )
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(part))
        for image in part["images"]:
            target = src / "images" / split / image["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "one" / "images" / image["file_name"], target)
    ds = read_coco(src)
    assert dict(zip(ds.images["image_id"], ds.images["split"], strict=True)) == {
        7: "train",
        9: "train",
        11: "val",
    }
    assert ds.images.set_index("image_id").loc[11, "file_name"] == "images/val/c.png"
    out = write_coco(ds, tmp_path / "out")
    assert sorted(p.name for p in (out / "annotations").iterdir()) == [
        "instances_train.json",
        "instances_val.json",
    ]
    assert (out / "images" / "val" / "c.png").is_file()
    again = read_coco(out)
    assert again.images["file_name"].tolist() == ds.images["file_name"].tolist()


def test_malformed_json_names_the_file(tmp_path):
    src = small_coco(tmp_path / "src")
    (src / "annotations.json").write_text((src / "annotations.json").read_text()[:-40])
    with pytest.raises(DatasetError, match="annotations.json"):
        read_coco(src)


def test_record_without_fields_names_the_record(tmp_path):
    src = small_coco(tmp_path / "src")
    document = json.loads((src / "annotations.json").read_text())
    del document["annotations"][1]["image_id"]
    (src / "annotations.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"annotations\.json \[annotations\[1\]\]"):
        read_coco(src)


def test_odd_values_take_the_slow_path_per_record(tmp_path):
    src = small_coco(tmp_path / "src")
    document = json.loads((src / "annotations.json").read_text())
    document["annotations"][1].update(bbox=[1, "2", 3, 4], area=[1], note={"a": 1})
    document["annotations"] += [{"id": [5], "image_id": 7, "category_id": 1}, "junk"]
    (src / "annotations.json").write_text(json.dumps(document))
    issues = Issues(root=src, collect=True)
    ds = read_coco(src, issues)
    assert [(e.code, e.record) for e in issues.errors] == [
        ("coco-field", "annotations[4]"),
        ("coco-field", "annotations[5]"),
    ]
    row = ds.annotations.set_index("annotation_id").loc[2]
    assert np.isnan([row.x, row.y, row.w, row.h, row.area]).all()  # not four numbers, no mask
    assert row.note == {"a": 1} and ds.annotations["note"].isna().sum() == 3


def _tricky_document() -> dict:
    """Strings full of brackets, quotes and backslashes, nested look-alike keys, odd spacing."""
    names = ['a[1]"b.png', "c\\\\]}{.png", 'd\\"[.png', "é ]\\u005d.png"]
    return {
        "info": {"images": [{"id": 99}], "note": 'x"]}[{\\', "annotations": {"a": [1, [2]]}},
        "licenses": [],
        "images": [
            {"id": i, "file_name": name, "width": 8 + i, "height": 9, "tag": "[{" * i}
            for i, name in enumerate(names)
        ],
        "annotations": [
            {
                "id": n,
                "image_id": n % 4,
                "category_id": 1 + n % 2,
                "bbox": [0.5, 1, 2, 3],
                "area": 6,
                "iscrowd": 0,
                "segmentation": [[0, 0, 2, 0, 2, 3]] if n % 3 else [],
                "note": '\\\\"}]' * (n % 3),
            }
            for n in range(40)
        ],
        "categories": [{"id": 1, "name": 'q"}'}, {"id": 2, "name": "r\\\\"}],
        "trailer": [[], {}, "]"],
    }


@pytest.mark.parametrize("scan, piece", [(7, 1), (13, 50), (64, 1000), (1 << 22, 1 << 20)])
def test_strings_with_brackets_quotes_and_escapes(tmp_path, monkeypatch, scan, piece):
    from ml_assets.data import coco

    document = _tricky_document()
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "annotations.json").write_text(json.dumps(document, indent=scan % 3 or None))
    monkeypatch.setattr(coco, "_SCAN", scan)  # chunk boundaries fall everywhere
    monkeypatch.setattr(coco, "_PIECE", piece)
    ds = read_coco(src)
    names = [f"images/{i['file_name']}" for i in document["images"]]
    assert ds.images["file_name"].tolist() == names
    assert ds.images["tag"].tolist() == [i["tag"] for i in document["images"]]
    assert ds.categories["name"].tolist() == ['q"}', "r\\\\"]
    assert ds.annotations["annotation_id"].tolist() == list(range(40))
    assert ds.annotations["note"].tolist() == [a["note"] for a in document["annotations"]]
    assert ds.annotations["segmentation"].tolist() == [
        a["segmentation"] or None for a in document["annotations"]
    ]


@pytest.mark.parametrize(
    "old, new",
    [
        ('"iscrowd": 0}]', '"iscrowd": 0},]'),  # trailing comma in the streamed array
        ('[]}, {"id": 3', '[]} {"id": 3'),  # missing comma between records
        ('"info": {"description": "test"}', '"info": {"description": tru}'),  # outside arrays
        ('"licenses": [', '"licenses": [['),  # unbalanced
        ('"iscrowd": 0}]', '"iscrowd": 0}}]'),  # unbalanced inside a streamed array
        ('"name": "car"', '"name": "car\\"'),  # a string that never ends
    ],
)
def test_malformed_json_anywhere_is_reported(tmp_path, monkeypatch, old, new):
    from ml_assets.data import coco

    monkeypatch.setattr(coco, "_PIECE", 1)  # cut after every record
    src = small_coco(tmp_path / "src")
    text = (src / "annotations.json").read_text()
    assert old in text
    (src / "annotations.json").write_text(text.replace(old, new, 1))
    issues = Issues(root=src, collect=True)
    read_coco(src, issues)
    assert [e.code for e in issues.errors] == ["json-malformed"]
