"""The canonical annotation tables that every format reads into and writes from.

Three pandas tables, validated by pandera:

- ``images``: ``image_id`` (int), ``file_name`` (POSIX path relative to the dataset root),
  ``width``, ``height`` (pixels), ``sha256`` (hex content hash, "" when not yet known).
- ``annotations``: ``annotation_id``, ``image_id``, ``category_id`` (ints), ``x``, ``y``, ``w``,
  ``h`` (box in absolute pixels, top-left origin, floats), ``area`` (float), ``iscrowd`` (int 0/1),
  ``segmentation`` (None, a list of polygons ``[[x0, y0, x1, y1, ...], ...]`` in absolute pixels,
  or a COCO RLE dict). Formats may add extra columns (VOC's ``difficult``, ``truncated``,
  ``occluded``, ``pose``); writers that can hold them keep them.
- ``categories``: ``category_id`` (int, need not be contiguous), ``name`` (str, unique).

Readers also fill two optional text columns naming where a row came from, so that a finding can
point at the file and record to fix: ``source_file`` (relative to the dataset root: COCO's JSON
file for images and annotations, VOC's XML file, YOLO's label file) and, on annotations,
``source_record`` (YOLO's ``line 3``, VOC's ``object 2``; COCO's record is derived from
``annotation_id``). Tables built by hand may leave them out. Writers never write them.

N readers plus N writers go through these tables, never N*N converters.

Every reader sets ``Dataset.root`` to the folder it was given, so ``root / file_name`` is the
image. Images may carry an optional ``split`` column ("" for none: YOLO's ``images/<split>``,
COCO's ``instances_<split>.json``, VOC's ``ImageSets/Main/<split>.txt``). A writer places an
image at ``<its image folder>/[<split>/]<image_key(file_name, split)>``: the key is the file name
without a leading ``images/``, ``JPEGImages/`` or ``obj_<subset>_data/`` folder and without a
leading folder named like its split (before or after the image folder: ``images/train/``,
``train/images/``), so a dataset read from any layout lands at the same relative place again.

What the labels are (``task_of``): ``classify`` (one whole-image label per image, an image
folder), ``detect`` (boxes), ``segment`` (masks: polygons or RLE), ``pose`` (boxes whose
keypoints came with them) or ``obb`` (oriented boxes, kept as 4-point polygons). A reader that
knows sets ``Dataset.attrs["task"]``; otherwise masks make it ``segment`` and boxes ``detect``.
``save_tables`` keeps the task and layout beside the tables (``dataset.json``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from PIL import Image

from ml_assets.data.atomic import link_or_copy

IMAGE_COLUMNS = ["image_id", "file_name", "width", "height", "sha256"]
ANNOTATION_COLUMNS = [
    "annotation_id",
    "image_id",
    "category_id",
    "x",
    "y",
    "w",
    "h",
    "area",
    "iscrowd",
    "segmentation",
]
CATEGORY_COLUMNS = ["category_id", "name"]
SOURCE_FILE = "source_file"
SOURCE_RECORD = "source_record"
PROVENANCE = [SOURCE_FILE, SOURCE_RECORD]  # where a row came from; never written out


class ImageSchema(pa.DataFrameModel):
    image_id: int = pa.Field(unique=True, ge=0)
    file_name: str = pa.Field(unique=True, str_length={"min_value": 1})
    width: int = pa.Field(gt=0)
    height: int = pa.Field(gt=0)
    sha256: str

    class Config:
        strict = False
        coerce = True


class AnnotationSchema(pa.DataFrameModel):
    annotation_id: int = pa.Field(unique=True, ge=0)
    image_id: int = pa.Field(ge=0)
    category_id: int = pa.Field(ge=0)
    x: float = pa.Field(nullable=False)
    y: float = pa.Field(nullable=False)
    w: float = pa.Field(gt=0)
    h: float = pa.Field(gt=0)
    area: float = pa.Field(ge=0)
    iscrowd: int = pa.Field(isin=[0, 1])

    class Config:
        strict = False
        coerce = True


class CategorySchema(pa.DataFrameModel):
    category_id: int = pa.Field(unique=True, ge=0)
    name: str = pa.Field(unique=True, str_length={"min_value": 1})

    class Config:
        strict = False
        coerce = True


def empty_images() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": pd.Series(dtype="int64"),
            "file_name": pd.Series(dtype="object"),
            "width": pd.Series(dtype="int64"),
            "height": pd.Series(dtype="int64"),
            "sha256": pd.Series(dtype="object"),
        }
    )


def empty_annotations() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ["x", "y", "w", "h", "area"]})
    for c in ["annotation_id", "image_id", "category_id", "iscrowd"]:
        frame[c] = pd.Series(dtype="int64")
    frame["segmentation"] = pd.Series(dtype="object")
    return frame[ANNOTATION_COLUMNS]


def empty_categories() -> pd.DataFrame:
    return pd.DataFrame(
        {"category_id": pd.Series(dtype="int64"), "name": pd.Series(dtype="object")}
    )


@dataclass
class Dataset:
    """A labelled image dataset in canonical form; ``root`` is where ``file_name`` resolves."""

    images: pd.DataFrame = field(default_factory=empty_images)
    annotations: pd.DataFrame = field(default_factory=empty_annotations)
    categories: pd.DataFrame = field(default_factory=empty_categories)
    root: Path | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> Dataset:
        """Check the three tables against their schemas and their references to each other.

        Raises ``pandera.errors.SchemaErrors`` (all failures at once) or ``ValueError`` for a
        dangling reference, naming the offending ids.
        """
        images = ImageSchema.validate(self.images, lazy=True)
        annotations = AnnotationSchema.validate(self.annotations, lazy=True)
        categories = CategorySchema.validate(self.categories, lazy=True)
        missing_images = set(annotations["image_id"]) - set(images["image_id"])
        if missing_images:
            raise ValueError(
                f"annotations refer to image ids that do not exist: {sorted(missing_images)[:10]}"
            )
        unknown = set(annotations["category_id"]) - set(categories["category_id"])
        if unknown:
            raise ValueError(f"annotations refer to unknown category ids: {sorted(unknown)[:10]}")
        return Dataset(images, annotations, categories, self.root, dict(self.attrs))

    @property
    def category_names(self) -> dict[int, str]:
        return dict(zip(self.categories["category_id"], self.categories["name"], strict=True))

    def image_path(self, file_name: str) -> Path:
        if self.root is None:
            raise ValueError("this dataset has no root folder to resolve image paths against")
        return self.root / file_name


TASKS = ("classify", "detect", "segment", "pose", "obb")
DATASET_FILE = "dataset.json"  # beside the tables: what the labels are and where they came from


def has_masks(annotations: pd.DataFrame) -> bool:
    """Whether any annotation carries a segmentation (a polygon or an RLE mask)."""
    return bool(
        len(annotations) and annotations["segmentation"].map(lambda s: bool(s) and s == s).any()
    )


def task_of(ds: Dataset) -> str:
    """What the labels of ``ds`` are, one of :data:`TASKS` (see the module docstring)."""
    task = ds.attrs.get("task")
    if task:
        return task
    return "segment" if has_masks(ds.annotations) else "detect"


def save_tables(ds: Dataset, folder: Path) -> Path:
    """Write the three tables as Parquet into ``folder`` atomically (segmentation as JSON text),
    and ``dataset.json`` (task, layout) beside them."""
    import orjson

    from ml_assets.data.atomic import atomic_dir

    annotations = ds.annotations.copy()
    annotations["segmentation"] = [
        None if s is None or (isinstance(s, float) and s != s) else orjson.dumps(s).decode()
        for s in annotations["segmentation"]
    ]
    with atomic_dir(Path(folder), overwrite=True) as tmp:
        ds.images.to_parquet(tmp / "images.parquet", index=False)
        annotations.to_parquet(tmp / "annotations.parquet", index=False)
        ds.categories.to_parquet(tmp / "categories.parquet", index=False)
        about = {"task": task_of(ds), "layout": ds.attrs.get("layout", "")}
        (tmp / DATASET_FILE).write_bytes(orjson.dumps(about))
    return Path(folder)


TABLE_FILES = ("images.parquet", "annotations.parquet", "categories.parquet", DATASET_FILE)


def tables_digest(folder: Path) -> str:
    """A short digest of the tables ``save_tables`` wrote in ``folder``: equal tables give equal
    bytes, so the same digest (the ``annotations`` asset's data version)."""
    import hashlib

    digest = hashlib.sha256()
    for name in TABLE_FILES:
        path = Path(folder) / name
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:16]


def load_tables(folder: Path, root: Path | None = None) -> Dataset:
    """Read tables written by :func:`save_tables`; ``root`` is where image files resolve."""
    import orjson

    folder = Path(folder)
    if not (folder / "images.parquet").exists():
        raise FileNotFoundError(f"no annotation tables in {folder}")
    annotations = pd.read_parquet(folder / "annotations.parquet")
    annotations["segmentation"] = [
        None if s is None else orjson.loads(s) for s in annotations["segmentation"]
    ]
    about = folder / DATASET_FILE  # tables saved before it existed: task_of decides
    return Dataset(
        pd.read_parquet(folder / "images.parquet"),
        annotations,
        pd.read_parquet(folder / "categories.parquet"),
        root,
        orjson.loads(about.read_bytes()) if about.exists() else {},
    )


# --- helpers shared by the format modules -----------------------------------------------------

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"}
)
IMAGE_DIRS = ("images", "JPEGImages")


class DatasetError(ValueError):
    """A problem in a dataset's files: ``code`` is a short slug, ``file`` is relative to ``root``."""

    def __init__(
        self, code: str, file: str, record: str, message: str, root: Path | None = None
    ) -> None:
        self.code, self.file, self.record, self.message, self.root = (
            code,
            file,
            record,
            message,
            root,
        )
        where = str(root / file) if root is not None else file
        super().__init__(f"{where} [{record}]: {message}" if record else f"{where}: {message}")


@dataclass
class Issues:
    """Where readers send problems: raised at once (``collect=False``) or gathered for validation.

    Warnings never stop a reader; errors do unless collecting, in which case the reader skips the
    record at fault and goes on, so one pass reports every problem.
    """

    root: Path | None = None
    collect: bool = False
    errors: list[DatasetError] = field(default_factory=list)
    warnings: list[DatasetError] = field(default_factory=list)

    def error(self, code: str, file: str | Path, record: object, message: str) -> None:
        error = DatasetError(code, self.relative(file), str(record), message, self.root)
        if not self.collect:
            raise error
        self.errors.append(error)

    def warning(self, code: str, file: str | Path, record: object, message: str) -> None:
        self.warnings.append(
            DatasetError(code, self.relative(file), str(record), message, self.root)
        )

    def relative(self, file: str | Path) -> str:
        path = Path(file)
        if self.root is not None and path.is_absolute() and path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        return path.as_posix()


def is_inside(file_name: str) -> bool:
    """Whether a relative file name stays inside the dataset root (not absolute, no ``..``)."""
    path = file_name.replace("\\", "/")  # plain string tests: called for every image
    return bool(path) and not path.startswith("/") and ".." not in path.split("/")


def image_key(file_name: str, split: str = "") -> str:
    """The image's path below its format's image folder and split folder (see module docstring)."""
    parts = PurePosixPath(file_name).parts
    if split and len(parts) > 2 and parts[0] == split and parts[1] in IMAGE_DIRS:
        parts = parts[1:]  # Roboflow's <split>/images/
    if len(parts) > 1 and (parts[0] in IMAGE_DIRS or _is_darknet_folder(parts[0])):
        parts = parts[1:]
    if split and len(parts) > 1 and parts[0] == split:
        parts = parts[1:]
    return "/".join(parts)


def _is_darknet_folder(name: str) -> bool:
    """CVAT's YOLO 1.1 image folders: ``obj_<subset>_data``."""
    return name.startswith("obj_") and name.endswith("_data")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header only; raises OSError for an unreadable file."""
    with Image.open(path) as image:
        return image.size


def splits(images: pd.DataFrame) -> pd.Series:
    """The images' split names ("" where the table has none)."""
    if "split" not in images.columns:
        return pd.Series("", index=images.index, dtype="object")
    return images["split"].fillna("").astype(str)


def link_images(ds: Dataset, targets: Iterable[tuple[str, str | Path]]) -> None:
    """Hard-link (or copy) each image ``file_name`` of ``ds`` to its target path."""
    if ds.root is None:
        raise ValueError("this dataset has no root folder, so its images cannot be written")
    root = ds.root
    base = os.fspath(root)

    def link(pair: tuple[str, str | Path]) -> None:
        file_name, target = pair
        try:
            os.link(os.path.join(base, file_name), target)  # strings: no Path per image
        except FileNotFoundError:
            raise DatasetError(
                "image-missing", file_name, "", "image file not found", root
            ) from None
        except OSError:
            link_or_copy(root / file_name, Path(target))

    pairs = list(targets)
    _in_folders(link, pairs, [target for _, target in pairs])


def write_files(files: Iterable[tuple[str | Path, str | bytes]]) -> None:
    """Write many small files inside a fresh (temporary) folder, plainly, a few at a time."""

    def write(pair: tuple[str | Path, str | bytes]) -> None:
        path, data = pair
        view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
        # os.open/os.write: a file object per small file costs more than its system calls
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    pairs = list(files)
    _in_folders(write, pairs, [path for path, _ in pairs])


def _in_folders(action: Callable[[Any], None], items: list[Any], paths: list[str | Path]) -> None:
    """Create the parent folders of ``paths``, then apply ``action`` to the items on a few threads.

    Creating many small files is bound by system-call latency (the GIL is released there), so a
    few threads overlap it; the result does not depend on their order.
    """
    for folder in {os.path.dirname(path) for path in paths}:  # strings: cheaper than Path.parent
        os.makedirs(folder or ".", exist_ok=True)
    workers = 4  # one slice each: no future per item

    def run(start: int) -> None:
        for item in items[start::workers]:
            action(item)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, range(workers)))


Columns = Mapping[str, Sequence[Any]] | pd.DataFrame


def records_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """A frame from dicts; keys beyond ``columns`` become object columns with None where absent."""
    keys = dict.fromkeys([*columns, *(k for row in rows for k in row)])
    return pd.DataFrame(
        {
            k: pd.Series([row.get(k) for row in rows], dtype=None if k in columns else object)
            for k in keys
        }
    )


def _with_columns(
    columns: Columns, empty: pd.DataFrame, defaults: Mapping[str, Any]
) -> pd.DataFrame:
    """Add missing defaults, cast standard columns, put them first; copies only what changes."""
    frame = (
        columns if isinstance(columns, pd.DataFrame) else pd.DataFrame(dict(columns), copy=False)
    )
    missing = {name: value for name, value in defaults.items() if name not in frame.columns}
    if missing:
        frame = frame.assign(**missing)
    casts = {
        name: dtype
        for name, dtype in empty.dtypes.items()
        if dtype != object and frame[name].dtype != dtype  # noqa: E721
    }
    if casts:
        frame = frame.astype(casts)
    standard = list(empty.columns)
    order = standard + [c for c in frame.columns if c not in standard]
    return frame if list(frame.columns) == order else frame[order]


def images_from_columns(columns: Columns) -> pd.DataFrame:
    """An images table from column lists; ``sha256`` defaults to ""."""
    return _with_columns(columns, empty_images(), {"sha256": ""})


def annotations_from_columns(columns: Columns) -> pd.DataFrame:
    """An annotations table from column lists; ``area`` defaults to w*h, ``iscrowd`` to 0."""
    if "area" not in columns:
        area = np.asarray(columns["w"], dtype=np.float64) * np.asarray(
            columns["h"], dtype=np.float64
        )
        columns = (
            columns.assign(area=area)
            if isinstance(columns, pd.DataFrame)
            else {**columns, "area": area}
        )
    return _with_columns(columns, empty_annotations(), {"iscrowd": 0, "segmentation": None})


def categories_from_columns(columns: Columns) -> pd.DataFrame:
    return _with_columns(columns, empty_categories(), {})


def class_list(ds: Dataset) -> list[dict]:
    """Classes in category-id order: class index i of the model is ``classes[i]``."""
    cats = ds.categories.sort_values("category_id")
    return [
        {"id": int(c), "name": str(n)}
        for c, n in zip(cats["category_id"], cats["name"], strict=True)
    ]
