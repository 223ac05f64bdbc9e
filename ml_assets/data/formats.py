"""Read, write and convert datasets in every format we know, through the canonical tables.

``convert`` is ``read_dataset`` then ``write_dataset``: N readers plus N writers. The source
folder is only ever read. Writes are atomic: a failed conversion leaves nothing at the target.
"""

from __future__ import annotations

from pathlib import Path

from ml_assets.data import coco, imagefolder, voc, yolo
from ml_assets.data.layouts import (
    FORMATS,
    READERS,
    detect_format,
    detect_layout,
    read_source,
)
from ml_assets.data.tables import Dataset, DatasetError, Issues
from ml_assets.data.validate import validate_dataset

__all__ = [
    "FORMATS",
    "READERS",
    "WRITERS",
    "convert",
    "detect_format",
    "detect_layout",
    "read_dataset",
    "write_dataset",
]
WRITERS = {
    "coco": coco.write_coco,
    "voc": voc.write_voc,
    "yolo": yolo.write_yolo,
    "imagefolder": imagefolder.write_imagefolder,
}


def read_dataset(src: Path, fmt: str = "auto", strict: bool = True) -> Dataset:
    """Read ``src`` in its detected layout (see ``layouts``; ``fmt`` chooses the format).

    Raises ``DatasetError`` (a ``ValueError``) naming the file and record at fault. Unreadable
    files always raise. With ``strict`` the tables must also pass ``validate_dataset`` without
    errors; without it, questionable records are kept for a later validation to report in full
    (as the ``annotations_findings`` asset check does). Warnings are in ``attrs["warnings"]``.
    """
    src = Path(src)
    ds = read_source(src, fmt, Issues(root=src))
    for finding in validate_dataset(ds) if strict else []:
        if finding.severity == "error":
            raise DatasetError(finding.code, finding.file, finding.record, finding.message, src)
    return ds


def write_dataset(ds: Dataset, dst: Path, fmt: str, overwrite: bool = False) -> Path:
    """Write ``ds`` at ``dst`` in ``fmt``; refuses an existing ``dst`` unless ``overwrite``."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite to replace it)")
    return WRITERS[fmt](ds, dst, overwrite)


def convert(src: Path, dst: Path, to: str, from_: str = "auto", overwrite: bool = False) -> Dataset:
    """Convert the dataset at ``src`` into format ``to`` at ``dst``; returns the dataset read.

    ``src`` is never written: a ``dst`` inside ``src`` (or containing it) is refused.
    """
    src, dst = Path(src), Path(dst)
    source, target = src.resolve(), dst.resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise ValueError(f"{dst} overlaps the source {src}; the source folder is read-only")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite to replace it)")
    ds = read_dataset(src, from_)
    write_dataset(ds, dst, to, overwrite)
    return ds
