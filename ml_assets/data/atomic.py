"""Atomic writes: everything is written under a temporary name beside its target, then renamed.

A write that runs out of space (ENOSPC) or quota (EDQUOT) fails with :class:`OutOfSpaceError`,
one line naming the target, what it needs and what is free, after its temporary is removed: a
full disk leaves the old file or folder, never a part of the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# Writers in C++ lose errno (torch.save by name raises RuntimeError "unexpected pos"): their
# error counts as out of space when, with their temporary still there, less than this is free.
NEARLY_FULL = 1 << 20

Needs = int | Callable[[], int | None] | None


class OutOfSpaceError(OSError):
    """A write that found its filesystem full or its quota spent; its text is one line."""

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def out_of_space(place: Path, needs: Needs = None, temporary: Path | None = None) -> Iterator[None]:
    """Turn running out of space or quota inside the block into :class:`OutOfSpaceError` naming
    ``place`` and the bytes it ``needs`` (a number, or a function that counts them when the
    error comes); ``temporary`` (a file or folder) goes on any error. An error from an inner
    write passes unchanged unless this level names a size: the outermost level that knows what
    the whole write needs speaks."""
    try:
        yield
    except BaseException as err:
        code = full(err, place, temporary)  # while the temporary still fills the disk
        # Free once the temporary is gone (torch may hold its file open until the error is let go).
        free = free_bytes(place) + held(temporary) if code is not None else 0
        if temporary is not None:
            remove(temporary)
        if code is None or (isinstance(err, OutOfSpaceError) and needs is None):
            raise
        wanted = needs() if callable(needs) else needs
        sizes = [f"needs about {megabytes(wanted)}"] if wanted is not None else []
        if code == errno.ENOSPC:
            sizes.append(f"free {megabytes(free)}")
        told = f" ({'; '.join(sizes)})" if sizes else ""
        cure = "free space" if code == errno.ENOSPC else "free space or raise the quota"
        message = f"{FULL[code]} writing {place}{told}: {cure} and run again"
        raise OutOfSpaceError(code, message) from err


def full(err: BaseException, place: Path, temporary: Path | None) -> int | None:
    """ENOSPC or EDQUOT when ``err`` means a write ran out of space or quota, else None: an
    OSError by its errno, another error by its text (safetensors keeps the system's message) or,
    while a ``temporary`` is being written, by a filesystem left nearly full."""
    if isinstance(err, OSError):
        return err.errno if err.errno in FULL else _by_text(err)
    if not isinstance(err, Exception):  # Ctrl-C, exit: never a full disk
        return None
    code = _by_text(err)
    if code is None and temporary is not None and os.path.lexists(temporary):
        code = errno.ENOSPC if free_bytes(place) < NEARLY_FULL else None
    return code


def _by_text(err: BaseException) -> int | None:
    # shutil.copytree gathers each file's error as text in one shutil.Error (errno None).
    text = str(err)
    return next((code for code in FULL if os.strerror(code) in text), None)


def free_bytes(place: Path) -> int:
    """Bytes free to this user on the filesystem that holds (or will hold) ``place``."""
    folder = Path(place)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def megabytes(n: int) -> str:
    """0.03 MB, 4.2 MB, 1,234 MB."""
    mb = n / 1e6
    return f"{mb:,.{2 if mb < 1 else 1 if mb < 10 else 0}f} MB"


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def held(path: Path | None) -> int:
    """The bytes that removing ``path`` (a file or a folder) gives back: blocks of files with no
    other link (a snapshot's links to store objects free nothing)."""
    if path is None or not os.path.lexists(path):
        return 0
    files = [path] if not path.is_dir() else [Path(p, n) for p, _, ns in os.walk(path) for n in ns]
    total = 0
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(file)
            total += st.st_blocks * 512 if st.st_nlink == 1 else 0
    return total


def folder_bytes(folder: Path) -> int:
    """The bytes of the files below ``folder``: what copying it needs."""
    return sum(
        os.path.getsize(os.path.join(parent, name))
        for parent, _, names in os.walk(folder)
        for name in names
    )


@contextlib.contextmanager
def atomic_path(path: Path, needs: Needs = None) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` for a writer that opens the file itself; on success
    it becomes ``path`` (readers see the old file or the whole new one), on failure it goes.

    ``torch.save`` is given a name, not an open file: into a Python file object, a Ctrl-C that
    lands mid-write is swallowed by torch's C++ writer and surfaces as an unrelated
    ``RuntimeError`` (``unexpected pos``); writing by name, the interrupt arrives afterwards.
    ``needs`` (bytes) goes into the message of a full disk (:func:`out_of_space`)."""
    path = Path(path)
    with out_of_space(path, needs):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    with out_of_space(path, needs, temporary=Path(tmp)):
        yield Path(tmp)
        os.replace(tmp, path)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_path(path, needs=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(dst: Path, overwrite: bool = False, needs: Needs = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it becomes ``dst``, on failure it goes.

    Nothing appears at ``dst`` unless the block finishes. An existing ``dst`` is refused unless
    ``overwrite`` is set, in which case it is replaced only after the new folder is complete.
    ``needs`` (bytes) goes into the message of a full disk (:func:`out_of_space`).
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite to replace it)")
    with out_of_space(dst, needs):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    with out_of_space(dst, needs, temporary=tmp):
        yield tmp
        if overwrite and dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _claim(tmp, dst)


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
