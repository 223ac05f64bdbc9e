"""Image-folder classification layouts (torchvision's ImageFolder), and what is never a class.

Layouts (``imagefolder_layout``):

- ``imagefolder``: ``ROOT/<class>/<image>``; every visible sub-folder of ``ROOT`` is a class.
- ``imagefolder-splits``: ``ROOT/<split>/<class>/<image>``, when every visible sub-folder of
  ``ROOT`` is named like a split (``train``, ``val``, ``valid``, ``validation``, ``test``...:
  ultralytics' ``check_cls_dataset``, torchvision's ImageFolder per split). Each image's
  ``split`` is the name of its split folder, as written (``test`` stays ``test``); the classes
  are the class folders of all splits together.

Reading: classes sorted by name, category ids 0..K-1, empty class folders included. Every image
below a class folder, in plain sub-folders too (torchvision's rule), becomes one image with one
whole-image annotation: the box ``(0, 0, width, height)`` of its class. Sizes come from the image
headers; ``file_name`` is the path below ``ROOT``; names starting with a dot are skipped.
``attrs["task"]`` is ``classify``.

Never read as classes (``export_signs`` is the rule; ``landing`` asks it about its root too): a
folder holding annotation files (``*.json``, ``*.yaml``, ``*.yml``, ``*.xml``, ``classes.txt``,
``obj.data``, ``obj.names``), parts of an export (``images/``, ``labels/``, ``annotations/``,
``Annotations/``, ``JPEGImages/``, ``ImageSets/``, ``obj_*/``) or split folders is a dataset or
a part of one. So the reader refuses, with a ``DatasetError`` naming each folder and what it
looks like:

- a ``ROOT`` with sub-folders named like export parts (an export whose annotation file is
  missing or of a layout we do not read);
- a ``ROOT`` with split folders beside other folders (neither layout);
- a split folder that holds images directly, or annotation files or export parts;
- a class folder, or a folder below it, that holds them: a folder of datasets (``coco8/``,
  ``imagenet10/`` side by side) is refused with them as the candidates, each a dataset of its own.

Writing: each image goes to the folder of its single class, at ``<class>/<key>`` (or at its key
when that already starts with the class folder), under ``<split>/`` when the images carry two
splits or more (as ``write_coco`` writes one file per split only then); an image without a split
then goes to ``train``. Every class folder is made in every split, so ultralytics, which takes
the classes from ``train/``, numbers them as we do. A split that is not named like a split is
refused (reading it back would take it for a class). Classification needs one label per image,
so an image whose annotations name no class or more than one distinct class is refused with a
``DatasetError`` naming it; boxes are not kept. Category ids are not kept either: reading back
numbers the classes by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.tables import (
    IMAGE_SUFFIXES,
    Dataset,
    DatasetError,
    Issues,
    annotations_from_columns,
    categories_from_columns,
    image_key,
    image_size,
    images_from_columns,
    link_images,
    splits,
)
from ml_assets.data.yolo import CLASSES_FILE, DARKNET_DATA, DARKNET_NAMES, YAML_SUFFIXES

PLAIN, SPLITS = "imagefolder", "imagefolder-splits"
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})
EXPORT_FOLDERS = frozenset(
    {"images", "labels", "annotations", "Annotations", "JPEGImages", "ImageSets"}
)
ANNOTATION_FILES = frozenset({CLASSES_FILE, DARKNET_DATA, DARKNET_NAMES})
ANNOTATION_SUFFIXES = (".json", ".xml", *YAML_SUFFIXES)
DEFAULT_SPLIT = "train"  # where the writer puts images without a split beside split ones


def is_split(name: str) -> bool:
    """A folder named like a split (``train``, ``val``, ``valid``, ``test``...)."""
    return name.lower() in SPLIT_NAMES


def export_part(name: str) -> bool:
    """A folder named like a split or a part of an export (never a class of an image folder)."""
    return is_split(name) or name in EXPORT_FOLDERS or name.startswith("obj_")


def is_annotation_file(name: str) -> bool:
    return name in ANNOTATION_FILES or name.lower().endswith(ANNOTATION_SUFFIXES)


def export_signs(files: Iterable[str], folders: Iterable[str]) -> list[str]:
    """What makes a folder with these files and sub-folders (names) a dataset or a part of an
    export, never a class: its annotation files and its sub-folders named like export parts or
    splits (with a trailing ``/``), sorted. Empty for a plain folder. Hidden names never count."""
    found = [f for f in files if is_annotation_file(f)]
    found += [f"{d}/" for d in folders if export_part(d)]
    return sorted(name for name in found if not name.startswith("."))


def looks_like(signs: list[str]) -> str:
    """What ``export_signs`` suggest a folder is, in words, for a refusal's message."""
    names = {sign.rstrip("/") for sign in signs}
    suffixes = {Path(name).suffix.lower() for name in names}
    if names & {"labels", *ANNOTATION_FILES} or suffixes & set(YAML_SUFFIXES):
        return "a YOLO export"
    if "annotations" in names or ".json" in suffixes:
        return "a COCO export"
    if names & {"Annotations", "JPEGImages", "ImageSets"} or ".xml" in suffixes:
        return "a Pascal VOC export"
    if all(is_split(name) for name in names):
        return "a classification set with splits"
    return "a part of an export"


def class_folders(src: Path) -> list[Path]:
    return sorted(p for p in Path(src).iterdir() if p.is_dir() and not p.name.startswith("."))


def imagefolder_layout(src: Path) -> str:
    """``imagefolder-splits`` when every visible sub-folder of ``src`` is named like a split,
    else ``imagefolder``. Raises ``DatasetError`` for a root that is neither (module docstring)."""
    src = Path(src)
    folders = [f.name for f in class_folders(src)]
    parts = [f"{name}/" for name in folders if export_part(name) and not is_split(name)]
    if parts:
        raise DatasetError(
            "not-a-class",
            "",
            "",
            f"the sub-folders {', '.join(parts)} are named like parts of an exported dataset, "
            "so they are not read as classes: read the export in its own format (an export "
            "whose annotation file is missing, or of a layout we do not read, looks like this)",
            src,
        )
    split_folders = [name for name in folders if is_split(name)]
    if not split_folders:
        return PLAIN
    others = [f"{name}/" for name in folders if not is_split(name)]
    if others:
        raise DatasetError(
            "split-layout",
            "",
            "",
            f"the split folders {', '.join(f'{s}/' for s in split_folders)} stand beside the "
            f"folders {', '.join(others)}: that is neither <split>/<class>/<image> nor "
            "<class>/<image>. Put every class folder inside a split folder, or rename the "
            "split folders if they are classes",
            src,
        )
    problems = [_split_problem(src / name) for name in split_folders]
    problems = [problem for problem in problems if problem]
    if problems:
        raise DatasetError(
            "split-layout",
            "",
            "",
            "; ".join(problems) + ". A classification set with splits is "
            "<split>/<class>/<image>: every image in a class folder",
            src,
        )
    return SPLITS


def _split_problem(folder: Path) -> str:
    """What keeps ``folder`` from being a split of class folders ("" when nothing does)."""
    with os.scandir(folder) as listing:
        entries = [e for e in listing if not e.name.startswith(".")]
    files = sorted(e.name for e in entries if not e.is_dir())
    signs = export_signs(files, [e.name for e in entries if e.is_dir()])
    if signs:
        return f"{folder.name}/ holds {', '.join(signs)}: it looks like {looks_like(signs)}"
    images = [name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    if images:
        shown = ", ".join(images[:3]) + (", ..." if len(images) > 3 else "")
        return (
            f"{folder.name}/ holds {len(images)} images directly ({shown}), in no class folder "
            "(an export whose annotation file is missing looks like this)"
        )
    return ""


def read_imagefolder(src: Path, issues: Issues | None = None) -> Dataset:
    """Read ``ROOT/<class>/<image>`` or ``ROOT/<split>/<class>/<image>`` as one whole-image
    annotation per image (see the module docstring)."""
    src = Path(src)
    issues = issues or Issues(root=src)
    layout = imagefolder_layout(src)
    tops = class_folders(src)
    pairs = (
        [(top.name, folder) for top in tops for folder in class_folders(top)]
        if layout == SPLITS
        else [("", folder) for folder in tops]
    )
    names = sorted({folder.name for _, folder in pairs})
    index = {name: i for i, name in enumerate(names)}
    refused: dict[str, list[str]] = {}
    rows: list[tuple[str, int, int, int, str]] = []
    for split, folder in pairs:
        for file_name in _images_below(folder, src, refused):
            try:
                width, height = image_size(src / file_name)
            except OSError as error:
                issues.error("image-unreadable", file_name, "", f"cannot read: {error}")
                continue
            rows.append((file_name, width, height, index[folder.name], split))
    if refused:
        issues.error("not-a-class", "", "", _not_classes(src, refused))
    frame = pd.DataFrame(rows, columns=["file_name", "width", "height", "category_id", "split"])
    ids = list(range(len(frame)))
    columns = ["file_name", "width", "height", *(["split"] if layout == SPLITS else [])]
    images = images_from_columns({"image_id": ids, **{c: frame[c] for c in columns}})
    annotations = annotations_from_columns(
        {
            "annotation_id": ids,
            "image_id": ids,
            "category_id": frame["category_id"],
            "x": [0.0] * len(frame),
            "y": [0.0] * len(frame),
            "w": frame["width"].astype(float),
            "h": frame["height"].astype(float),
        }
    )
    categories = categories_from_columns({"category_id": list(range(len(names))), "name": names})
    attrs = {"task": "classify", "layout": layout}
    return Dataset(images, annotations, categories, root=src, attrs=attrs)


def _images_below(folder: Path, src: Path, refused: dict[str, list[str]]) -> list[str]:
    """The images below the class folder ``folder`` (relative to ``src``, sorted); none when a
    folder there shows ``export_signs``, which then goes into ``refused``."""
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):  # torchvision follows links
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        signs = export_signs(files, dirs)
        if signs:
            refused[Path(here).relative_to(src).as_posix()] = signs
            return []
        below = Path(here).relative_to(src).as_posix()
        found += [
            f"{below}/{name}"
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
    return sorted(found)


def _not_classes(src: Path, refused: dict[str, list[str]]) -> str:
    listed = "; ".join(
        f"{folder}/ holds {', '.join(signs)}: it looks like {looks_like(signs)} (a dataset), "
        "not a class"
        for folder, signs in sorted(refused.items())
    )
    return (
        f"{listed}. Read each dataset from its own folder (ml-assets inspect "
        f"{src / sorted(refused)[0]}): a folder of datasets is not a classification set"
    )


def write_imagefolder(ds: Dataset, dst: Path, overwrite: bool = False) -> Path:
    """Write each image into the folder of its single class (see the module docstring)."""
    dst = Path(dst)
    classes = ds.annotations.groupby("image_id")["category_id"].unique()
    names = ds.category_names
    split_names = splits(ds.images).replace("", DEFAULT_SPLIT)
    several = split_names.nunique() > 1
    for split in sorted(set(split_names)) if several else []:
        if not is_split(split):
            raise DatasetError(
                "split-name",
                "",
                f"split {split!r}",
                f"an image folder's split folders are named {', '.join(sorted(SPLIT_NAMES))}; "
                f"a folder {split!r} would be read back as a class",
                ds.root,
            )
    targets = []
    for image_id, file_name, split in zip(
        ds.images["image_id"], ds.images["file_name"], split_names, strict=True
    ):
        found = classes.get(image_id, [])
        if len(found) != 1:
            labels = sorted(names.get(c, str(c)) for c in found)
            raise DatasetError(
                "not-single-class",
                file_name,
                f"image {image_id}",
                f"an image folder needs exactly one class per image, this one has {labels or 'none'}",
                ds.root,
            )
        name = names[found[0]]
        key = image_key(file_name, split)
        target = key if key.split("/")[0] == name else f"{name}/{key}"
        targets.append((file_name, f"{split}/{target}" if several else target))
    for category_id, name in names.items():
        if "/" in name or "\\" in name or name in (".", "..") or export_part(name):
            raise DatasetError(
                "category-name",
                "",
                f"category {category_id}",
                f"{name!r} cannot be a class folder: it is no folder name, or one named like "
                "a split or a part of an export, which is not read as a class",
            )
    prefixes = [f"{split}/" for split in sorted(set(split_names))] if several else [""]
    with atomic_dir(dst, overwrite) as tmp:
        for prefix in prefixes:
            for name in names.values():
                (tmp / f"{prefix}{name}").mkdir(parents=True, exist_ok=True)
        link_images(ds, ((f, tmp / t) for f, t in targets))
    return dst
