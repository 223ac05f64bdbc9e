"""COCO instances JSON to and from the canonical tables.

Layouts (``ROOT`` is the folder handed to the reader; it becomes ``Dataset.root``), tried in
this order, the first that matches wins (``coco_layout``):

- ``coco``: ``ROOT/annotations.json`` with images under ``ROOT/images/``. COCO ``file_name`` is
  relative to ``ROOT/images`` (the COCO convention: relative to the image folder), so the
  canonical ``file_name`` is ``images/<COCO file_name>``. This is what we write for a dataset
  with at most one split.
- ``coco-splits``: ``ROOT/annotations/instances_<split>.json`` (every such file is read; the
  images get that ``split``) with images under the first of ``ROOT/images/<split>/``,
  ``ROOT/<split>/`` or ``ROOT/images/`` that exists. This is what we write for a dataset with
  several splits, using ``images/<split>/``; it is also the layout of the COCO releases and of
  ultralytics' COCO copy. ``cvat-coco`` is the same with one file, ``instances_default.json``
  (CVAT's "COCO 1.0", images in ``images/default/`` or ``images/``).
- ``roboflow-coco``: ``ROOT/<split>/_annotations.coco.json`` with the images beside it.
- ``label-studio-coco``: ``ROOT/result.json`` (a JSON object; Label Studio's task export, a list,
  is not COCO) whose ``file_name`` is relative to ``ROOT`` (``images/<name>``).

Ids: COCO tools write integer ids, strings of digits (CVAT: ``"id": "1"``) or other strings.
Ids are kept as they are when they are integers and no two files share one; otherwise a table's
ids are numbered 0..n-1 and the ids as found are kept as JSON text in a ``coco_id`` column, which
``write_coco`` writes back. Image and annotation ids are scoped per file (two split files may
both start at 0); category ids are shared by the files. A string of an integer's digits and that
integer are the same id (``"7"`` refers to image ``7``). Two records of one file with the same id
are an error naming both (``images[3]``, ``images[7]``); an annotation that refers to an image or
category that does not exist is an error naming it (for numbered ids; kept ids are left to
``validate``).

Roboflow's placeholder category is recognised by what it is, in any layout (its split files are
often moved into ``coco-splits``): id 0, used by no annotation, and named as the supercategory of
every other category (Roboflow names it after the project). It is dropped, and
``Dataset.attrs["placeholder_categories"]`` names it ([] when there is none).

Category ids are otherwise kept as they are (1..90 with gaps is fine). ``iscrowd`` is kept; polygon
and RLE segmentations are kept unchanged. Where an annotation has a segmentation but no usable box
(missing, not four numbers, or of zero size) the box is the mask's extent (pycocotools for RLE);
``Dataset.attrs["boxes_from_masks"]`` counts them. Keys outside the COCO core fields (``info``,
``licenses``, an image's ``license``, an annotation's VOC ``difficult``...) are tolerated; those of
images, annotations and categories travel as extra columns and are written back.

The reader streams the file: one numpy scan of the raw bytes finds the top-level ``images``,
``annotations`` and ``categories`` arrays and places to cut them between records, then orjson
parses them a piece of about ``_PIECE`` bytes at a time (and the rest of the file, with those
arrays left empty, once to check it), so memory grows with the tables and never with a parsed
JSON tree or the whole file.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ml_assets.data.atomic import atomic_dir, write_bytes
from ml_assets.data.tables import (
    PROVENANCE,
    SOURCE_FILE,
    SOURCE_RECORD,
    Dataset,
    Issues,
    annotations_from_columns,
    categories_from_columns,
    empty_annotations,
    image_key,
    images_from_columns,
    is_inside,
    link_images,
    records_frame,
    splits,
)

ANNOTATION_FILE = "annotations.json"
ROBOFLOW_FILE = "_annotations.coco.json"
LABEL_STUDIO_FILE = "result.json"
ORIGINAL_ID = "coco_id"  # the id as found (JSON text), where the reader had to number ids
UNASSIGNED = "unassigned"  # the file name of images without a split when other images have one
_IMAGE_KEYS = {"id": "image_id", "file_name": "file_name", "width": "width", "height": "height"}
_NAN_BOX = [math.nan] * 4
_ID_KEYS = ("id", "image_id", "category_id")
_ID_COLUMNS = ("annotation_id", "image_id", "category_id")
_CHUNK = 512  # annotation records held at a time: few live objects keep the garbage collector cheap
_ANNOTATION_KEYS = frozenset(
    {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
)
_ARRAYS = ("categories", "images", "annotations")
_SCAN = 1 << 20  # bytes scanned at a time
_PIECE = 1 << 20  # array bytes parsed at a time (cut between records)
# byte -> 1 "[", 2 "{", 3 "]", 4 "}", 5 quote, 6 backslash, 0 anything else
_BYTE_KIND = np.zeros(256, dtype=np.int8)
_BYTE_KIND[list(b'[{]}"\\')] = np.arange(1, 7)


def coco_layout(src: Path) -> tuple[str, list[tuple[Path, str, str]]] | None:
    """(layout name, annotation files) of the COCO layout in ``src``: the first that matches, in
    the order of ``ml_assets.data.layouts.LAYOUTS``.

    Each file comes as (path, split, folder its ``file_name`` is relative to, "" for ``src``).
    """
    src = Path(src)
    if (src / ANNOTATION_FILE).is_file():
        return "coco", [(src / ANNOTATION_FILE, "", "images")]
    instances = sorted((src / "annotations").glob("instances_*.json"))
    if instances:
        found = []
        for path in instances:
            split = path.stem.removeprefix("instances_")
            folders = [f"images/{split}", split, "images"]
            found.append(
                (path, split, next((f for f in folders if (src / f).is_dir()), folders[0]))
            )
        cvat = [path.name for path in instances] == ["instances_default.json"]
        return ("cvat-coco" if cvat else "coco-splits"), found
    roboflow = sorted([*src.glob(ROBOFLOW_FILE), *src.glob(f"*/{ROBOFLOW_FILE}")])
    if roboflow:
        return "roboflow-coco", [
            (p, "" if p.parent == src else p.parent.name, p.parent.relative_to(src).as_posix())
            for p in roboflow
        ]
    if is_json_object(src / LABEL_STUDIO_FILE):
        return "label-studio-coco", [(src / LABEL_STUDIO_FILE, "", "")]
    return None


def is_json_object(path: Path) -> bool:
    """Whether ``path`` is a file whose first non-blank byte opens a JSON object."""
    try:
        with open(path, "rb") as handle:
            return handle.read(64).lstrip().startswith(b"{")
    except OSError:
        return False


def read_coco(src: Path, issues: Issues | None = None) -> Dataset:
    """Read a COCO dataset folder (see the module docstring for the layouts)."""
    src = Path(src)
    issues = issues or Issues(root=src)
    name, files = coco_layout(src) or ("", [])
    if not files:
        issues.error(
            "coco-missing",
            ".",
            "",
            f"no {ANNOTATION_FILE}, annotations/instances_*.json, <split>/{ROBOFLOW_FILE} "
            f"or {LABEL_STUDIO_FILE}",
        )
    with _gc_paused():
        parts = [_read_file(src, path, split, folder, issues) for path, split, folder in files]
    ds = _assemble(parts, issues)
    ds.root = src
    ds.attrs.update(layout=name, boxes_from_masks=sum(p.from_masks for p in parts))
    ds.categories, ds.attrs["placeholder_categories"] = _without_placeholder(
        ds.categories, ds.annotations
    )
    return ds


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing allocates millions of objects that make no
    cycles (JSON has none), and each collection would walk every live object of the process.
    Freed objects still go at once by reference counting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


@dataclass
class _Part:
    """What one annotation file holds, its ids as found (any JSON integer or string)."""

    source: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: dict[str, Any] = field(default_factory=dict)
    categories: list[dict[str, Any]] = field(default_factory=list)
    from_masks: int = 0


def _read_file(src: Path, path: Path, split: str, folder: str, issues: Issues) -> _Part:
    source = path.relative_to(src).as_posix()
    if not is_json_object(path):
        issues.error("json-malformed", path, "", "a COCO file is a JSON object")
        return _Part(source)
    try:
        arrays, cuts = _scan(path)
        _check_rest(path, arrays)
        items = {key: _items(path, arrays.get(key, []), cuts) for key in _ARRAYS}
        categories = _categories(items["categories"], path, issues)
        images = _images(items["images"], split, folder, path, issues)
        annotations, from_masks = _annotations(items["annotations"], path, issues)
    except (orjson.JSONDecodeError, _MalformedJSON) as error:
        issues.error("json-malformed", path, "", f"malformed JSON: {error}")
        return _Part(source)
    return _Part(source, images, annotations, categories, from_masks)


class _MalformedJSON(ValueError):
    pass


def _scan(path: Path) -> tuple[dict[str, list[tuple[int, int]]], np.ndarray]:
    """One pass over the bytes: the contents ``(start, end)`` of each top-level array of a key in
    ``_ARRAYS`` (several when a key repeats), and the offsets just after a record of any
    top-level array, about ``_PIECE`` bytes apart, where an array can be cut into pieces.

    A byte is structure unless it is inside a string: a string is between two unescaped quotes,
    and a quote is escaped when an unescaped backslash is right before it, so only backslashes
    (rare) are walked one by one; brackets then give depths with a cumulative sum. What the scan
    does not check (the rest of the syntax) orjson does, as every byte is parsed once after.
    Raises ``_MalformedJSON`` when the brackets do not balance.
    """
    arrays: dict[str, list[tuple[int, int]]] = {}
    cuts: list[np.ndarray] = []
    depth, quotes_so_far, escaped_first, last_block = 0, 0, False, -1
    last_quotes = np.zeros(0, dtype=np.int64)  # the last two quotes seen, for a key
    open_key, open_start = None, 0
    with open(path, "rb") as handle:
        offset = 0
        while chunk := handle.read(_SCAN):
            data = np.frombuffer(chunk, dtype=np.uint8)
            folded = data | 0x20  # "[" and "]" fold onto "{" and "}"
            special = (folded == 0x7B) | (folded == 0x7D) | (data == 0x22) | (data == 0x5C)
            where = np.flatnonzero(special)
            kind = _BYTE_KIND[data[where]]
            quotes, escaped_first = _unescaped_quotes(where, kind, escaped_first, len(chunk))
            brackets, bracket_kind = where[kind <= 4], kind[kind <= 4]
            outside = (np.searchsorted(quotes, brackets) + quotes_so_far) % 2 == 0
            brackets, bracket_kind = brackets[outside], bracket_kind[outside]
            opening = bracket_kind <= 2
            after = depth + np.cumsum(np.where(opening, 1, -1))
            if len(after) and after.min() < 0:
                raise _MalformedJSON(f"unbalanced brackets near byte {offset + len(chunk)}")
            quotes = np.concatenate([last_quotes, quotes + offset])
            # top-level arrays open from depth 1 and close back to it
            for i in np.flatnonzero(((after == 2) & opening) | ((after == 1) & ~opening)).tolist():
                position = offset + int(brackets[i])
                if opening[i]:
                    open_key = None
                    if bracket_kind[i] == 1:
                        n = int(np.searchsorted(quotes, position))
                        if n >= 2 and quotes[n - 1] - quotes[n - 2] < 64:
                            start, end = int(quotes[n - 2]), int(quotes[n - 1]) + 1
                            open_key = orjson.loads(os.pread(handle.fileno(), end - start, start))
                    open_start = position + 1
                elif open_key in _ARRAYS:
                    arrays.setdefault(open_key, []).append((open_start, position))
                    open_key = None
            # records of a top-level array end where a bracket closes back to depth 2
            ends = offset + brackets[(after == 2) & ~opening].astype(np.int64) + 1
            blocks = ends // _PIECE
            keep = blocks != np.concatenate([[last_block], blocks[:-1]])
            cuts.append(ends[keep])
            last_block = int(blocks[-1]) if len(blocks) else last_block
            depth = int(after[-1]) if len(after) else depth
            quotes_so_far += len(quotes) - len(last_quotes)
            last_quotes = quotes[-2:]
            offset += len(chunk)
    if depth != 0 or quotes_so_far % 2:
        raise _MalformedJSON("the file ends inside a string, object or array")
    return arrays, np.concatenate([np.zeros(0, dtype=np.int64), *cuts])


def _unescaped_quotes(
    where: np.ndarray, kind: np.ndarray, escaped_first: bool, size: int
) -> tuple[np.ndarray, bool]:
    """The positions of a chunk's unescaped quotes, from the positions ``where`` of its special
    bytes and their ``kind``; and whether the next chunk's first byte is escaped (a backslash
    ends this one). ``escaped_first``: this chunk's first byte is escaped."""
    escaped = [0] if escaped_first else []  # positions (in the chunk) of escaped bytes
    last = 0 if escaped_first else -1
    for position in where[kind == 6].tolist():
        if position != last:  # an escaped backslash escapes nothing
            last = position + 1
            escaped.append(last)
    escapes_next = last == size
    if escapes_next:
        escaped.pop()
    quotes = where[kind == 5]
    if escaped:
        quotes = np.setdiff1d(quotes, escaped, assume_unique=True)
    return quotes, escapes_next


def _items(path: Path, ranges: list[tuple[int, int]], cuts: np.ndarray) -> Iterator[Any]:
    """The records of the arrays whose contents are at ``ranges``, parsed a piece at a time."""
    with open(path, "rb") as handle:
        for start, end in ranges:
            inner = cuts[(cuts > start) & (cuts < end)].tolist()
            for a, b in zip([start, *inner], [*inner, end], strict=True):
                handle.seek(a)
                piece = handle.read(b - a).strip()
                if a != start and piece:  # a piece after a cut starts with a comma
                    if not piece.startswith(b",") or not piece[1:].strip():
                        raise _MalformedJSON(f"expected a comma and a record at byte {a}")
                    piece = piece[1:]
                yield from orjson.loads(b"[" + piece + b"]")


def _check_rest(path: Path, arrays: dict[str, list[tuple[int, int]]]) -> None:
    """Parse the file with the arrays found by ``_scan`` left empty (they are parsed apart)."""
    ranges = sorted(r for found in arrays.values() for r in found)
    parts = []
    with open(path, "rb") as handle:
        for start, end in zip(
            [0] + [e for _, e in ranges], [s for s, _ in ranges] + [None], strict=True
        ):
            handle.seek(start)
            parts.append(handle.read(-1 if end is None else end - start))
    orjson.loads(b"".join(parts))


def _categories(records: Iterable[Any], path: Path, issues: Issues) -> list[dict[str, Any]]:
    rows = []
    for n, record in enumerate(records):
        if not (isinstance(record, dict) and is_id(record.get("id"))):
            issues.error("coco-field", path, f"categories[{n}]", "needs an integer or string id")
            continue
        rows.append({"category_id": record["id"], **{k: v for k, v in record.items() if k != "id"}})
    return rows


def _images(
    records: Iterable[Any], split: str, folder: str, path: Path, issues: Issues
) -> list[dict[str, Any]]:
    rows, positions = [], []
    for n, record in enumerate(records):
        if not (
            isinstance(record, dict)
            and is_id(record.get("id"))
            and isinstance(record.get("file_name"), str)
            and all(isinstance(record.get(k), int | float) for k in ("width", "height"))
        ):
            issues.error(
                "coco-field",
                path,
                f"images[{n}]",
                "needs an id (integer or string), width, height and a file_name",
            )
            continue
        row = {_IMAGE_KEYS.get(k, k): v for k, v in record.items()}
        name = record["file_name"]
        row["file_name"] = f"{folder}/{name}" if folder and is_inside(name) else name
        row["split"] = split
        rows.append(row)
        positions.append(n)
    keep = _unique_ids([r["image_id"] for r in rows], positions, "images", path, issues)
    return rows if keep is None else [r for r, k in zip(rows, keep, strict=True) if k]


def is_id(value: Any) -> bool:
    """Whether ``value`` is an id COCO tools accept in the wild: an integer or a non-empty string."""
    return isinstance(value, int | str) and not isinstance(value, bool) and value != ""


def _key(value: Any) -> Any:
    """The id ``value`` compared as: a string of an integer's digits is that integer ("7" is 7)."""
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            return value
        return number if str(number) == value else value
    return value


def _unique_ids(
    ids: Any, positions: Any, array: str, path: Path, issues: Issues
) -> np.ndarray | None:
    """Which records to keep: a record whose id an earlier record of the file has is an error
    naming both records. None when every id is unique (the common case, checked by hashing)."""
    keys = pd.Series(ids if _int_array(ids) else [_key(v) for v in ids], dtype=None)
    repeated = keys.duplicated().to_numpy()
    if not repeated.any():
        return None
    first: dict[Any, int] = {}
    for key, position, again in zip(keys.tolist(), positions, repeated.tolist(), strict=True):
        if not again:
            first.setdefault(key, position)
            continue
        issues.error(
            f"{array.removesuffix('s')}-id-duplicate",
            path,
            f"{array}[{position}]",
            f"id {orjson.dumps(key).decode()} is also the id of {array}[{first[key]}]",
        )
    return ~repeated


def _int_array(values: Any) -> bool:
    return isinstance(values, np.ndarray) and values.dtype.kind == "i"


def _annotations(records: Iterable[Any], path: Path, issues: Issues) -> tuple[dict[str, Any], int]:
    """Columns built a chunk of records at a time, with list comprehensions and numpy.

    Memory holds the columns (numbers in numpy arrays) and one chunk of parsed records, never a
    Python object per number of the whole table. Id columns are int64 arrays when every id is an
    integer, else object arrays of the ids as found.
    """
    records = iter(records)
    chunks: list[dict[str, Any]] = []
    while chunk := list(islice(records, _CHUNK)):
        chunks.append(_annotation_chunk(chunk, _CHUNK * len(chunks), path, issues))
    if not chunks:
        columns = {c: empty_annotations()[c].to_numpy() for c in _ID_COLUMNS}
        return {**columns, "x": [], "y": [], "w": [], "h": []}, 0
    sizes = [len(c["annotation_id"]) for c in chunks]
    columns: dict[str, Any] = {}
    for key in dict.fromkeys(k for c in chunks for k in c):
        # popped: the chunks let go of each column as it is joined, so it is never held twice
        parts = [c.pop(key, [None] * n) for c, n in zip(chunks, sizes, strict=True)]
        if isinstance(parts[0], np.ndarray):
            columns[key] = np.concatenate(parts)
        else:
            columns[key] = pd.Series([v for part in parts for v in part], dtype=object)
    positions = columns.pop("position")
    keep = _unique_ids(columns["annotation_id"], positions, "annotations", path, issues)
    if keep is not None:
        columns = _take(columns, keep)
    xywh = columns.pop("bbox")
    from_masks = _boxes_from_masks(xywh, columns["segmentation"])
    area = columns["area"]
    columns["area"] = np.where(np.isnan(area), xywh[:, 2] * xywh[:, 3], area)
    columns.update(zip("xywh", xywh.T, strict=True))
    return columns, from_masks


def _take(columns: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """The rows of every column where ``keep`` is true, with a fresh index."""

    def take(values: Any) -> Any:
        if isinstance(values, np.ndarray):
            return values[keep]
        if isinstance(values, pd.Series):
            return values[keep].reset_index(drop=True)
        return [v for v, k in zip(values, keep.tolist(), strict=True) if k]

    return {k: take(v) for k, v in columns.items()}


def _annotation_chunk(chunk: list[Any], start: int, path: Path, issues: Issues) -> dict[str, Any]:
    """The columns of ``chunk`` (records ``start``...); a record without usable ids is an error."""
    ids = [[a.get(k) if isinstance(a, dict) else None for a in chunk] for k in _ID_KEYS]
    found = [_uniform(column, "i", (len(chunk),)) for column in ids]
    valid = np.ones(len(chunk), dtype=bool)
    for column, array in zip(ids, found, strict=True):
        if array is None:  # not all integers: strings (and junk) take the per-record path
            valid &= np.array([is_id(v) for v in column], dtype=bool)
    for n in np.flatnonzero(~valid):
        issues.error(
            "coco-field",
            path,
            f"annotations[{start + n}]",
            "needs an id, image_id and category_id (integers or strings)",
        )
    if not valid.all():
        chunk = [a for a, keep in zip(chunk, valid, strict=True) if keep]
        ids = [[a[k] for a in chunk] for k in _ID_KEYS]
        found = [_uniform(column, "i", (len(chunk),)) for column in ids]
    columns: dict[str, Any] = {
        name: array if array is not None else np.array(column, dtype=object)
        for name, column, array in zip(_ID_COLUMNS, ids, found, strict=True)
    }
    columns["position"] = start + np.flatnonzero(valid)
    columns["bbox"] = _boxes([a.get("bbox") for a in chunk])
    columns["area"] = _numbers([a.get("area") for a in chunk])
    columns["iscrowd"] = np.array([1 if a.get("iscrowd") else 0 for a in chunk], dtype=np.int64)
    columns["segmentation"] = [a.get("segmentation") or None for a in chunk]
    for key in set().union(*chunk) - _ANNOTATION_KEYS:
        columns[key] = [a.get(key) for a in chunk]
    return columns


# --- ids: scoped per file, mapped one-to-one to integers ----------------------------------------


def _assemble(parts: list[_Part], issues: Issues) -> Dataset:
    """The canonical tables of all files, with integer ids.

    Ids are kept as they are when they are integers and no two files share one (the common case:
    no work per record). Otherwise each table's ids are numbered 0..n-1 over the files in order,
    and the ids as found go into a ``coco_id`` column (JSON text), which the writer writes back.
    Image and annotation ids are scoped per file (two split files may both start at 0);
    category ids are shared by the files.
    """
    categories, category_index = _number_categories(parts, issues)
    renumber_images = _must_number([[r["image_id"] for r in p.images] for p in parts])
    renumber_annotations = _must_number([p.annotations.get("annotation_id", []) for p in parts])
    image_base = annotation_base = 0
    images, annotations = [], []
    for part in parts:
        rows = part.images
        if not rows and not len(part.annotations.get("annotation_id", [])):
            continue
        image_keys = pd.Index([_key(r["image_id"]) for r in rows], dtype=object)
        if renumber_images:
            for n, row in enumerate(rows):
                row[ORIGINAL_ID] = _json(row["image_id"])
                row["image_id"] = image_base + n
                row[SOURCE_RECORD] = f"image {row['coco_id']}"
        frame = images_from_columns(records_frame(rows, [*_IMAGE_KEYS.values(), "split"]))
        frame[SOURCE_FILE] = part.source  # in place: assign would copy the table
        images.append(frame)
        image_index = image_keys if renumber_images else None
        columns, keep = _resolve(part, image_index, image_base, category_index, issues)
        if renumber_annotations:
            original = columns["annotation_id"]
            columns[ORIGINAL_ID] = [_json(v) for v in original]
            columns[SOURCE_RECORD] = [f"annotation {v}" for v in columns[ORIGINAL_ID]]
            columns["annotation_id"] = annotation_base + np.arange(len(original))
        if not keep.all():
            columns = _take(columns, keep)
        frame = annotations_from_columns(columns)
        frame[SOURCE_FILE] = part.source
        annotations.append(frame)
        image_base += len(rows)
        annotation_base += len(keep)
    ds = Dataset(categories=categories)
    if images:
        ds.images = _concat(images)
        ds.annotations = _concat(annotations)
    return ds


def _resolve(
    part: _Part,
    image_index: pd.Index | None,
    image_base: int,
    category_index: pd.Index | None,
    issues: Issues,
) -> tuple[dict[str, Any], np.ndarray]:
    """The file's annotation columns with their image and category ids as the tables number
    them (see :func:`_references`), and which to keep: a reference to an image or category that
    does not exist is an error, and its annotation is left out."""
    columns = part.annotations
    keep = np.ones(len(columns["annotation_id"]), dtype=bool)
    image_ids = _references(columns["image_id"], image_index, image_base)
    category_ids = _references(columns["category_id"], category_index, 0)
    for name, found, code in (
        ("image", image_ids, "annotation-orphan"),
        ("category", category_ids, "unknown-category"),
    ):
        for n in np.flatnonzero(found < 0):
            original = _json(columns[f"{name}_id"][n])
            issues.error(
                code,
                part.source,
                _annotation_record(columns, n),
                f"{name} {original} does not exist",
            )
        keep &= found >= 0
    return {**columns, "image_id": image_ids, "category_id": category_ids}, keep


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _annotation_record(columns: dict[str, Any], n: int) -> str:
    return f"annotation {_json(columns['annotation_id'][n])}"


def _must_number(ids: list[Any]) -> bool:
    """Whether ids must be numbered: some are not integers, or two files share one."""
    if not all(_int_array(np.asarray(column)) or not len(column) for column in ids):
        return True
    together = np.concatenate([np.asarray(c, dtype=np.int64) for c in ids] or [[]])
    return len(ids) > 1 and len(np.unique(together)) < len(together)


def _references(values: Any, index: pd.Index | None, base: int) -> np.ndarray:
    """Our ids for the ids ``values`` refer to; -1 where none. ``index`` holds the keys of the
    numbered records (position + ``base`` is our id), or is None when ids were kept."""
    if index is not None:
        keys = values if _int_array(values) else np.array([_key(v) for v in values], dtype=object)
        found = index.get_indexer(keys)
        return np.where(found < 0, -1, found + base)
    if _int_array(values):
        return values
    keys = [_key(v) for v in values]
    return np.array([k if isinstance(k, int) and 0 <= k < 2**63 else -1 for k in keys], np.int64)


def _number_categories(parts: list[_Part], issues: Issues) -> tuple[pd.DataFrame, pd.Index | None]:
    """Categories of all files merged by id, and the index of their id keys when numbered."""
    rows = [row for part in parts for row in part.categories]
    if not rows:
        return categories_from_columns({"category_id": [], "name": []}), None
    keys = [_key(row["category_id"]) for row in rows]
    frame = records_frame(rows, ["category_id", "name"]).assign(key=pd.Series(keys, dtype=object))
    names = frame.groupby("key", sort=False)["name"].nunique()
    for key in names[names > 1].index:
        issues.error(
            "category-conflict", ".", f"category {_json(key)}", "named differently in two files"
        )
    frame = frame.drop_duplicates("key").reset_index(drop=True)
    if all(type(v) is int and 0 <= v < 2**63 for v in frame["category_id"]):
        return categories_from_columns(frame.drop(columns="key")), None
    index = pd.Index(frame["key"], dtype=object)
    frame[ORIGINAL_ID] = [_json(v) for v in frame["category_id"]]
    frame["category_id"] = np.arange(len(frame))
    return categories_from_columns(frame.drop(columns="key")), index


def _without_placeholder(
    categories: pd.DataFrame, annotations: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """``categories`` without Roboflow's placeholder (module docstring), and its name if found."""
    if "supercategory" not in categories.columns or len(categories) < 2:
        return categories, []
    at = np.flatnonzero(categories["category_id"].to_numpy() == 0)
    if len(at) != 1 or (annotations["category_id"] == 0).any():
        return categories, []
    name = categories["name"].iloc[at[0]]
    others = categories.drop(index=categories.index[at[0]])
    if not (others["supercategory"] == name).all():
        return categories, []
    return others.reset_index(drop=True), [str(name)]


def _uniform(values: list[Any], kinds: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``values`` as the array numpy infers, when it is of one of ``kinds`` and ``shape``."""
    try:
        found = np.asarray(values)
    except ValueError:  # ragged
        return None
    return found if found.dtype.kind in kinds and found.shape == shape else None


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


def polygons_rle(polygons: list, height: int, width: int) -> dict:
    """Polygons (flat x, y lists in an image's pixels) filled as one COCO RLE ``{"size",
    "counts"}``; a polygon of fewer than 3 points has no area (none at all: an empty mask)."""
    from pycocotools import mask as mask_utils

    polygons = [list(p) for p in polygons if len(p) >= 6]
    if polygons:
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    else:
        rle = mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
    return {"size": [height, width], "counts": rle["counts"].decode()}


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
    """Write ``ds`` as a COCO folder at ``dst`` atomically; images are hard-linked where possible.

    Ids found in a ``coco_id`` column (the reader keeps them when it numbered ids) are written
    back, per file, where every record of the table has one and no two are the same.
    """
    dst = Path(dst)
    names = splits(ds.images)
    several = names.nunique() > 1
    category_ids = original_ids(ds.categories, "category_id")
    with atomic_dir(dst, overwrite) as tmp:
        for split, images in ds.images.groupby(names, sort=True):
            split = str(split) or UNASSIGNED
            folder = f"images/{split}" if several else "images"
            keys = [image_key(f, split) for f in images["file_name"]]
            annotations = ds.annotations[ds.annotations["image_id"].isin(images["image_id"])]
            ids = {
                "image_id": original_ids(images, "image_id"),
                "annotation_id": original_ids(annotations, "annotation_id"),
                "category_id": category_ids,
            }
            document = {
                "images": _image_records(images, keys, ids),
                "annotations": _annotation_records(annotations, ids),
                "categories": _records(_with_ids(ds.categories, ids), {"category_id": "id"}),
            }
            target = f"annotations/instances_{split}.json" if several else ANNOTATION_FILE
            write_bytes(tmp / target, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))
            link_images(
                ds, ((f, tmp / folder / k) for f, k in zip(images["file_name"], keys, strict=True))
            )
    return dst


def original_ids(frame: pd.DataFrame, column: str) -> dict[int, Any] | None:
    """{our id: the id as found} from the ``coco_id`` column, or None where it cannot be used
    (absent, missing for a row, or naming two rows alike)."""
    if ORIGINAL_ID not in frame.columns:
        return None
    found = frame[ORIGINAL_ID]
    if found.isna().any():
        return None
    values = [orjson.loads(v) for v in found]
    if pd.Series([_key(v) for v in values], dtype=object).duplicated().any():
        return None
    return dict(zip(frame[column].tolist(), values, strict=True))


def _with_ids(frame: pd.DataFrame, ids: dict[str, dict[int, Any] | None]) -> pd.DataFrame:
    """``frame`` without ``coco_id``, its id columns replaced by the original ids where known."""
    frame = frame.drop(columns=[ORIGINAL_ID, "split", *PROVENANCE], errors="ignore")
    changes = {c: frame[c].map(found) for c, found in ids.items() if found and c in frame}
    return frame.assign(**changes) if changes else frame


def _image_records(
    images: pd.DataFrame, keys: list[str], ids: dict[str, dict[int, Any] | None]
) -> list[dict[str, Any]]:
    frame = _with_ids(images, ids).assign(file_name=keys)
    if (frame["sha256"].fillna("") == "").all():
        frame = frame.drop(columns=["sha256"])
    return _records(frame, {"image_id": "id"})


def _annotation_records(
    annotations: pd.DataFrame, ids: dict[str, dict[int, Any] | None]
) -> list[dict[str, Any]]:
    frame = _with_ids(annotations.drop(columns=["x", "y", "w", "h"]), ids)
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
