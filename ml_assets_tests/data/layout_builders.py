"""Folders in the layouts that labelling tools export, built from one known ground truth.

Each builder writes ``GROUND_TRUTH`` the way its tool does (file names, id conventions, extra
files); ``expected_boxes`` is what every reader must give back. Imported by module name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

CLASSES = ["cat", "dog", "bird"]
PROJECT = "pets-x7k2p"  # Roboflow's placeholder category is named after the project
# (split, image name, width, height, [(class, x, y, w, h)]), boxes in absolute pixels
GROUND_TRUTH = [
    ("train", "a.jpg", 64, 48, [("cat", 4.0, 6.5, 20.25, 16.0), ("dog", 30.0, 10.0, 12.0, 30.0)]),
    ("train", "b.jpg", 40, 40, [("bird", 1.0, 2.0, 3.5, 4.0)]),
    ("train", "c.jpg", 32, 50, []),
    ("valid", "d.jpg", 50, 30, [("dog", 10.0, 5.0, 20.0, 20.0), ("cat", 0.0, 0.0, 50.0, 30.0)]),
]
SPLITS = ("train", "valid")


def expected_boxes() -> dict[str, list[tuple]]:
    """{image name: sorted [(class, x, y, w, h)]}, the shape ``formats_helpers.boxes_by_image``
    gives."""
    return {name: sorted(boxes) for _, name, _, _, boxes in GROUND_TRUTH}


def expected_sizes() -> dict[str, tuple[int, int]]:
    return {name: (width, height) for _, name, width, height, _ in GROUND_TRUTH}


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (width, height, 90)).save(path, format="JPEG")


def _coco(
    images: list[tuple],
    file_name: Callable[[str], str],
    ids: Callable[[int], Any] = lambda n: n,
    categories: list[dict[str, Any]] | None = None,
    category_id: Callable[[str], Any] = CLASSES.index,
) -> dict[str, Any]:
    """A COCO document of ``images`` (rows of ``GROUND_TRUTH``) with ids made by ``ids(n)``."""
    document: dict[str, Any] = {"info": {"description": "test"}, "images": [], "annotations": []}
    for n, (_, name, width, height, boxes) in enumerate(images):
        document["images"].append(
            {"id": ids(n), "file_name": file_name(name), "width": width, "height": height}
        )
        for cls, x, y, w, h in boxes:
            document["annotations"].append(
                {
                    "id": ids(len(document["annotations"])),
                    "image_id": ids(n),
                    "category_id": category_id(cls),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
    document["categories"] = categories or [
        {"id": category_id(name), "name": name} for name in CLASSES
    ]
    return document


def _write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def coco(root: Path) -> Path:
    """``annotations.json`` + ``images/``, integer ids from 1."""
    for _, name, width, height, _ in GROUND_TRUTH:
        _image(root / "images" / name, width, height)
    _write_json(root / "annotations.json", _coco(GROUND_TRUTH, str, lambda n: n + 1))
    return root


def coco_splits(root: Path) -> Path:
    """``annotations/instances_<split>.json``, each file numbering its ids from 0."""
    for split in SPLITS:
        rows = [row for row in GROUND_TRUTH if row[0] == split]
        for _, name, width, height, _ in rows:
            _image(root / "images" / split / name, width, height)
        _write_json(root / "annotations" / f"instances_{split}.json", _coco(rows, str))
    return root


def cvat_coco(root: Path) -> Path:
    """CVAT "COCO 1.0": ``annotations/instances_default.json`` with string image and annotation
    ids, category ids from 1, images in ``images/default/``."""
    for _, name, width, height, _ in GROUND_TRUTH:
        _image(root / "images" / "default" / name, width, height)
    document = _coco(GROUND_TRUTH, str, lambda n: str(n + 1), category_id=_from_one)
    _write_json(root / "annotations" / "instances_default.json", document)
    return root


def _from_one(name: str) -> int:
    return CLASSES.index(name) + 1


def roboflow_coco(root: Path) -> Path:
    """Roboflow COCO: ``<split>/_annotations.coco.json`` beside the images, ids from 0 per file,
    category 0 a placeholder named after the project."""
    categories = [{"id": 0, "name": PROJECT, "supercategory": "none"}] + [
        {"id": _from_one(name), "name": name, "supercategory": PROJECT} for name in CLASSES
    ]
    for split in SPLITS:
        rows = [row for row in GROUND_TRUTH if row[0] == split]
        for _, name, width, height, _ in rows:
            _image(root / split / name, width, height)
        document = _coco(rows, str, categories=categories, category_id=_from_one)
        _write_json(root / split / "_annotations.coco.json", document)
    (root / "README.roboflow.txt").write_text("exported from roboflow.com\n")
    return root


def label_studio_coco(root: Path) -> Path:
    """Label Studio COCO: ``result.json`` whose ``file_name`` is ``images/<name>``."""
    for _, name, width, height, _ in GROUND_TRUTH:
        _image(root / "images" / name, width, height)
    _write_json(root / "result.json", _coco(GROUND_TRUTH, lambda name: f"images/{name}"))
    return root


def _label(boxes: list[tuple], width: int, height: int) -> str:
    lines = []
    for cls, x, y, w, h in boxes:
        cx, cy = (x + w / 2) / width, (y + h / 2) / height
        lines.append(f"{CLASSES.index(cls)} {cx:.12f} {cy:.12f} {w / width:.12f} {h / height:.12f}")
    return "".join(line + "\n" for line in lines)


def _yolo_pairs(images: Path, labels: Path, rows: list[tuple]) -> None:
    for _, name, width, height, boxes in rows:
        _image(images / name, width, height)
        labels.mkdir(parents=True, exist_ok=True)
        (labels / name).with_suffix(".txt").write_text(_label(boxes, width, height))


def yolo(root: Path) -> Path:
    """ultralytics: ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/``."""
    for split in SPLITS:
        rows = [row for row in GROUND_TRUTH if row[0] == split]
        _yolo_pairs(root / "images" / split, root / "labels" / split, rows)
    config = {"train": "images/train", "val": "images/valid", "names": dict(enumerate(CLASSES))}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def roboflow_yolo(root: Path) -> Path:
    """Roboflow YOLO: ``data.yaml`` with ``../<split>/images`` paths and a test split it lacks."""
    for split in SPLITS:
        rows = [row for row in GROUND_TRUTH if row[0] == split]
        _yolo_pairs(root / split / "images", root / split / "labels", rows)
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(CLASSES)}\nnames: {json.dumps(CLASSES)}\n\n"
        f"roboflow:\n  workspace: me\n  project: {PROJECT}\n  version: 1\n"
    )
    return root


def label_studio_yolo(root: Path) -> Path:
    """Label Studio YOLO: ``classes.txt``, ``notes.json``, ``images/``, ``labels/``."""
    _yolo_pairs(root / "images", root / "labels", GROUND_TRUTH)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    notes = {"categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)], "info": {}}
    _write_json(root / "notes.json", notes)
    return root


def labelimg_yolo(root: Path) -> Path:
    """LabelImg YOLO: ``images/`` + ``labels/`` with the class list in ``labels/classes.txt``."""
    _yolo_pairs(root / "images", root / "labels", GROUND_TRUTH)
    (root / "labels" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def cvat_yolo(root: Path) -> Path:
    """CVAT "YOLO 1.1": ``obj.names``, ``obj.data``, ``train.txt`` (paths under ``data/``) and
    ``obj_train_data/`` holding images and label files side by side."""
    _yolo_pairs(root / "obj_train_data", root / "obj_train_data", GROUND_TRUTH)
    (root / "obj.names").write_text("\n".join(CLASSES) + "\n")
    (root / "obj.data").write_text(
        f"classes = {len(CLASSES)}\ntrain = data/train.txt\nnames = data/obj.names\n"
        "backup = backup/\n"
    )
    (root / "train.txt").write_text(
        "".join(f"data/obj_train_data/{name}\n" for _, name, *_ in GROUND_TRUTH)
    )
    return root


def voc(root: Path) -> Path:
    """Pascal VOC: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``."""
    for split, name, width, height, boxes in GROUND_TRUTH:
        _image(root / "JPEGImages" / name, width, height)
        objects = "".join(
            f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x + 1}</xmin>"
            f"<ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
            for cls, x, y, w, h in boxes
        )
        xml = (
            f"<annotation><filename>{name}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>"
        )
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / name).with_suffix(".xml").write_text(xml)
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        with open(main / f"{split}.txt", "a") as handle:
            handle.write(Path(name).stem + "\n")
    return root


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "coco": coco,
    "coco-splits": coco_splits,
    "cvat-coco": cvat_coco,
    "roboflow-coco": roboflow_coco,
    "label-studio-coco": label_studio_coco,
    "voc": voc,
    "yolo": yolo,
    "roboflow-yolo": roboflow_yolo,
    "cvat-yolo": cvat_yolo,
    "label-studio-yolo": label_studio_yolo,
    "labelimg-yolo": labelimg_yolo,
}
