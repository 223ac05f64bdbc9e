"""Atomic writes: everything is written under a temporary name beside its target, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` for a writer that opens the file itself; on success
    it becomes ``path`` (readers see the old file or the whole new one), on failure it goes.

    ``torch.save`` is given a name, not an open file: into a Python file object, a Ctrl-C that
    lands mid-write is swallowed by torch's C++ writer and surfaces as an unrelated
    ``RuntimeError`` (``unexpected pos``); writing by name, the interrupt arrives afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(dst: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it becomes ``dst``, on failure it goes.

    Nothing appears at ``dst`` unless the block finishes. An existing ``dst`` is refused unless
    ``overwrite`` is set, in which case it is replaced only after the new folder is complete.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        if overwrite and dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _claim(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _claim(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst``; rename() refuses an existing non-empty folder, so when another
    writer got there first, it wins and this one fails with FileExistsError."""
    try:
        os.rename(tmp, dst)
    except OSError as err:
        if dst.exists():
            raise FileExistsError(f"{dst} appeared while it was being written") from err
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` where the filesystem allows it, else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
