"""Image-folder classification layout (``ROOT/<class>/<image>``, torchvision's ImageFolder).

Reading: every visible sub-folder of ``ROOT`` is a class (sorted by name, category ids 0..K-1,
empty folders included); every image below it (sub-folders too) becomes one image with one
whole-image annotation: the box ``(0, 0, width, height)`` of its class. Sizes come from the image
headers. ``file_name`` is ``<class>/<path below it>``.

Writing: each image goes to the folder of its class, at ``<class>/<key>`` (or at its key when
that already starts with the class folder). Classification needs one label per image, so an
image whose annotations name no class or more than one distinct class is refused with a
``DatasetError`` naming it; boxes are not kept. Category ids are not kept either: reading back
numbers the classes by name.
"""

from __future__ import annotations

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


def class_folders(src: Path) -> list[Path]:
    return sorted(p for p in Path(src).iterdir() if p.is_dir() and not p.name.startswith("."))


def read_imagefolder(src: Path, issues: Issues | None = None) -> Dataset:
    """Read ``ROOT/<class>/<image>`` as one whole-image annotation per image."""
    src = Path(src)
    issues = issues or Issues(root=src)
    folders = class_folders(src)
    rows: list[tuple[str, int, int, int]] = []
    for category_id, folder in enumerate(folders):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            file_name = path.relative_to(src).as_posix()
            try:
                width, height = image_size(path)
            except OSError as error:
                issues.error("image-unreadable", file_name, "", f"cannot read: {error}")
                continue
            rows.append((file_name, width, height, category_id))
    frame = pd.DataFrame(rows, columns=["file_name", "width", "height", "category_id"])
    ids = list(range(len(frame)))
    images = images_from_columns(
        {"image_id": ids, **{c: frame[c] for c in ["file_name", "width", "height"]}}
    )
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
    categories = categories_from_columns(
        {"category_id": list(range(len(folders))), "name": [f.name for f in folders]}
    )
    return Dataset(images, annotations, categories, root=src, attrs={"task": "classify"})


def write_imagefolder(ds: Dataset, dst: Path, overwrite: bool = False) -> Path:
    """Write each image into the folder of its single class (see the module docstring)."""
    dst = Path(dst)
    classes = ds.annotations.groupby("image_id")["category_id"].unique()
    names = ds.category_names
    targets = []
    for image_id, file_name, split in zip(
        ds.images["image_id"], ds.images["file_name"], splits(ds.images), strict=True
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
        targets.append((file_name, key if key.split("/")[0] == name else f"{name}/{key}"))
    for category_id, name in names.items():
        if "/" in name or "\\" in name or name in (".", ".."):
            raise DatasetError(
                "category-name", "", f"category {category_id}", f"{name!r} cannot be a folder name"
            )
    with atomic_dir(dst, overwrite) as tmp:
        for name in names.values():
            (tmp / name).mkdir(parents=True, exist_ok=True)
        link_images(ds, ((f, tmp / t) for f, t in targets))
    return dst
