"""Read, write and convert datasets in every format we know, through the canonical tables.

``convert`` is ``read_dataset`` then ``write_dataset``: N readers plus N writers. The source
folder is only ever read. Writes are atomic: a failed conversion leaves nothing at the target.
"""

from __future__ import annotations

from collections.abc import Callable
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
WRITERS: dict[str, Callable[[Dataset, Path, bool], Path]] = {
    "coco": coco.write_coco,
    "voc": voc.write_voc,
    "yolo": yolo.write_yolo,
    "imagefolder": imagefolder.write_imagefolder,
}


def detect_format(src: Path) -> str:
    """The format of the dataset folder ``src``: "coco", "voc", "yolo" or "imagefolder"."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    if coco.coco_files(src):
        return "coco"
    if (src / "Annotations").is_dir():
        return "voc"
    if yolo.find_yaml(src) is not None:
        return "yolo"
    if imagefolder.class_folders(src):
        return "imagefolder"
    raise ValueError(
        f"{src}: no known dataset format (expected annotations.json or annotations/instances_*.json "
        "for COCO, Annotations/ for VOC, data.yaml for YOLO, or <class>/<image> folders)"
    )


def resolve_format(src: Path, fmt: str) -> str:
    if fmt == "auto":
        return detect_format(src)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt


def read_dataset(src: Path, fmt: str = "auto", strict: bool = True) -> Dataset:
    """Read ``src``; raises ``DatasetError`` (a ``ValueError``) naming the file and record at fault.

    Unreadable files always raise. With ``strict`` the tables must also pass ``validate_dataset``
    without errors; without it, questionable records are kept for a later validation to report
    in full (as the ``annotations_findings`` asset check does).
    """
    from ml_assets.data.validate import validate_dataset

    src = Path(src)
    ds = READERS[resolve_format(src, fmt)](src, Issues(root=src))
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
