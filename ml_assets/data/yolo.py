"""YOLO to and from the canonical tables: ultralytics' layout and those labelling tools export.

Layouts (``yolo_layout``, first match wins):

- ``yolo``: a dataset YAML, images under ``ROOT/images/<split>/<key>`` and one label file per
  image at ``ROOT/labels/<split>/<key without suffix>.txt`` (ultralytics finds a label by
  replacing the last ``/images/`` of the image path with ``/labels/``). The YAML is read as
  ultralytics reads the one it is given (``find_yaml``): any file name (``data.yaml``,
  ``coco8.yaml``: the one ``*.yaml``/``*.yml`` there with ``names``; several are refused with
  their names), ``names`` as a list or a ``{0..K-1: name}`` mapping (``nc`` alone: ``class_0``
  ...), ``path`` absolute, relative to the YAML's folder or empty (one that is not a folder here
  is a ``yaml-path`` warning, and the YAML's folder is used), ``download`` never fetched.
  ``attrs["yaml"]`` names the file read. The reader takes ``train``, ``val`` and ``test`` as a
  folder, a ``.txt`` list of images, or a list of these, relative to ``path``; the split of an
  image is its folder below ``images/`` (or the YAML key for a list or another folder). A split
  the YAML names but the folder lacks is a warning (``split-missing``), not an error.
- ``roboflow-yolo``: the same with Roboflow's ``train: ../train/images`` paths (or a
  ``roboflow`` key), resolved as ultralytics' ``check_det_dataset`` does (a path starting with
  ``../`` that does not exist is read without it); the split is the folder above ``images/``
  (``train``, ``valid``).
- ``cvat-yolo``: CVAT's "YOLO 1.1": ``obj.names`` (one class a line), ``obj.data`` naming a
  ``train.txt`` list (paths under ``data/``, darknet's working folder, read with or without it),
  images and label files side by side in ``obj_train_data/``.
- ``label-studio-yolo``: ``classes.txt`` beside ``images/`` and ``labels/`` (Label Studio, which
  adds ``notes.json``); ``labelimg-yolo``: ``labels/classes.txt`` beside ``images/`` (LabelImg).
  Every image below ``images/`` is read; its split is its folder below ``images/``, if any.

An image without a label file, or with an empty one, has no boxes. What a line is depends on the
task of the labels (``attrs["task"]``), decided before any line is read, and a line whose count
of numbers does not fit it is an error naming the file and line:

- ``pose``: the YAML has ``kpt_shape: [K, D]``; a line is ``class cx cy w h`` and K keypoints of
  D values (x, y[, visibility]). The box is read; the keypoints are kept, in pixels, in a
  ``keypoints`` column (``attrs["kpt_shape"]``), which ``write_coco`` keeps as the annotations'
  ``keypoints``; ``write_yolo`` writes the boxes only.
- ``obb``: the YAML says so: ``task: obb`` in it, or ``obb`` or ``dota`` in its file name
  (ultralytics' ``dota8.yaml``, ``DOTAv1.yaml``); every line is ``class x1 y1 x2 y2 x3 y3 x4 y4``,
  read as a 4-point polygon with its extent as the box. Without that word 4-point polygons are
  segmentation polygons (a rectangle drawn as a polygon is one), as ultralytics reads them.
- otherwise each line is ``class cx cy w h`` (a box, normalized to the image size) or ``class
  x1 y1 x2 y2 ...`` (a polygon, at least three points); the box of a polygon line is the
  polygon's extent, which is what ultralytics trains on. ``segment`` when any line is a polygon,
  else ``detect``.

Image sizes come from the image headers.

Class mapping: YOLO class indices are 0..K-1. The writer numbers the categories in order of
``category_id`` and writes ``category_ids: [<id of class 0>, <id of class 1>, ...]`` into
``data.yaml`` (ultralytics ignores keys it does not know); the reader maps indices back through
it, so COCO -> YOLO -> COCO keeps the original ids. Without it, the class index is the id.

The writer keeps polygon segmentations (one polygon line per object; the parts of a multi-part
polygon are joined), writes a box line otherwise (RLE masks cannot be held), and leaves out
``iscrowd`` annotations, as ultralytics' own COCO converter does; an ``obb`` set gets
``task: obb`` in its ``data.yaml``. Images without a split go to ``train``; ``val`` points at
``images/val`` (or ``valid``, ``validation``) when there is one, else at the training images.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ml_assets.data.atomic import atomic_dir, write_text
from ml_assets.data.tables import (
    ANNOTATION_COLUMNS,
    IMAGE_DIRS,
    IMAGE_SUFFIXES,
    PROVENANCE,
    SOURCE_FILE,
    SOURCE_RECORD,
    Dataset,
    DatasetError,
    Issues,
    annotations_from_columns,
    categories_from_columns,
    image_key,
    image_size,
    images_from_columns,
    is_inside,
    link_images,
    records_frame,
    splits,
    task_of,
    write_files,
)

YAML_FILE = "data.yaml"
YAML_SUFFIXES = (".yaml", ".yml")
SPLIT_KEYS = ("train", "val", "test")
VAL_SPLITS = ("val", "valid", "validation")  # split names written as the yaml's val
CLASSES_FILE = "classes.txt"
KEYPOINTS = "keypoints"  # pose: the keypoints of a box, in pixels (x, y[, visibility] each)
DARKNET_DATA, DARKNET_NAMES = "obj.data", "obj.names"
_CHUNK = 16384  # annotations turned into label lines at a time
_BOX_LINE = "%d %.8g %.8g %.8g %.8g\n"  # the class is a float here: %d writes it as an integer


def find_yaml(src: Path) -> Path | None:
    """The dataset YAML of ``src``, whatever its name (``yolo train data=coco8.yaml``): the one
    ``*.yaml``/``*.yml`` file there that has ``names``, or ``data.yaml`` whatever it holds (its
    reader says what is wrong). None when there is none; several are refused, naming them."""
    src = Path(src)
    found = [
        path
        for path in sorted(src.iterdir())
        if path.suffix.lower() in YAML_SUFFIXES
        and not path.name.startswith(".")
        and (path.name == YAML_FILE or "names" in _mapping(path))
        and path.is_file()
    ]
    if len(found) > 1:
        raise DatasetError(
            "yaml-ambiguous",
            "",
            "",
            f"several dataset YAML files with names: {', '.join(p.name for p in found)}. "
            "ultralytics reads the one it is given: keep that one in the folder",
            src,
        )
    return found[0] if found else None


def _mapping(path: Path) -> dict[str, Any]:
    """The YAML file at ``path`` when it is a mapping, else {} (unreadable, malformed, a list)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def yolo_layout(src: Path) -> str | None:
    """The name of the YOLO layout in ``src`` (first match in this order), or None.

    ``roboflow-yolo``/``yolo``: a dataset YAML (``find_yaml``; Roboflow's has a ``roboflow`` key
    or ``../`` split paths); ``cvat-yolo``: ``obj.data`` or ``obj.names``; ``label-studio-yolo``:
    ``classes.txt`` beside ``images/`` and ``labels/``; ``labelimg-yolo``: ``labels/classes.txt``
    beside ``images/``.
    """
    src = Path(src)
    path = find_yaml(src)
    if path is not None:
        data = _mapping(path)
        paths = [data.get(key) for key in SPLIT_KEYS]
        roboflow = "roboflow" in data or any(str(p).startswith("../") for p in paths if p)
        return "roboflow-yolo" if roboflow else "yolo"
    if (src / DARKNET_DATA).is_file() or (src / DARKNET_NAMES).is_file():
        return "cvat-yolo"
    if (src / "images").is_dir():
        if (src / CLASSES_FILE).is_file():
            return "label-studio-yolo"
        if (src / "labels" / CLASSES_FILE).is_file():
            return "labelimg-yolo"
    return None


def label_path(file_name: str) -> str:
    """The label file of an image, both relative to the dataset root (ultralytics' rule)."""
    head, sep, tail = f"/{file_name}".rpartition("/images/")
    stem = (head + "/labels/" + tail) if sep else f"/{file_name}"
    return str(Path(stem[1:]).with_suffix(".txt").as_posix())


def read_yolo(src: Path, issues: Issues | None = None) -> Dataset:
    """Read a YOLO dataset folder (see the module docstring)."""
    src = Path(src)
    issues = issues or Issues(root=src)
    ds = Dataset(root=src)
    config = _config(src, issues)
    if config is None:
        return ds
    index = dict(enumerate(config.category_ids))
    ds.categories = categories_from_columns(
        {"category_id": config.category_ids, "name": config.names}
    )
    images: list[dict[str, Any]] = []
    columns: dict[str, list[Any]] = defaultdict(list)
    for image_id, (file_name, split) in enumerate(config.entries.items()):
        try:
            width, height = image_size(src / file_name)
        except OSError as error:
            issues.error(
                "image-unreadable", file_name, f"image {image_id}", f"cannot read: {error}"
            )
            continue
        images.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "split": split,
            }
        )
        label = label_path(file_name)
        _read_labels(src, label, (image_id, width, height), index, config, columns, issues)
    _orphan_labels(src, config.entries, issues)
    ds.images = images_from_columns(
        records_frame(images, ["image_id", "file_name", "width", "height", "split"])
    )
    columns["annotation_id"] = list(range(len(columns["image_id"])))
    keys = [*ANNOTATION_COLUMNS, *PROVENANCE, *([KEYPOINTS] if config.kpt_shape else [])]
    ds.annotations = annotations_from_columns(
        {k: columns[k] for k in keys if k not in ("area", "iscrowd")}
    )
    segmented = any(s is not None for s in columns["segmentation"])
    ds.attrs["task"] = config.task or ("segment" if segmented else "detect")
    if config.yaml:
        ds.attrs["yaml"] = config.yaml
    if config.kpt_shape:
        ds.attrs["kpt_shape"] = list(config.kpt_shape)
    return ds


@dataclass
class Config:
    """What a YOLO layout's class list and config files say."""

    names: list[str]
    category_ids: list[int]  # the category id of each class index
    entries: dict[str, str]  # {image file name: split}
    yaml: str = ""  # the dataset YAML read, relative to the root
    task: str = ""  # "pose" or "obb" when the YAML says so; else the labels decide
    kpt_shape: tuple[int, int] | None = None  # (keypoints, values per keypoint) for pose


def _config(src: Path, issues: Issues) -> Config | None:
    """The config of the layout in ``src``, or None when unusable."""
    layout = yolo_layout(src)
    if layout in ("yolo", "roboflow-yolo"):
        found = _yaml_config(src, find_yaml(src), issues)
    elif layout == "cvat-yolo":
        found = _darknet_config(src, issues)
    elif layout in ("label-studio-yolo", "labelimg-yolo"):
        found = _classes_config(src, issues)
    else:
        issues.error(
            "yaml-missing",
            ".",
            "",
            f"no dataset YAML (a *.yaml with names), {DARKNET_DATA}, or {CLASSES_FILE} "
            "beside images/ and labels/",
        )
        return None
    if found is not None and not found.entries:
        issues.error("images-missing", ".", "", "no images found in any split")
    return found


def _yaml_config(src: Path, path: Path, issues: Issues) -> Config | None:
    """The dataset YAML read as ultralytics' ``check_det_dataset`` does (Roboflow's ``../``
    included; ``download`` never fetched)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        issues.error("yaml-malformed", path, "", f"malformed YAML: {error}")
        return None
    if not isinstance(data, dict):
        issues.error("yaml-malformed", path, "", f"{path.name} must be a mapping")
        return None
    names = _yaml_names(path, data, issues)
    if names is None:
        return None
    task, kpt_shape = _yaml_task(path, data, issues)
    ids = data.get("category_ids")
    valid_ids = (
        isinstance(ids, list) and len(ids) == len(names) and all(isinstance(i, int) for i in ids)
    )
    base = path.parent
    if data.get("path"):
        where = path.parent / str(data["path"])  # an absolute path stays as it is
        if where.is_dir():
            base = where
        else:
            issues.warning(
                "yaml-path",
                path,
                "path",
                f"{data['path']} is not a folder here: the splits are read relative to "
                f"{path.name}'s folder",
            )
    entries: dict[str, str] = {}
    for key in SPLIT_KEYS:
        value = data.get(key)
        for item in value if isinstance(value, list) else [value] if value else []:
            target = base / str(item)
            if isinstance(value, str) and not target.exists() and value.startswith("../"):
                target = base / value[3:]  # ultralytics' rule for Roboflow's exports
            _add_images(src, target, key, entries, path, issues)
    return Config(
        [str(n) for n in names],
        ids if valid_ids else list(range(len(names))),
        entries,
        path.relative_to(src).as_posix(),
        task,
        kpt_shape,
    )


def _yaml_names(path: Path, data: dict[str, Any], issues: Issues) -> list | None:
    """The class names as ultralytics reads them: a list, a {0..K-1: name} mapping or ``nc``
    alone; None (an error) for anything else or an ``nc`` that disagrees."""
    names = data.get("names")
    if names is None and isinstance(data.get("nc"), int):
        names = [f"class_{i}" for i in range(data["nc"])]  # ultralytics' names for nc alone
    if isinstance(names, dict) and all(str(k).isdigit() for k in names):
        names = (
            [str(names[k]) for k in sorted(names, key=int)]
            if sorted(map(int, names)) == list(range(len(names)))
            else None
        )
    if not isinstance(names, list):
        issues.error(
            "yaml-field", path, "names", "names must be a list or a {0..K-1: name} mapping"
        )
        return None
    if "nc" in data and data["nc"] != len(names):
        issues.error("yaml-field", path, "nc", f"nc is {data['nc']} but names has {len(names)}")
        return None
    return names


def _yaml_task(
    path: Path, data: dict[str, Any], issues: Issues
) -> tuple[str, tuple[int, int] | None]:
    """("pose", kpt_shape) with ``kpt_shape``; ("obb", None) when the YAML says OBB (module
    docstring); else ("", None): the labels decide between segment and detect."""
    shape = data.get("kpt_shape")
    if shape is not None:
        valid = isinstance(shape, list) and len(shape) == 2 and all(type(v) is int for v in shape)
        if not valid or shape[0] < 1 or shape[1] not in (2, 3):
            issues.error(
                "yaml-field", path, "kpt_shape", f"kpt_shape must be [keypoints, 2 or 3]: {shape}"
            )
            return "", None
        return "pose", (shape[0], shape[1])
    words = re.split(r"[^a-z0-9]+", path.stem.lower())
    obb = data.get("task") == "obb" or any(w == "obb" or w.startswith("dota") for w in words)
    return ("obb" if obb else ""), None


def _darknet_config(src: Path, issues: Issues) -> Config | None:
    """CVAT's YOLO 1.1: ``obj.names``, ``obj.data`` naming one image list per subset.

    Paths in the lists start with ``data/`` (darknet runs from the folder above the export):
    they are read relative to the export, with or without that prefix.
    """
    names_file = src / DARKNET_NAMES
    settings: dict[str, str] = {}
    if (src / DARKNET_DATA).is_file():
        for line in _text(src / DARKNET_DATA).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                settings[key.strip()] = value.strip()
    if "names" in settings:
        names_file = src / _darknet_path(src, settings["names"])
    if not names_file.is_file():
        issues.error("yaml-missing", DARKNET_DATA, "names", f"{names_file.name} not found")
        return None
    names = _lines(names_file)
    entries: dict[str, str] = {}
    lists = {k: v for k, v in settings.items() if v.endswith(".txt")}
    if not settings:
        lists = {p.stem: p.name for p in sorted(src.glob("*.txt"))}
    for split, value in lists.items():
        target = src / _darknet_path(src, value)
        if not target.is_file():
            issues.warning("split-missing", DARKNET_DATA, split, f"{value} does not exist")
            continue
        files = [src / _darknet_path(src, line) for line in _lines(target)]
        _add_files(src, files, split, entries, target, issues)
    return Config(names, list(range(len(names))), entries)


def _darknet_path(src: Path, value: str) -> str:
    value = value.strip().replace("\\", "/")
    if not (src / value).exists() and value.startswith("data/"):
        return value.removeprefix("data/")
    return value


def _classes_config(src: Path, issues: Issues) -> Config | None:
    """``classes.txt`` (Label Studio: beside images/; LabelImg: in labels/) and every image below
    ``images/``; an image's split is its folder below ``images/`` ("" directly in it)."""
    path = src / CLASSES_FILE
    names = _lines(path if path.is_file() else src / "labels" / CLASSES_FILE)
    entries: dict[str, str] = {}
    _add_images(src, src / "images", "", entries, path, issues)
    return Config(names, list(range(len(names))), entries)


def _text(path: Path) -> str:
    """A config or list file's text; one that is not UTF-8 is an error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError("yaml-malformed", path.name, "", f"not UTF-8 text: {err}") from err


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in _text(path).splitlines() if line.strip()]


def _add_images(
    src: Path, target: Path, key: str, entries: dict[str, str], yaml_path: Path, issues: Issues
) -> None:
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if target.resolve() == (src / "images").resolve():  # split: the folder below images/
            for file in files:
                below = file.relative_to(target).parts
                split = below[0] if len(below) > 1 else key
                _add_files(src, [file], split, entries, yaml_path, issues)
            return
        under_images = target.parent.resolve() == (src / "images").resolve()
        roboflow = target.name in IMAGE_DIRS and target.parent.resolve() != src.resolve()
        split = target.name if under_images else target.parent.name if roboflow else key
    elif target.suffix == ".txt" and target.is_file():
        files = [target.parent / line for line in _lines(target)]
        split = key
    elif not target.exists():
        issues.warning("split-missing", yaml_path, key, f"{target} does not exist: no {key} images")
        return
    else:
        issues.error("yaml-field", yaml_path, key, f"{target} is neither a folder nor a .txt list")
        return
    _add_files(src, files, split, entries, yaml_path, issues)


def _add_files(
    src: Path,
    files: list[Path],
    split: str,
    entries: dict[str, str],
    listed_in: Path,
    issues: Issues,
) -> None:
    root = os.path.abspath(src)
    for file in files:
        relative = os.path.relpath(os.path.abspath(file), root)  # lexical: no system call
        if not is_inside(relative):
            issues.error("path-escape", listed_in, split, f"{file} is outside the dataset folder")
            continue
        entries.setdefault(Path(relative).as_posix(), split)


def _read_labels(
    src: Path,
    label: str,
    image: tuple[int, int, int],
    index: dict[int, int],
    config: Config,
    columns: dict[str, list[Any]],
    issues: Issues,
) -> None:
    """The lines of the label file of ``image`` (id, width, height) into ``columns``."""
    image_id, width, height = image
    try:
        text = (src / label).read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as error:
        issues.error("label-malformed", label, "", f"cannot read: {error}")
        return
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, values = int(parts[0]), np.array(parts[1:], dtype=np.float64)
        except ValueError:
            issues.error("label-malformed", label, f"line {number}", f"not numbers: {line!r}")
            continue
        if cls not in index:
            issues.error(
                "unknown-category",
                label,
                f"line {number}",
                f"class {cls} is not in names (0..{len(index) - 1})",
            )
            continue
        found = _read_line(values, width, height, config)
        if isinstance(found, str):
            issues.error("label-malformed", label, f"line {number}", found)
            continue
        box, segmentation, keypoints = found
        for name, value in zip("xywh", box, strict=True):
            columns[name].append(float(value))
        columns["image_id"].append(image_id)
        columns["category_id"].append(index[cls])
        columns["segmentation"].append(segmentation)
        columns[KEYPOINTS].append(keypoints)
        columns[SOURCE_FILE].append(label)
        columns[SOURCE_RECORD].append(f"line {number}")


def _read_line(
    values: np.ndarray, width: int, height: int, config: Config
) -> tuple[tuple[float, ...], list[list[float]] | None, list[float] | None] | str:
    """(box, segmentation, keypoints) of a label line's numbers after the class, in pixels; or
    what the line should have been, when its count does not fit the task."""
    found = len(values)
    if config.kpt_shape:
        points, dims = config.kpt_shape
        if found != 4 + points * dims:
            return (
                f"expected a pose line, 'class cx cy w h' and {points} keypoints of {dims} "
                f"values (kpt_shape in {config.yaml}): {4 + points * dims} numbers after the "
                f"class, found {found}"
            )
        keypoints = values[4:].reshape(points, dims) * [width, height, 1][:dims]
        return _box(values[:4], width, height), None, keypoints.ravel().tolist()
    if config.task == "obb" and found != 8:
        return (
            f"expected an oriented box, 'class x1 y1 x2 y2 x3 y3 x4 y4' ({config.yaml} names an "
            f"OBB dataset): 8 numbers after the class, found {found}"
        )
    if found == 4:
        return _box(values, width, height), None, None
    if found >= 6 and found % 2 == 0:
        xy = values.reshape(-1, 2) * [width, height]
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        return (x0, y0, x1 - x0, y1 - y0), [xy.ravel().tolist()], None
    return f"expected 'class cx cy w h' or a polygon of 3+ points, found {found} numbers"


def _box(values: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    """(x, y, w, h) in pixels of the normalized ``cx cy w h``."""
    cx, cy, w, h = values * [width, height, width, height]
    return cx - w / 2, cy - h / 2, w, h


def _orphan_labels(src: Path, entries: dict[str, str], issues: Issues) -> None:
    expected = {label_path(f) for f in entries}
    folders = {str(Path(label).parent) for label in expected}
    for folder in sorted(folders):
        for label in sorted((src / folder).glob("*.txt")):
            if label.name == CLASSES_FILE or (src / folder).resolve() == src.resolve():
                continue
            relative = label.relative_to(src).as_posix()
            if relative not in expected:
                issues.warning("label-orphan", relative, "", "label file without an image")


def write_yolo(ds: Dataset, dst: Path, overwrite: bool = False) -> Path:
    """Write ``ds`` in the ultralytics layout at ``dst`` atomically (images hard-linked)."""
    dst = Path(dst)
    categories = ds.categories.sort_values("category_id")
    index = {c: i for i, c in enumerate(categories["category_id"].tolist())}
    split_names = splits(ds.images).replace("", "train")
    keys = (image_key(f, s) for f, s in zip(ds.images["file_name"], split_names, strict=True))
    image_files = [f"images/{s}/{k}" for s, k in zip(split_names, keys, strict=True)]
    with atomic_dir(dst, overwrite) as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        # File system calls release the GIL, so linking the images (one thread) and writing each
        # chunk of label files (the other) overlap making the next chunk of label texts.
        # Paths are strings: a Path object per file would cost time and memory.
        root = os.fspath(tmp)
        names = ds.images["file_name"]
        targets = [(f, os.path.join(root, t)) for f, t in zip(names, image_files, strict=True)]
        done = [pool.submit(link_images, ds, targets)]
        labels: dict[int, list[str]] = defaultdict(list)  # by image id (ids may repeat)
        for image_id, file in zip(ds.images["image_id"].tolist(), image_files, strict=True):
            labels[image_id].append(os.path.join(root, label_path(file)))
        for texts in _label_text_chunks(ds, index):
            files = [(f, text) for i, text in texts.items() for f in labels.pop(i, ())]
            done.append(pool.submit(write_files, files))
        done.append(pool.submit(write_files, [(f, "") for fs in labels.values() for f in fs]))
        write_text(tmp / YAML_FILE, _yaml(categories, sorted(set(split_names)), task_of(ds)))
        for future in done:
            future.result()
    return dst


def _label_text_chunks(ds: Dataset, index: dict[int, int]) -> Iterator[dict[int, str]]:
    """The label file texts of the images with boxes, about ``_CHUNK`` lines at a time.

    Lines are made in chunks of whole images, so memory holds one chunk, never a Python object
    per number of the whole table. Raises DatasetError before the first chunk for an unknown
    category.
    """
    ann = ds.annotations
    rows = np.flatnonzero(ann["iscrowd"].to_numpy() == 0)
    rows = rows[np.argsort(ann["image_id"].to_numpy()[rows], kind="stable")]  # by image
    image_ids = ann["image_id"].to_numpy()[rows]
    classes = _classes(ann, rows, index)
    sizes = ds.images.drop_duplicates("image_id").set_index("image_id")
    width = pd.Series(image_ids).map(sizes["width"]).to_numpy(dtype=np.float64)
    height = pd.Series(image_ids).map(sizes["height"]).to_numpy(dtype=np.float64)
    if not len(image_ids):
        return
    x, y, w, h = (ann[c].to_numpy() for c in "xywh")  # gathered a chunk at a time below
    segmentations = ann["segmentation"].to_numpy()
    # runs of rows of one image; a chunk is the runs that start in _CHUNK rows
    run_starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
    run_ids = image_ids[run_starts].tolist()
    chunks = np.unique(np.searchsorted(run_starts, np.arange(0, len(image_ids), _CHUNK))).tolist()
    run_starts = [*run_starts.tolist(), len(image_ids)]
    for first, last in zip(chunks, [*chunks[1:], len(run_ids)], strict=True):
        base, stop = run_starts[first], run_starts[last]
        at, size = rows[base:stop], (width[base:stop], height[base:stop])
        boxes = np.empty((stop - base, 5), dtype=np.float64)  # class, cx, cy, w, h
        bw, bh = w[at].astype(np.float64), h[at].astype(np.float64)
        boxes[:, 0] = classes[base:stop]
        boxes[:, 1] = (x[at] + bw / 2) / size[0]
        boxes[:, 2] = (y[at] + bh / 2) / size[1]
        boxes[:, 3], boxes[:, 4] = bw / size[0], bh / size[1]
        flat = boxes.ravel().tolist()
        chunk_segmentations = segmentations[at].tolist()
        texts = {}
        for run in range(first, last):
            a, b = run_starts[run] - base, run_starts[run + 1] - base
            values = flat[5 * a : 5 * b]
            segmentation = chunk_segmentations[a:b]
            if any(isinstance(s, list) and s for s in segmentation):
                lines = zip(
                    *(values[i::5] for i in range(5)),
                    segmentation,
                    size[0][a:b].tolist(),
                    size[1][a:b].tolist(),
                    strict=True,
                )
                texts[run_ids[run]] = "".join(_line(int(v[0]), *v[1:]) for v in lines)
            else:  # box lines only: one %-format per image writes what _line would
                texts[run_ids[run]] = (_BOX_LINE * (b - a)) % tuple(values)
        yield texts


def _classes(ann: pd.DataFrame, rows: np.ndarray, index: dict[int, int]) -> np.ndarray:
    """The class (``index`` of the category id) of each annotation of ``rows``; DatasetError
    for the first whose category is not in the categories table."""
    category_ids = ann["category_id"].to_numpy()[rows]
    classes = pd.Series(category_ids).map(index)
    if classes.isna().any():
        first = int(np.flatnonzero(classes.isna().to_numpy())[0])
        raise DatasetError(
            "unknown-category",
            "",
            f"annotation {ann['annotation_id'].to_numpy()[rows[first]]}",
            f"category {category_ids[first]} is not in the categories table",
        )
    return classes.to_numpy(dtype=np.int64)


def _line(
    cls: int,
    cx: float,
    cy: float,
    w: float,
    h: float,
    segmentation: Any,
    width: float,
    height: float,
) -> str:
    """A polygon line for a polygon segmentation (parts joined), else a box line."""
    if isinstance(segmentation, list) and segmentation:
        xy = np.concatenate([np.asarray(p, dtype=np.float64) for p in segmentation])
        xy = xy.reshape(-1, 2) / [width, height]
        return f"{cls} " + " ".join(f"{v:.8g}" for v in xy.ravel().tolist()) + "\n"
    return f"{cls} {cx:.8g} {cy:.8g} {w:.8g} {h:.8g}\n"


def _yaml(categories: pd.DataFrame, split_names: list[str], task: str) -> str:
    others = [f"images/{s}" for s in split_names if s not in (*VAL_SPLITS, "test")]
    train = others if others else [f"images/{s}" for s in split_names]
    config: dict[str, Any] = {"train": train[0] if len(train) == 1 else train}
    val = [f"images/{s}" for s in split_names if s in VAL_SPLITS]
    config["val"] = val[0] if len(val) == 1 else val or config["train"]
    if "test" in split_names:
        config["test"] = "images/test"
    config["names"] = dict(enumerate(categories["name"].tolist()))
    config["category_ids"] = categories["category_id"].tolist()
    if task == "obb":
        config["task"] = "obb"
    header = "# written by ml_assets; category_ids[i] is the source category id of class i\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
