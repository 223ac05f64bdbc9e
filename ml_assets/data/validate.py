"""Dataset validation: findings instead of exceptions, on raw files or on the canonical tables.

``validate_source`` reads a dataset folder with the format's reader in collecting mode, so a
malformed JSON, XML or YAML file, a malformed label line or a record missing its fields becomes a
finding and the rest is still checked; then it runs ``validate_dataset`` with the image files.
``validate_dataset`` checks the tables alone (cheap enough for an asset check), and the image
files too with ``check_files=True``.

Codes (severity): ``format-unknown`` (no layout, or several, or an image folder whose layout is
refused, or several dataset YAML files: see ``layouts``), ``not-a-class`` (a class folder that
holds an export or a dataset: see ``imagefolder``), ``json-malformed``,
``xml-malformed``, ``yaml-malformed``, ``label-malformed``, ``coco-missing``, ``coco-field``,
``xml-field``, ``yaml-missing``, ``yaml-field``, ``images-missing``, ``category-conflict``, and
COCO's ``image-id-duplicate`` / ``annotation-id-duplicate`` naming both records (error, from the
readers); ``label-orphan`` (warning: a label file without an image); ``split-missing`` (warning: a
split the yaml names is not in the folder); ``yaml-path`` (warning: the yaml's ``path`` is not a
folder here); ``image-id-duplicate``,
``file-name-duplicate``, ``annotation-id-duplicate``, ``category-duplicate``, ``image-size-invalid``,
``path-escape`` (absolute or ``..``), ``annotation-orphan`` (its image does not exist),
``unknown-category``, ``box-nan``, ``box-size`` (zero or negative), ``box-outside`` (no overlap
with the image): errors; ``box-overflow`` (crosses the image border): warning; with the files:
``image-missing``, ``image-unreadable`` (also truncated), ``image-size-mismatch``: errors;
``image-duplicate-content`` (same sha256 under two names): warning.

Each finding names the file to fix and the record in it: for an image or annotation record, the
file the reader took it from (``annotations.json`` + ``annotation 17``, ``Annotations/x.xml`` +
``object 2``, ``labels/train/x.txt`` + ``line 3``; see ``source_file`` in ``tables``), else (tables
built by hand, YOLO images, the image files themselves) the image file and ``image <id>`` or
``annotation <id>``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ml_assets.data.layouts import detect_layout, read_source
from ml_assets.data.tables import (
    SOURCE_FILE,
    SOURCE_RECORD,
    Dataset,
    DatasetError,
    Issues,
    is_inside,
)

FIELDS = ["severity", "code", "file", "record", "message"]


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    code: str  # short slug, see the module docstring
    file: str  # path relative to the dataset root
    record: str  # image id, annotation id or line number, as text
    message: str


def findings_frame(findings: Iterable[Finding]) -> pd.DataFrame:
    """One row per finding, columns severity, code, file, record, message."""
    return pd.DataFrame([asdict(f) for f in findings], columns=FIELDS)


def validate_source(src: Path, fmt: str = "auto") -> list[Finding]:
    """Every problem found in the dataset folder ``src``, read in its detected layout."""
    src = Path(src)
    issues = Issues(root=src, collect=True)
    try:
        fmt = detect_layout(src, fmt).format
    except (ValueError, FileNotFoundError) as error:
        return [Finding("error", "format-unknown", ".", "", str(error))]
    ds = read_source(src, fmt, issues)
    findings = [_finding("error", e) for e in issues.errors]
    findings += [_finding("warning", e) for e in issues.warnings]
    return findings + validate_dataset(ds, check_files=True)


def _finding(severity: str, error: DatasetError) -> Finding:
    return Finding(severity, error.code, error.file, error.record, error.message)


def validate_dataset(ds: Dataset, check_files: bool = False) -> list[Finding]:
    """Problems in the canonical tables; with ``check_files``, in the image files under ``root``."""
    findings = _image_findings(ds.images) + _category_findings(ds.categories)
    findings += _annotation_findings(ds)
    if check_files and ds.root is not None:
        findings += _file_findings(ds.images, ds.root)
    return findings


def _rows(
    frame: pd.DataFrame,
    mask: pd.Series | np.ndarray,
    severity: str,
    code: str,
    message: str,
    record: str,
) -> list[Finding]:
    """One finding per selected row; ``message`` and ``record`` are formatted with the row.

    The finding names the row's ``source_file`` and ``source_record`` where the reader filled
    them (the file and record to fix), else the image file and ``record``.
    """
    return [
        Finding(
            severity,
            code,
            _text(row.get(SOURCE_FILE)) or _text(row.get("file_name")),
            _text(row.get(SOURCE_RECORD)) or record.format(**row),
            message.format(**row),
        )
        for row in frame[np.asarray(mask, dtype=bool)].to_dict("records")
    ]


def _image_findings(images: pd.DataFrame) -> list[Finding]:
    findings = _rows(
        images,
        images["image_id"].duplicated(keep="first"),
        "error",
        "image-id-duplicate",
        "image id {image_id} is used twice (again for {file_name})",
        "image {image_id}",
    )
    findings += _rows(
        images,
        images["file_name"].duplicated(keep="first"),
        "error",
        "file-name-duplicate",
        "file name {file_name} is listed twice",
        "image {image_id}",
    )
    sizes = pd.to_numeric(images["width"], errors="coerce").gt(0) & pd.to_numeric(
        images["height"], errors="coerce"
    ).gt(0)
    findings += _rows(
        images,
        ~sizes,
        "error",
        "image-size-invalid",
        "width {width} and height {height} must be positive",
        "image {image_id}",
    )
    escapes = ~images["file_name"].map(lambda f: isinstance(f, str) and is_inside(f)).astype(bool)
    findings += _rows(
        images,
        escapes,
        "error",
        "path-escape",
        "file name {file_name} escapes the dataset folder (absolute or '..')",
        "image {image_id}",
    )
    return findings


def _category_findings(categories: pd.DataFrame) -> list[Finding]:
    duplicated = categories["category_id"].duplicated() | categories["name"].duplicated()
    return _rows(
        categories,
        duplicated,
        "error",
        "category-duplicate",
        "category id or name {name!r} is used twice",
        "category {category_id}",
    )


def _annotation_findings(ds: Dataset) -> list[Finding]:
    images = ds.images.drop_duplicates("image_id").set_index("image_id")
    ann = ds.annotations

    def flagged(
        mask: pd.Series | np.ndarray, severity: str, code: str, message: str
    ) -> list[Finding]:
        rows = ann[np.asarray(mask, dtype=bool)]
        rows = rows.assign(
            **{c: rows["image_id"].map(images[c]) for c in ("file_name", "width", "height")}
        )
        return _rows(
            rows,
            np.ones(len(rows), dtype=bool),
            severity,
            code,
            message,
            "annotation {annotation_id}",
        )

    findings = flagged(
        ann["annotation_id"].duplicated(),
        "error",
        "annotation-id-duplicate",
        "annotation id {annotation_id} is used twice",
    )
    orphan = ~ann["image_id"].isin(images.index)
    findings += flagged(orphan, "error", "annotation-orphan", "image {image_id} does not exist")
    unknown = ~ann["category_id"].isin(ds.categories["category_id"])
    findings += flagged(
        unknown, "error", "unknown-category", "category {category_id} does not exist"
    )
    x, y, w, h = (pd.to_numeric(ann[c], errors="coerce").to_numpy(dtype=np.float64) for c in "xywh")
    nan = np.isnan(x) | np.isnan(y) | np.isnan(w) | np.isnan(h) | np.isinf(x + y + w + h)
    findings += flagged(nan, "error", "box-nan", "box is not finite: {x}, {y}, {w}, {h}")
    with np.errstate(invalid="ignore"):
        size = ~nan & ((w <= 0) | (h <= 0))
        width = ann["image_id"].map(images["width"]).to_numpy(dtype=np.float64)
        height = ann["image_id"].map(images["height"]).to_numpy(dtype=np.float64)
        known = ~nan & ~size & ~orphan.to_numpy()
        tolerance = 1e-6 * np.maximum(width, height)
        outside = known & ((x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0))
        overflow = (
            known
            & ~outside
            & (
                (x < -tolerance)
                | (y < -tolerance)
                | (x + w > width + tolerance)
                | (y + h > height + tolerance)
            )
        )
    findings += flagged(size, "error", "box-size", "box has zero or negative size: w={w}, h={h}")
    box, image = "box ({x}, {y}, {w}, {h})", "the {width}x{height} image {file_name}"
    findings += flagged(outside, "error", "box-outside", f"{box} lies outside {image}")
    findings += flagged(overflow, "warning", "box-overflow", f"{box} crosses the border of {image}")
    return findings


def _file_findings(images: pd.DataFrame, root: Path) -> list[Finding]:
    rows = images[
        images["file_name"].map(lambda f: isinstance(f, str) and is_inside(f)).astype(bool)
    ]
    rows = rows.to_dict("records")
    with ThreadPoolExecutor(max_workers=4) as pool:
        checked = list(pool.map(lambda row: _check_file(root, row), rows))
    findings = [f for found, _ in checked for f in found]
    by_hash = pd.DataFrame(
        {
            "sha256": [digest for _, digest in checked],
            "file_name": [r["file_name"] for r in rows],
            "image_id": [r["image_id"] for r in rows],
        }
    )
    by_hash = by_hash[by_hash["sha256"] != ""]
    first = by_hash.drop_duplicates("sha256").set_index("sha256")["file_name"]
    copies = by_hash.assign(first=by_hash["sha256"].map(first))
    findings += _rows(
        copies,
        by_hash["sha256"].duplicated().to_numpy(),
        "warning",
        "image-duplicate-content",
        "same content as {first}",
        "image {image_id}",
    )
    return findings


def _check_file(root: Path, row: dict) -> tuple[list[Finding], str]:
    """Findings for one image file and its sha256 ("" when it cannot be read)."""
    name, record = row["file_name"], f"image {row['image_id']}"
    try:
        data = (root / name).read_bytes()
    except OSError as error:
        return [
            Finding(
                "error", "image-missing", name, record, f"cannot read the file: {error.strerror}"
            )
        ], ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return [
            Finding(
                "error", "image-unreadable", name, record, f"unreadable or truncated image: {error}"
            )
        ], digest
    if size != (row["width"], row["height"]):
        message = (
            f"the file is {size[0]}x{size[1]}, the annotation says {row['width']}x{row['height']}"
        )
        return [Finding("error", "image-size-mismatch", name, record, message)], digest
    return [], digest


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
