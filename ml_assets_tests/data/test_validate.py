from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from formats_helpers import small_coco, tree_hash, write_image

from ml_assets.data.formats import convert, read_dataset
from ml_assets.data.validate import Finding, findings_frame, validate_dataset, validate_source


def edit_coco(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        document = json.loads((src / "annotations.json").read_text())
        change(document)
        (src / "annotations.json").write_text(json.dumps(document))

    return apply


def truncate(path: str, keep: int) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        (src / path).write_bytes((src / path).read_bytes()[:keep])

    return apply


def yolo_source(src: Path) -> None:
    write_image(src / "images" / "train" / "a.png", 20, 10, 1)
    (src / "labels" / "train").mkdir(parents=True)
    (src / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/train", "names": ["cat"]})
    )


def voc_source(src: Path) -> None:
    write_image(src / "JPEGImages" / "a.png", 20, 10, 1)
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>20</width><height>10</height></size>"
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
        "</bndbox></object></annotation>"
    )


def second_voc_object(box: str) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        path = src / "Annotations" / "a.xml"
        obj = f"<object><name>cat</name><bndbox>{box}</bndbox></object>"
        path.write_text(path.read_text().replace("</annotation>", obj + "</annotation>"))

    return apply


def yolo_label(text: str) -> Callable[[Path], None]:
    return lambda src: (src / "labels" / "train" / "a.txt").write_text(text)


def image_zero(document: dict) -> None:
    document["images"][0]["width"] = 0


def set_ann(index: int, **values) -> Callable[[dict], None]:
    return lambda document: document["annotations"][index].update(values)


def set_image(index: int, **values) -> Callable[[dict], None]:
    return lambda document: document["images"][index].update(values)


def copy_image(src: Path) -> None:
    shutil.copy(src / "images" / "a.png", src / "images" / "copy.png")
    edit_coco(
        lambda d: d["images"].append({"id": 12, "file_name": "copy.png", "width": 32, "height": 24})
    )(src)


# (source builder, broken input, expected code, file and record the finding names, severity)
CASES = {
    "json": (
        small_coco,
        truncate("annotations.json", 200),
        "json-malformed",
        "annotations.json",
        "",
        "error",
    ),
    "coco-field": (
        small_coco,
        edit_coco(lambda d: d["images"][1].pop("width")),
        "coco-field",
        "annotations.json",
        "images[1]",
        "error",
    ),
    "xml": (
        voc_source,
        truncate("Annotations/a.xml", 60),
        "xml-malformed",
        "Annotations/a.xml",
        "",
        "error",
    ),
    "yaml": (
        yolo_source,
        lambda s: (s / "data.yaml").write_text("names: [cat\ntrain: :"),
        "yaml-malformed",
        "data.yaml",
        "",
        "error",
    ),
    "label-line": (
        yolo_source,
        yolo_label("0 0.5 0.5 0.2\n"),
        "label-malformed",
        "labels/train/a.txt",
        "line 1",
        "error",
    ),
    "label-orphan": (
        yolo_source,
        lambda s: (s / "labels" / "train" / "ghost.txt").write_text(""),
        "label-orphan",
        "labels/train/ghost.txt",
        "",
        "warning",
    ),
    "nan-box": (
        yolo_source,
        yolo_label("0 0.5 0.5 0.2 0.2\n\n0 nan 0.5 0.2 0.2\n"),
        "box-nan",
        "labels/train/a.txt",
        "line 3",
        "error",
    ),
    "zero-box": (
        small_coco,
        edit_coco(set_ann(1, bbox=[1, 1, 0, 4])),
        "box-size",
        "annotations.json",
        "annotation 2",
        "error",
    ),
    "negative-box": (
        voc_source,
        second_voc_object("<xmin>3</xmin><ymin>1</ymin><xmax>0</xmax><ymax>5</ymax>"),
        "box-size",
        "Annotations/a.xml",
        "object 2",
        "error",
    ),
    "outside": (
        small_coco,
        edit_coco(set_ann(1, bbox=[40, 3, 5, 5])),
        "box-outside",
        "annotations.json",
        "annotation 2",
        "error",
    ),
    "overflow": (
        small_coco,
        edit_coco(set_ann(1, bbox=[30, 3, 5, 5])),
        "box-overflow",
        "annotations.json",
        "annotation 2",
        "warning",
    ),
    "unknown-category": (
        small_coco,
        edit_coco(set_ann(1, category_id=5)),
        "unknown-category",
        "annotations.json",
        "annotation 2",
        "error",
    ),
    "yolo-class": (
        yolo_source,
        yolo_label("4 0.5 0.5 0.2 0.2\n"),
        "unknown-category",
        "labels/train/a.txt",
        "line 1",
        "error",
    ),
    "image-id": (
        small_coco,
        edit_coco(set_image(1, id=7)),
        "image-id-duplicate",
        "annotations.json",
        "images[1]",
        "error",
    ),
    "annotation-id": (
        small_coco,
        edit_coco(set_ann(1, id=1)),
        "annotation-id-duplicate",
        "annotations.json",
        "annotations[1]",
        "error",
    ),
    "orphan": (
        small_coco,
        edit_coco(set_ann(1, image_id=1234)),
        "annotation-orphan",
        "annotations.json",
        "annotation 2",
        "error",
    ),
    "dotdot": (
        small_coco,
        edit_coco(set_image(1, file_name="../../etc/b.png")),
        "path-escape",
        "annotations.json",
        "image 9",
        "error",
    ),
    "absolute": (
        small_coco,
        edit_coco(set_image(1, file_name="/etc/passwd")),
        "path-escape",
        "annotations.json",
        "image 9",
        "error",
    ),
    "size-invalid": (
        small_coco,
        edit_coco(image_zero),
        "image-size-invalid",
        "annotations.json",
        "image 7",
        "error",
    ),
    "missing-image": (
        small_coco,
        lambda s: (s / "images" / "c.png").unlink(),
        "image-missing",
        "images/c.png",
        "image 11",
        "error",
    ),
    "truncated-image": (
        small_coco,
        truncate("images/c.png", 60),
        "image-unreadable",
        "images/c.png",
        "image 11",
        "error",
    ),
    "size-mismatch": (
        small_coco,
        edit_coco(set_image(2, width=21)),
        "image-size-mismatch",
        "images/c.png",
        "image 11",
        "error",
    ),
    "same-content": (
        small_coco,
        copy_image,
        "image-duplicate-content",
        "images/copy.png",
        "image 12",
        "warning",
    ),
}
READ_TIME = {
    "json-malformed",
    "coco-field",
    "xml-malformed",
    "yaml-malformed",
    "label-malformed",
    "box-nan",
    "box-size",
    "box-outside",
    "unknown-category",
    "image-id-duplicate",
    "annotation-id-duplicate",
    "annotation-orphan",
    "path-escape",
    "image-size-invalid",
}


def test_clean_sources_have_no_findings(tmp_path):
    for build in (small_coco, yolo_source, voc_source):
        build(tmp_path / build.__name__)
        assert validate_source(tmp_path / build.__name__) == []


@pytest.mark.parametrize("case", list(CASES))
def test_each_broken_input_is_a_finding(tmp_path, case):
    build, breaks, code, file, record, severity = CASES[case]
    src = tmp_path / "src"
    build(src)
    breaks(src)
    before = tree_hash(src)
    findings = validate_source(src)
    assert Finding in {type(f) for f in findings}
    matching = [f for f in findings if f.code == code]
    assert matching, findings
    assert matching[0].severity == severity
    assert (matching[0].file, matching[0].record) == (file, record)
    assert matching[0].message
    if code in READ_TIME:  # convert refuses the same input, naming the file and leaving no output
        with pytest.raises(ValueError, match=re.escape(f"{file} [{record}]" if record else file)):
            convert(src, tmp_path / "dst", to="yolo" if build is not yolo_source else "coco")
        assert not (tmp_path / "dst").exists()
    assert tree_hash(src) == before


def test_findings_name_records(tmp_path):
    src = small_coco(tmp_path / "src")
    edit_coco(set_ann(1, bbox=[40, 3, 5, 5]))(src)
    (finding,) = validate_source(src)
    assert finding.record == "annotation 2"
    frame = findings_frame([finding])
    assert frame.columns.tolist() == ["severity", "code", "file", "record", "message"]
    assert frame.iloc[0]["code"] == "box-outside"
    assert findings_frame([]).empty


def test_validate_dataset_works_on_tables_alone(tmp_path):
    ds = read_dataset(small_coco(tmp_path / "src"))
    assert validate_dataset(ds) == []
    ds.annotations.loc[0, "w"] = -1.0
    ds.root = None
    (finding,) = validate_dataset(ds, check_files=True)
    assert (finding.code, finding.file, finding.record) == (
        "box-size",
        "annotations.json",
        "annotation 1",
    )
    ds.annotations = ds.annotations.drop(columns=["source_file"])  # tables built by hand
    (finding,) = validate_dataset(ds)
    assert (finding.file, finding.record) == ("images/a.png", "annotation 1")


def test_unknown_format_is_a_finding(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    (finding,) = validate_source(tmp_path)
    assert finding.code == "format-unknown" and str(tmp_path) in finding.message
