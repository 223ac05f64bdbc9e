"""COCO instances JSON to and from the canonical tables.

Layouts (``ROOT`` is the folder handed to the reader; it becomes ``Dataset.root``):

- ``ROOT/annotations.json`` with images under ``ROOT/images/``. COCO ``file_name`` is relative to
  ``ROOT/images`` (the COCO convention: relative to the image folder), so the canonical
  ``file_name`` is ``images/<COCO file_name>``. This is what we write for a dataset with at most
  one split.
- ``ROOT/annotations/instances_<split>.json`` (every such file is read; the images get that
  ``split``) with images under the first of ``ROOT/images/<split>/``, ``ROOT/<split>/`` or
  ``ROOT/images/`` that exists. This is what we write for a dataset with several splits, using
  ``images/<split>/``; it is also the layout of the COCO releases and of ultralytics' COCO copy.

Category ids are kept as they are (1..90 with gaps is fine). ``iscrowd`` is kept; polygon and RLE
segmentations are kept unchanged. Where an annotation has a segmentation but no usable box
(missing, not four numbers, or of zero size) the box is the mask's extent (pycocotools for RLE);
``Dataset.attrs["boxes_from_masks"]`` counts them. Keys outside the COCO core fields (``info``,
``licenses``, an image's ``license``, an annotation's VOC ``difficult``...) are tolerated; those of
images, annotations and categories travel as extra columns and are written back.

The reader streams the file with ijson (yajl2_c), three passes over the bytes (categories, images,
annotations), so memory grows with the tables and never with a parsed JSON tree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import ijson
import numpy as np
import orjson
import pandas as pd

from ml_assets.data.atomic import atomic_dir, write_bytes
from ml_assets.data.tables import (
    PROVENANCE,
    SOURCE_FILE,
    Dataset,
    Issues,
    annotations_from_columns,
    categories_from_columns,
    empty_annotations,
    empty_categories,
    empty_images,
    image_key,
    images_from_columns,
    is_inside,
    link_images,
    records_frame,
    splits,
)

ANNOTATION_FILE = "annotations.json"
UNASSIGNED = "unassigned"  # the file name of images without a split when other images have one
_IMAGE_KEYS = {"id": "image_id", "file_name": "file_name", "width": "width", "height": "height"}
_NAN_BOX = [math.nan] * 4
_ID_KEYS = ("id", "image_id", "category_id")
_CHUNK = 512  # annotation records held at a time: few live objects keep the garbage collector cheap
_ANNOTATION_KEYS = frozenset(
    {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
)


def coco_files(src: Path) -> list[tuple[Path, str, str]]:
    """The annotation files under ``src`` as (path, split, image folder relative to ``src``)."""
    src = Path(src)
    if (src / ANNOTATION_FILE).is_file():
        return [(src / ANNOTATION_FILE, "", "images")]
    found = []
    for path in sorted((src / "annotations").glob("instances_*.json")):
        split = path.stem.removeprefix("instances_")
        folders = [f"images/{split}", split, "images"]
        folder = next((f for f in folders if (src / f).is_dir()), folders[0])
        found.append((path, split, folder))
    return found


def read_coco(src: Path, issues: Issues | None = None) -> Dataset:
    """Read a COCO dataset folder (see the module docstring for the layouts)."""
    src = Path(src)
    issues = issues or Issues(root=src)
    files = coco_files(src)
    if not files:
        issues.error(
            "coco-missing", ".", "", f"no {ANNOTATION_FILE} or annotations/instances_*.json"
        )
    parts = [_read_file(src, path, split, folder, issues) for path, split, folder in files]
    ds = Dataset(root=src, attrs={"boxes_from_masks": sum(p[3] for p in parts)})
    if parts:
        ds.images, ds.annotations = (_concat([p[i] for p in parts]) for i in (0, 1))
    ds.categories = _merge_categories([p[2] for p in parts], issues)
    return ds


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _read_file(
    src: Path, path: Path, split: str, folder: str, issues: Issues
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    with open(path, "rb") as handle:
        start = handle.read(64).lstrip()
    if not start.startswith(b"{"):
        issues.error("json-malformed", path, "", "a COCO file is a JSON object")
        return empty_images(), empty_annotations(), empty_categories(), 0
    try:
        categories = _categories(_items(path, "categories"))
        images = _images(_items(path, "images"), split, folder, path, issues)
        annotations, from_masks = _annotations(_items(path, "annotations"), path, issues)
    except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError) as error:
        issues.error("json-malformed", path, "", f"malformed JSON: {error}")
        return empty_images(), empty_annotations(), empty_categories(), 0
    source = path.relative_to(src).as_posix()
    images[SOURCE_FILE] = source
    annotations[SOURCE_FILE] = source
    return images, annotations, categories, from_masks


def _items(path: Path, key: str) -> Iterator[Any]:
    with open(path, "rb") as handle:
        yield from ijson.items(handle, f"{key}.item", use_float=True)


def _categories(records: Iterable[Any]) -> pd.DataFrame:
    rows = [
        {"category_id": r.get("id"), **{k: v for k, v in r.items() if k != "id"}} for r in records
    ]
    return categories_from_columns(records_frame(rows, ["category_id", "name"]))


def _merge_categories(frames: list[pd.DataFrame], issues: Issues) -> pd.DataFrame:
    if not frames:
        return categories_from_columns({"category_id": [], "name": []})
    merged = pd.concat(frames, ignore_index=True)
    names = merged.groupby("category_id")["name"].nunique()
    for category_id in names[names > 1].index:
        issues.error(
            "category-conflict", ".", f"category {category_id}", "named differently in two files"
        )
    return merged.drop_duplicates("category_id").reset_index(drop=True)


def _images(
    records: Iterable[Any], split: str, folder: str, path: Path, issues: Issues
) -> pd.DataFrame:
    rows = []
    for n, record in enumerate(records):
        if not (
            isinstance(record, dict)
            and isinstance(record.get("id"), int)
            and isinstance(record.get("file_name"), str)
            and all(isinstance(record.get(k), int | float) for k in ("width", "height"))
        ):
            issues.error(
                "coco-field",
                path,
                f"images[{n}]",
                "needs integer id, width, height and a file_name",
            )
            continue
        row = {_IMAGE_KEYS.get(k, k): v for k, v in record.items()}
        name = record["file_name"]
        row["file_name"] = f"{folder}/{name}" if is_inside(name) else name
        row["split"] = split
        rows.append(row)
    return images_from_columns(records_frame(rows, [*_IMAGE_KEYS.values(), "split"]))


def _annotations(records: Iterable[Any], path: Path, issues: Issues) -> tuple[pd.DataFrame, int]:
    """Columns built a chunk of records at a time, with list comprehensions and numpy.

    Memory holds the columns (numbers in numpy arrays) and one chunk of parsed records, never a
    Python object per number of the whole table.
    """
    records = iter(records)
    chunks: list[dict[str, Any]] = []
    while chunk := list(islice(records, _CHUNK)):
        chunks.append(_annotation_chunk(chunk, _CHUNK * len(chunks), path, issues))
    if not chunks:
        return empty_annotations(), 0
    sizes = [len(c["annotation_id"]) for c in chunks]
    columns: dict[str, Any] = {}
    for key in dict.fromkeys(k for c in chunks for k in c):
        parts = [c.get(key, [None] * n) for c, n in zip(chunks, sizes, strict=True)]
        if isinstance(parts[0], np.ndarray):
            columns[key] = np.concatenate(parts)
        else:
            columns[key] = pd.Series([v for part in parts for v in part], dtype=object)
    xywh = columns.pop("bbox")
    from_masks = _boxes_from_masks(xywh, columns["segmentation"])
    area = columns["area"]
    columns["area"] = np.where(np.isnan(area), xywh[:, 2] * xywh[:, 3], area)
    columns.update(zip("xywh", xywh.T, strict=True))
    return annotations_from_columns(columns), from_masks


def _annotation_chunk(chunk: list[Any], start: int, path: Path, issues: Issues) -> dict[str, Any]:
    """The columns of ``chunk`` (records ``start``...); a record without integer ids is an error."""
    ids = [[a.get(k) if isinstance(a, dict) else None for a in chunk] for k in _ID_KEYS]
    valid = np.logical_and.reduce([_are_ints(column) for column in ids])
    for n in np.flatnonzero(~valid):
        issues.error(
            "coco-field",
            path,
            f"annotations[{start + n}]",
            "needs integer id, image_id and category_id",
        )
    if not valid.all():
        chunk = [a for a, keep in zip(chunk, valid, strict=True) if keep]
        ids = [[a[k] for a in chunk] for k in _ID_KEYS]
    columns: dict[str, Any] = {
        name: np.array(column, dtype=np.int64)
        for name, column in zip(("annotation_id", "image_id", "category_id"), ids, strict=True)
    }
    columns["bbox"] = _boxes([a.get("bbox") for a in chunk])
    columns["area"] = _numbers([a.get("area") for a in chunk])
    columns["iscrowd"] = np.array([1 if a.get("iscrowd") else 0 for a in chunk], dtype=np.int64)
    columns["segmentation"] = [a.get("segmentation") or None for a in chunk]
    for key in set().union(*chunk) - _ANNOTATION_KEYS:
        columns[key] = [a.get(key) for a in chunk]
    return columns


def _uniform(values: list[Any], kinds: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``values`` as the array numpy infers, when it is of one of ``kinds`` and ``shape``."""
    try:
        found = np.asarray(values)
    except ValueError:  # ragged
        return None
    return found if found.dtype.kind in kinds and found.shape == shape else None


def _are_ints(values: list[Any]) -> np.ndarray:
    """Which values are integers that fit 64 bits (numpy's inferred type answers for most)."""
    if _uniform(values, "ib", (len(values),)) is not None:
        return np.ones(len(values), dtype=bool)
    return np.array([isinstance(v, int) and -(2**63) <= v < 2**63 for v in values], dtype=bool)


def _numbers(values: list[Any]) -> np.ndarray:
    """Floats; NaN where a value is not a number."""
    found = _uniform(values, "ifb", (len(values),))
    if found is not None:
        return found.astype(np.float64)
    return np.array([v if isinstance(v, int | float) else math.nan for v in values])


def _boxes(values: list[Any]) -> np.ndarray:
    """An (n, 4) float array; a row of NaN unless the value is a list of four numbers."""
    found = _uniform(values, "ifb", (len(values), 4))
    if found is not None:
        return found.astype(np.float64)
    return np.array([_box(v) for v in values], dtype=np.float64).reshape(-1, 4)


def _box(box: Any) -> list[float]:
    """Four floats; NaN unless ``box`` is a list of four numbers."""
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
        return box
    return _NAN_BOX


def _boxes_from_masks(xywh: np.ndarray, segmentations: list[Any]) -> int:
    """Fill unusable boxes from their segmentation in place; return how many were filled."""
    with np.errstate(invalid="ignore"):
        unusable = ~((xywh[:, 2] > 0) & (xywh[:, 3] > 0))
    filled = 0
    for i in np.flatnonzero(unusable):
        box = mask_box(segmentations[i])
        if box is not None:
            xywh[i] = box
            filled += 1
    return filled


def mask_box(segmentation: Any) -> list[float] | None:
    """The [x, y, w, h] extent of a polygon list or COCO RLE; None when it holds no pixels."""
    if isinstance(segmentation, dict):
        from pycocotools import mask as mask_utils

        try:
            height, width = segmentation["size"]
            rle = mask_utils.frPyObjects(segmentation, height, width)
            box = [float(v) for v in mask_utils.toBbox(rle)]
        except (KeyError, TypeError, ValueError):
            return None
        return box if box[2] > 0 and box[3] > 0 else None
    if isinstance(segmentation, list):
        points = [p for polygon in segmentation if isinstance(polygon, list) for p in polygon]
        try:
            xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            return None
        if len(xy):
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
            if x1 > x0 and y1 > y0:
                return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    return None


def write_coco(ds: Dataset, dst: Path, overwrite: bool = False) -> Path:
    """Write ``ds`` as a COCO folder at ``dst`` atomically; images are hard-linked where possible."""
    dst = Path(dst)
    names = splits(ds.images)
    several = names.nunique() > 1
    with atomic_dir(dst, overwrite) as tmp:
        for split, images in ds.images.groupby(names, sort=True):
            split = str(split) or UNASSIGNED
            folder = f"images/{split}" if several else "images"
            keys = [image_key(f, split) for f in images["file_name"]]
            annotations = ds.annotations[ds.annotations["image_id"].isin(images["image_id"])]
            document = {
                "images": _image_records(images, keys),
                "annotations": _annotation_records(annotations),
                "categories": _records(ds.categories, {"category_id": "id"}),
            }
            target = f"annotations/instances_{split}.json" if several else ANNOTATION_FILE
            write_bytes(tmp / target, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))
            link_images(
                ds, ((f, tmp / folder / k) for f, k in zip(images["file_name"], keys, strict=True))
            )
    return dst


def _image_records(images: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    frame = images.drop(columns=["split", *PROVENANCE], errors="ignore").assign(file_name=keys)
    if (frame["sha256"].fillna("") == "").all():
        frame = frame.drop(columns=["sha256"])
    return _records(frame, {"image_id": "id"})


def _annotation_records(annotations: pd.DataFrame) -> list[dict[str, Any]]:
    frame = annotations.drop(columns=["x", "y", "w", "h", *PROVENANCE], errors="ignore")
    frame["bbox"] = annotations[["x", "y", "w", "h"]].to_numpy().tolist()
    return _records(frame, {"annotation_id": "id"})


def _records(frame: pd.DataFrame, rename: dict[str, str]) -> list[dict[str, Any]]:
    """Rows as dicts with JSON-native values; missing values (None, NaN) are left out."""
    columns = {rename.get(c, c): frame[c].tolist() for c in frame.columns}
    rows = []
    for values in zip(*columns.values(), strict=True):
        rows.append(
            {k: v for k, v in zip(columns, values, strict=True) if v is not None and v == v}
        )
    return rows
