"""Every export layout of the labelling tools is read exactly, or refused with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from formats_helpers import BOX_FORMATS, boxes_by_image, tree_hash
from layout_builders import BUILDERS, CLASSES, expected_boxes, expected_sizes

from ml_assets.data.formats import convert, detect_layout, read_dataset
from ml_assets.data.layouts import LAYOUTS
from ml_assets.data.tables import DatasetError
from ml_assets.data.validate import validate_source


def assert_ground_truth(ds) -> None:
    """Every class name, image size and box of ``GROUND_TRUTH`` (boxes to 1e-6 of the image)."""
    assert sorted(ds.category_names.values()) == sorted(CLASSES)
    sizes = {
        name.split("/")[-1]: (w, h)
        for name, w, h in zip(
            ds.images["file_name"], ds.images["width"], ds.images["height"], strict=True
        )
    }
    assert sizes == expected_sizes()
    found = boxes_by_image(ds)
    for name, boxes in expected_boxes().items():
        assert [b[0] for b in found[name]] == [b[0] for b in boxes], name
        for got, want in zip(found[name], boxes, strict=True):
            error = max(abs(p - q) for p, q in zip(got[1:], want[1:], strict=True))
            assert error <= 1e-6 * max(sizes[name]), (name, got, want)


def test_every_box_layout_is_listed_once():
    assert sorted(BUILDERS) == sorted(
        layout.name for layout in LAYOUTS if layout.format != "imagefolder"
    )


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_layout_is_detected_and_read_exactly(tmp_path, name):
    src = BUILDERS[name](tmp_path / name)
    before = tree_hash(src)
    assert detect_layout(src).name == name
    ds = read_dataset(src)
    assert ds.attrs["layout"] == name
    assert_ground_truth(ds)
    assert validate_source(src) == [] or name == "roboflow-yolo"
    assert tree_hash(src) == before


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_layout_converts_to_every_format_and_back(tmp_path, name):
    src = BUILDERS[name](tmp_path / name)
    source_format = detect_layout(src).format
    for target in BOX_FORMATS:
        there = tmp_path / f"to-{target}"
        convert(src, there, to=target)
        assert_ground_truth(read_dataset(there, target))
        back = tmp_path / f"back-{target}"
        convert(there, back, to=source_format)
        assert_ground_truth(read_dataset(back, source_format))


def test_split_names_and_image_folders_survive_a_round_trip(tmp_path):
    src = BUILDERS["roboflow-yolo"](tmp_path / "rf")
    ds = read_dataset(src)
    assert sorted(set(ds.images["split"])) == ["train", "valid"]
    convert(src, tmp_path / "yolo", to="yolo")
    written = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "val: images/valid" in written and (tmp_path / "yolo/images/valid/d.jpg").is_file()
    convert(src, tmp_path / "coco", to="coco")
    assert (tmp_path / "coco/images/train/a.jpg").is_file()


def test_missing_split_of_the_yaml_is_a_warning(tmp_path):
    src = BUILDERS["roboflow-yolo"](tmp_path / "rf")
    (finding,) = validate_source(src)
    assert (finding.severity, finding.code, finding.file, finding.record) == (
        "warning",
        "split-missing",
        "data.yaml",
        "test",
    )
    assert "test" in read_dataset(src).attrs["warnings"][0]


def test_roboflow_placeholder_category_is_kept_when_used(tmp_path):
    src = BUILDERS["roboflow-coco"](tmp_path / "rf")
    document = json.loads((src / "train" / "_annotations.coco.json").read_text())
    document["annotations"][0]["category_id"] = 0
    (src / "train" / "_annotations.coco.json").write_text(json.dumps(document))
    ds = read_dataset(src)
    assert "pets-x7k2p" in ds.category_names.values()
    assert ds.attrs["placeholder_categories"] == []
    assert read_dataset(BUILDERS["roboflow-coco"](tmp_path / "clean")).attrs[
        "placeholder_categories"
    ] == ["pets-x7k2p"]


def test_roboflow_placeholder_is_dropped_in_the_coco_splits_layout_too(tmp_path):
    """Roboflow's split files moved into annotations/instances_<split>.json: the placeholder
    is still what it is (id 0, used by no box, the supercategory of every class)."""
    rf = BUILDERS["roboflow-coco"](tmp_path / "rf")
    src = tmp_path / "splits"
    for split in ("train", "valid"):
        (src / "annotations").mkdir(parents=True, exist_ok=True)
        shutil.copy(
            rf / split / "_annotations.coco.json", src / f"annotations/instances_{split}.json"
        )
        shutil.copytree(rf / split, src / "images" / split, ignore=shutil.ignore_patterns("*.json"))
    ds = read_dataset(src)
    assert ds.attrs["layout"] == "coco-splits"
    assert ds.attrs["placeholder_categories"] == ["pets-x7k2p"]
    assert_ground_truth(ds)
    assert ds.category_names == {1: "cat", 2: "dog", 3: "bird"}


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c[0].update(id=9),  # not id 0
        lambda c: c[1].update(supercategory="animals"),  # not every class's supercategory
    ],
)
def test_a_category_that_only_resembles_the_placeholder_is_kept(tmp_path, change):
    src = BUILDERS["roboflow-coco"](tmp_path / "rf")
    for split in ("train", "valid"):
        _edit(src / split / "_annotations.coco.json", lambda d: change(d["categories"]))
    ds = read_dataset(src)
    assert len(ds.categories) == 4 and ds.attrs["placeholder_categories"] == []


def test_split_files_keep_their_own_ids_when_written_back(tmp_path):
    src = BUILDERS["coco-splits"](tmp_path / "src")
    ds = read_dataset(src)
    assert ds.images["image_id"].is_unique and ds.annotations["annotation_id"].is_unique
    convert(src, tmp_path / "out", to="coco")
    for split in ("train", "valid"):
        original = json.loads((src / "annotations" / f"instances_{split}.json").read_text())
        written = json.loads((tmp_path / "out/annotations" / f"instances_{split}.json").read_text())
        for key in ("images", "annotations"):
            assert [r["id"] for r in written[key]] == [r["id"] for r in original[key]]
        assert [a["image_id"] for a in written["annotations"]] == [
            a["image_id"] for a in original["annotations"]
        ]


def test_string_ids_are_numbered_and_written_back(tmp_path):
    src = BUILDERS["cvat-coco"](tmp_path / "cvat")
    ds = read_dataset(src)
    assert ds.images["image_id"].tolist() == [0, 1, 2, 3]
    assert ds.images["coco_id"].tolist() == ['"1"', '"2"', '"3"', '"4"']
    convert(src, tmp_path / "out", to="coco")
    written = json.loads((tmp_path / "out" / "annotations.json").read_text())
    original = json.loads((src / "annotations" / "instances_default.json").read_text())
    assert written["images"] == [{**r, "file_name": r["file_name"]} for r in original["images"]]
    for a, b in zip(written["annotations"], original["annotations"], strict=True):
        assert (a["id"], a["image_id"], a["category_id"]) == (
            b["id"],
            b["image_id"],
            b["category_id"],
        )


def _edit(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_mixed_ids_refer_across_types(tmp_path):
    src = BUILDERS["coco"](tmp_path / "src")

    def mixed(document):
        ids = {1: 1, 2: "b", 3: "3", 4: 4}  # image 3 is "3"; its annotations may say 3 or "3"
        for image in document["images"]:
            image["id"] = ids[image["id"]]
        for annotation in document["annotations"]:
            annotation["image_id"] = {1: "1", 2: "b", 3: 3, 4: 4}[annotation["image_id"]]
        document["categories"][1]["id"] = "two"
        for annotation in document["annotations"]:
            if annotation["category_id"] == 1:
                annotation["category_id"] = "two"

    _edit(src / "annotations.json", mixed)
    ds = read_dataset(src)
    assert_ground_truth(ds)
    convert(src, tmp_path / "out", to="coco")
    written = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [r["id"] for r in written["images"]] == [1, "b", "3", 4]
    assert {c["id"] for c in written["categories"]} == {0, "two", 2}


@pytest.mark.parametrize(
    ("change", "code", "record", "other"),
    [
        (lambda d: d["images"][1].update(id="1"), "image-id-duplicate", "images[1]", "images[0]"),
        (lambda d: d["images"][2].update(id=1), "image-id-duplicate", "images[2]", "images[0]"),
        (
            lambda d: d["annotations"][2].update(id=d["annotations"][0]["id"]),
            "annotation-id-duplicate",
            "annotations[2]",
            "annotations[0]",
        ),
    ],
)
def test_duplicate_ids_name_both_records(tmp_path, change, code, record, other):
    src = BUILDERS["cvat-coco"](tmp_path / "src")
    _edit(src / "annotations" / "instances_default.json", change)
    with pytest.raises(
        DatasetError, match=rf"\[{record.replace('[', '.')}\].*{other.replace('[', '.')}"
    ):
        read_dataset(src)
    (finding,) = [f for f in validate_source(src) if f.code == code]
    assert finding.file == "annotations/instances_default.json" and finding.record == record
    assert other in finding.message


def test_ids_that_refer_to_nothing_name_the_annotation(tmp_path):
    src = BUILDERS["cvat-coco"](tmp_path / "src")
    _edit(
        src / "annotations" / "instances_default.json",
        lambda d: d["annotations"][1].update(image_id="ghost"),
    )
    findings = validate_source(src)
    (finding,) = [f for f in findings if f.code == "annotation-orphan"]
    assert finding.record == 'annotation "2"' and '"ghost"' in finding.message


@pytest.mark.parametrize("fmt", ["auto", "imagefolder"])
def test_split_folders_without_annotations_are_not_classes(tmp_path, fmt):
    src = BUILDERS["roboflow-coco"](tmp_path / "rf")
    for split in ("train", "valid"):
        (src / split / "_annotations.coco.json").unlink()
    message = (
        r"train/ holds 3 images directly \(a\.jpg, b\.jpg, c\.jpg\), in no class folder .*"
        r"valid/ holds 1 images directly \(d\.jpg\).* <split>/<class>/<image>"
    )
    with pytest.raises(ValueError, match=message):
        read_dataset(src, fmt)
    (finding,) = validate_source(src, fmt)
    assert finding.code == "format-unknown" and "in no class folder" in finding.message


@pytest.mark.parametrize("fmt", ["auto", "imagefolder"])
@pytest.mark.parametrize(
    ("name", "parts"), [("label-studio-yolo", "images/, labels/"), ("cvat-yolo", "obj_train_data/")]
)
def test_an_export_without_its_class_list_is_refused(tmp_path, name, parts, fmt):
    src = BUILDERS[name](tmp_path / name)
    for extra in ("classes.txt", "obj.names", "obj.data", "train.txt"):
        (src / extra).unlink(missing_ok=True)
    with pytest.raises(
        ValueError,
        match=rf"the sub-folders {parts} are named like parts of an exported dataset, so they "
        "are not read as classes",
    ):
        read_dataset(src, fmt)


def test_two_formats_in_one_folder_stop_with_the_choice(tmp_path):
    src = BUILDERS["coco"](tmp_path / "src")
    shutil.copy(BUILDERS["yolo"](tmp_path / "y") / "data.yaml", src / "data.yaml")
    with pytest.raises(ValueError, match=r"several formats.*--from coco or --from yolo"):
        detect_layout(src)
    assert_ground_truth(read_dataset(src, "coco"))


def test_label_studio_task_export_gets_a_hint(tmp_path):
    (tmp_path / "result.json").write_text('[{"id": 1, "annotations": []}]')
    with pytest.raises(ValueError, match="Label Studio's JSON task export"):
        detect_layout(tmp_path)


def test_readme_lists_every_layout():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for layout in LAYOUTS:
        assert f"| `{layout.name}` | {layout.format} |" in readme


def test_a_class_list_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    root = BUILDERS["label-studio-yolo"](tmp_path / "ls")
    (root / "classes.txt").write_bytes(b"circle\n\xff\xfesquare\n")
    with pytest.raises(DatasetError, match=r"classes\.txt.*not UTF-8"):
        read_dataset(root)
