"""Which layout a dataset folder is in: the folder layouts that labelling tools export.

Detection looks only at names of files and folders (and the first bytes of ``result.json``); it
never guesses silently. The rule, in order:

1. A layout with an annotation file (COCO JSON, VOC XML, a YOLO yaml / ``obj.data`` /
   ``classes.txt``) beats a folder structure. Within one format the first match in ``LAYOUTS``
   order wins (``annotations.json`` before ``annotations/instances_*.json`` before Roboflow's
   ``<split>/_annotations.coco.json`` before ``result.json``; a dataset YAML of any name
   (``data.yaml``, ``coco8.yaml``: several are refused) before ``obj.data`` before
   ``classes.txt``).
2. Annotation files of two formats (say ``annotations.json`` and ``data.yaml``) stop detection
   with a message naming the candidates: pass ``--from <format>`` to choose.
3. Without an annotation file, a folder is an image-folder classification set, the reader's
   ``imagefolder_layout`` says which: ``<split>/<class>/<image>`` (``imagefolder-splits``) when
   every sub-folder is named like a split (``train``, ``val``, ``valid``, ``test``...), else
   ``<class>/<image>``. Sub-folders named like a part of an export (``images``, ``labels``,
   ``annotations``...), split folders beside other folders, and class folders that hold an
   export or a dataset (annotation files, export parts, splits) are refused with a message
   saying what was found: reading them as classes would misread an export whose annotation file
   is missing, or a folder of datasets. ``--from imagefolder`` applies the same rule.

``READERS`` lives here, not in ``formats``, so that ``validate`` reads sources without importing
``formats`` (which imports ``validate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml_assets.data import coco, imagefolder, voc, yolo
from ml_assets.data.tables import Dataset, DatasetError, Issues

FORMATS = ("coco", "voc", "yolo", "imagefolder")
Reader = Callable[[Path, Issues | None], Dataset]
READERS: dict[str, Reader] = {
    "coco": coco.read_coco,
    "voc": voc.read_voc,
    "yolo": yolo.read_yolo,
    "imagefolder": imagefolder.read_imagefolder,
}


@dataclass(frozen=True)
class Layout:
    name: str
    format: str
    files: str  # what identifies it, as a user sees it in the folder
    tools: str  # who writes it


LAYOUTS = (
    Layout("coco", "coco", "annotations.json + images/", "ml_assets, FiftyOne, many scripts"),
    Layout(
        "coco-splits",
        "coco",
        "annotations/instances_<split>.json + images/<split>/ (or <split>/, images/)",
        "COCO releases, ml_assets (several splits)",
    ),
    Layout(
        "cvat-coco",
        "coco",
        "annotations/instances_default.json + images/default/ (or images/)",
        "CVAT: COCO 1.0",
    ),
    Layout(
        "roboflow-coco",
        "coco",
        "<split>/_annotations.coco.json with the images beside it",
        "Roboflow: COCO",
    ),
    Layout(
        "label-studio-coco",
        "coco",
        "result.json (file_name relative to the export) + images/",
        "Label Studio: COCO",
    ),
    Layout(
        "voc",
        "voc",
        "Annotations/*.xml + JPEGImages/ (+ ImageSets/Main/<split>.txt)",
        "Pascal VOC, CVAT: PASCAL VOC 1.1, ml_assets",
    ),
    Layout(
        "yolo",
        "yolo",
        "a dataset YAML (data.yaml, coco8.yaml...) + images/<split>/ + labels/<split>/",
        "ultralytics, ml_assets",
    ),
    Layout(
        "roboflow-yolo",
        "yolo",
        "data.yaml (train: ../train/images) + <split>/images/ + <split>/labels/",
        "Roboflow: YOLOv5 ... YOLO11",
    ),
    Layout(
        "cvat-yolo",
        "yolo",
        "obj.names + obj.data + train.txt + obj_train_data/",
        "CVAT: YOLO 1.1",
    ),
    Layout(
        "label-studio-yolo",
        "yolo",
        "classes.txt + images/ + labels/ (+ notes.json)",
        "Label Studio: YOLO",
    ),
    Layout("labelimg-yolo", "yolo", "images/ + labels/ with labels/classes.txt", "LabelImg: YOLO"),
    Layout(
        "imagefolder-splits",
        "imagefolder",
        "<split>/<class>/<image>, split: train, val (valid, validation), test (classification)",
        "ultralytics (classify), torchvision ImageFolder per split, ml_assets (several splits)",
    ),
    Layout(
        "imagefolder",
        "imagefolder",
        "<class>/<image> (classification)",
        "torchvision ImageFolder, ml_assets",
    ),
)
BY_NAME = {layout.name: layout for layout in LAYOUTS}


def candidates(src: Path, fmt: str = "auto") -> list[Layout]:
    """The annotation-file layouts found in ``src``, at most one per format (of ``fmt`` only,
    unless "auto")."""
    src = Path(src)
    detectors: dict[str, Callable[[], str | None]] = {
        "coco": lambda: (coco.coco_layout(src) or (None,))[0],
        "voc": lambda: "voc" if (src / "Annotations").is_dir() else None,
        "yolo": lambda: yolo.yolo_layout(src),
    }
    names = [detect() for name, detect in detectors.items() if fmt in ("auto", name)]
    return [BY_NAME[name] for name in names if name]


def detect_layout(src: Path, fmt: str = "auto") -> Layout:
    """The layout of the dataset folder ``src`` by the module's rule; ``fmt`` limits it to one
    format. Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` naming what was
    found when no layout (or more than one) fits."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "imagefolder":
        return _imagefolder_layout(src)
    found = candidates(src, fmt)
    if fmt != "auto":
        return found[0] if found else BY_NAME[fmt]  # its reader says what is missing
    if len(found) > 1:
        listed = "; ".join(f"{layout.format} ({layout.files})" for layout in found)
        options = " or ".join(f"--from {layout.format}" for layout in found)
        raise ValueError(f"{src} holds the layouts of several formats: {listed}. Pass {options}")
    if found:
        return found[0]
    if imagefolder.class_folders(src):
        return _imagefolder_layout(src)
    hint = _unsupported(src)
    raise ValueError(
        f"{src}: no known dataset layout{hint}. Supported layouts: {_listing()}; "
        "see the README for how to bring another one"
    )


def _imagefolder_layout(src: Path) -> Layout:
    try:
        return BY_NAME[imagefolder.imagefolder_layout(src)]
    except DatasetError as error:
        raise ValueError(f"{error}. Supported layouts: {_listing()}") from None


def detect_format(src: Path) -> str:
    """The format of the dataset folder ``src``: "coco", "voc", "yolo" or "imagefolder"."""
    return detect_layout(src).format


def read_source(src: Path, fmt: str = "auto", issues: Issues | None = None) -> Dataset:
    """Read ``src`` in its detected layout (``fmt`` chooses the format); ``attrs["layout"]`` and
    ``attrs["warnings"]`` (text) say what was read and what looked odd."""
    src = Path(src)
    layout = detect_layout(src, fmt)
    issues = issues or Issues(root=src)
    ds = READERS[layout.format](src, issues)
    ds.attrs["layout"] = ds.attrs.get("layout") or layout.name
    ds.attrs["warnings"] = [str(warning) for warning in issues.warnings]
    return ds


def _listing() -> str:
    names = ", ".join(layout.name for layout in LAYOUTS)
    return f"{names} (the README's table says what identifies each)"


def _unsupported(src: Path) -> str:
    """A hint for files that look like a dataset we do not read."""
    result = src / coco.LABEL_STUDIO_FILE
    if result.is_file() and not coco.is_json_object(result):
        return (
            " (result.json is not a COCO object: it looks like Label Studio's JSON task export;"
            " export COCO or YOLO from Label Studio instead)"
        )
    xml = sorted(src.glob("*.xml"))
    if xml:
        return (
            f" ({xml[0].name}: VOC XML files are read from an Annotations/ folder with the"
            " images in JPEGImages/)"
        )
    return ""
