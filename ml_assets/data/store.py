"""Content-addressed file store and dataset versions.

A dataset version is the manifest (relative path, sha256, size) of every file accepted from the
landing folder; its key is a short hash of that manifest, so the same data always gets the same
key and a new drop gets a new one. Files live once in ``objects/<sha[:2]>/<sha>`` (read-only) and
every version is a folder of hard links into it (``versions/<key>/files/``), which readers and
trainers use as an immutable snapshot. The landing folder is only ever read.

A hash cache keyed by (path, size, mtime) makes re-scanning unchanged data a stat-only walk;
for an S3 landing (``ml_assets.data.landing``) it is keyed by (object URL, size, ETag), and an
object is downloaded, hashed and stored in the same pass, once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from ml_assets.data.atomic import atomic_dir, link_or_copy, out_of_space, write_bytes

KEY_LENGTH = 12
CHUNK = 1 << 20
SAVE_EVERY = 5000


class LandingChangedError(RuntimeError):
    """A landing file no longer matches the manifest that named it."""


@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str
    size: int


def hash_file(path: Path | str) -> str:
    # os.read on a descriptor: without a buffered file object, a small file costs half as much
    # (benchmarks/store.py, store verify); hashlib releases the GIL while it hashes a chunk.
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def manifest_key(entries: list[Entry]) -> str:
    """The short content hash that names a version: same files, same key."""
    digest = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        digest.update(f"{e.path}\t{e.sha256}\t{e.size}\n".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def folders(root: Path) -> Iterator[tuple[str, list[os.DirEntry]]]:
    """(POSIX prefix relative to ``root``, the regular files in it) for every folder below
    ``root``, skipping hidden files and folders and following folder links (each real folder
    once). ``os.scandir`` keeps a walk to one stat per file; one step per folder, not per file,
    keeps a listing of 100,000 files close to the cost of those stats."""
    stack = [("", str(root))]
    seen = {os.path.realpath(root)}
    while stack:
        prefix, folder = stack.pop()
        files = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real in seen:
                        raise ValueError(f"{entry.path} links back to {real}: a loop in {root}")
                    seen.add(real)
                    stack.append((f"{prefix}{entry.name}/", entry.path))
                elif entry.is_file():
                    files.append(entry)
        yield prefix, files


def walk(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """(POSIX path relative to ``root``, directory entry) of every regular file below ``root``,
    as :func:`folders` finds them."""
    for prefix, files in folders(root):
        for entry in files:
            yield f"{prefix}{entry.name}", entry


def stat_walk(root: Path) -> list[tuple[str, int, int, int, int]]:
    """(relative path, size, mtime_ns, ctime_ns, inode) of every file below ``root``."""
    items = []
    for prefix, files in folders(root):
        for entry in files:
            st = entry.stat()
            items.append(
                (prefix + entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            )
    return items


class HashCache:
    """sha256 of files, remembered by (absolute path, size, mtime, ctime, inode); saved atomically.

    ctime cannot be set by tools that preserve mtime (``cp -p``, ``tar``, ``touch -r``), so a
    rewritten file is always hashed again. A file changed within ``RACY_NS`` of being hashed is
    not remembered (git's "racy" rule): a second write in the same clock tick could hide.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        if path and path.exists():
            self.entries = orjson.loads(path.read_bytes())
        self.dirty = False

    def sha256(self, file: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
        hit = self.entries.get(file)
        if (  # the warm path of every scan: compare field by field, build nothing
            hit is not None
            and hit[0] == size
            and hit[1] == mtime_ns
            and hit[2] == ctime_ns
            and hit[3] == inode
        ):
            return hit[4]
        sha = hash_file(Path(file))
        if time.time_ns() - max(mtime_ns, ctime_ns) > self.RACY_NS:
            self.entries[file] = [size, mtime_ns, ctime_ns, inode, sha]
            self.dirty = True
        return sha

    def get(self, name: str, stamp: list) -> str | None:
        """The sha256 remembered for ``name`` (an object URL) listed with ``stamp`` (its size
        and ETag), or None."""
        hit = self.entries.get(name)
        return hit[-1] if hit is not None and hit[:-1] == stamp else None

    def remember(self, name: str, stamp: list, sha256: str) -> None:
        self.entries[name] = [*stamp, sha256]
        self.dirty = True

    def save(self) -> None:
        if self.path and self.dirty:
            write_bytes(self.path, orjson.dumps(self.entries))
            self.dirty = False


def scan(root: Path, cache: HashCache | None = None) -> list[Entry]:
    """The manifest of every file under ``root``, sorted by relative path."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"landing folder {root} does not exist or is not a folder")
    return manifest_of(root, stat_walk(root), cache or HashCache(None))


def manifest_of(root: Path, items: list[tuple], cache: HashCache) -> list[Entry]:
    """The manifest of the files ``items`` (as :func:`stat_walk` lists them) under ``root``."""
    entries = []
    for path, size, mtime_ns, ctime_ns, inode in items:
        sha = cache.sha256(f"{root}/{path}", size, mtime_ns, ctime_ns, inode)
        entries.append(Entry(path, sha, size))
        if len(entries) % SAVE_EVERY == 0:
            cache.save()  # a scan cut short (a sensor tick's time limit) keeps its progress
    cache.save()
    return sorted(entries, key=lambda e: e.path)


Opener = Callable[[], BinaryIO]


def is_url(landing: Path | str) -> bool:
    return str(landing).startswith("s3://")


def open_source(source: Path | Opener) -> BinaryIO:
    return open(source, "rb") if isinstance(source, Path) else source()


@dataclass(frozen=True)
class IngestStats:
    files: int
    bytes: int
    new_objects: int
    reused_objects: int


class Store:
    """The content-addressed store and the dataset versions under one folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def cache(self) -> HashCache:
        return HashCache(self.root / "cache" / "hashes.json")

    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def version_dir(self, key: str) -> Path:
        return self.root / "versions" / key

    def files_dir(self, key: str) -> Path:
        """The read-only snapshot of version ``key``: the dataset as it landed (refused with
        :class:`VersionCollectedError` once ``ml-assets store gc`` collected the version)."""
        self.refuse_collected(key)
        return self.version_dir(key) / SNAPSHOT

    def manifest_path(self, key: str) -> Path:
        return self.version_dir(key) / "manifest.json"

    def register(self, landing: Path | str, entries: list[Entry] | None = None) -> str:
        """Record the manifest of ``landing`` as a version; return the version key.

        ``entries`` is a scan of ``landing`` the caller already made (for an ``s3://`` landing,
        ``ml_assets.data.landing`` makes it); without it, a local folder is scanned.
        """
        entries = scan(Path(landing), self.cache) if entries is None else entries
        if not entries:
            raise ValueError(f"landing folder {landing} holds no files")
        key = manifest_key(entries)
        if not self.manifest_path(key).exists():
            where = landing if is_url(landing) else str(Path(landing).resolve())
            doc = {"landing": where, "files": [e.__dict__ for e in entries]}
            write_bytes(self.manifest_path(key), orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        return key

    def manifest(self, key: str) -> list[Entry]:
        self.refuse_collected(key)
        path = self.manifest_path(key)
        if not path.exists():
            raise KeyError(f"dataset version {key} is not registered (no {path})")
        return [Entry(**e) for e in orjson.loads(path.read_bytes())["files"]]

    def landing_of(self, key: str) -> str:
        """Where version ``key`` was registered from: a folder or an ``s3://`` URL."""
        return orjson.loads(self.manifest_path(key).read_bytes())["landing"]

    def add(self, source: Path | Opener, expected: str | None = None) -> tuple[str, bool]:
        """Copy ``source`` (a file, or a function that opens a stream) into the store, hashing
        it on the way; return (sha256, whether a new object was written). With ``expected``, a
        different hash raises :class:`LandingChangedError` and stores nothing."""
        objects = self.root / "objects"
        objects.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=".put.", dir=objects)
        try:
            # The temporary file first: it is closed even when opening the source fails.
            with (
                out_of_space(objects, temporary=Path(tmp)),
                os.fdopen(fd, "wb") as dst,
                open_source(source) as src,
            ):
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            sha = digest.hexdigest()
            if expected is not None and sha != expected:
                raise LandingChangedError(
                    f"{source} changed after its version was registered "
                    f"(sha256 {sha[:12]}, manifest says {expected[:12]})"
                )
            target = self.object_path(sha)
            if target.exists():
                return sha, False
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return sha, True

    def put(self, source: Path | Opener, sha256: str) -> bool:
        """Copy ``source`` into the store unless its object exists; verify the hash on the way.

        Returns True when a new object was written.
        """
        if self.object_path(sha256).exists():
            return False
        return self.add(source, sha256)[1]

    def ingest(
        self, key: str, open_file: Callable[[str], Path | Opener] | None = None
    ) -> IngestStats:
        """Store every file of version ``key`` and build its snapshot folder of links.

        ``open_file(path)`` gives the file at relative ``path`` of the version's landing
        location: a local file, or a function that opens a stream (an S3 object, see
        ``ml_assets.data.landing``'s ``opener``). Only files missing from the store are read;
        without ``open_file``, they are read from the local folder the version was registered
        from. Objects of an ``s3://`` landing were stored when the version was registered.
        """
        entries = self.manifest(key)
        if open_file is None:
            landing = self.landing_of(key)
            if is_url(landing):
                raise ValueError(
                    f"dataset version {key} was registered from {landing}: pass open_file to "
                    "read its objects"
                )
            open_file = Path(landing).joinpath

        def missing() -> int:  # what is left to store, counted when the disk is full
            wanted = {e.sha256: e.size for e in entries}
            return sum(n for sha, n in wanted.items() if not self.object_path(sha).exists())

        with out_of_space(self.root / "objects", needs=missing):
            new = sum(self.put(open_file(e.path), e.sha256) for e in entries)
        files = self.files_dir(key)
        # Another run may build the same snapshot at the same time: either result is the same.
        with contextlib.suppress(FileExistsError), atomic_dir(files) as tmp:
            for e in entries:
                link_or_copy(self.object_path(e.sha256), tmp / e.path)
        return IngestStats(len(entries), sum(e.size for e in entries), new, len(entries) - new)

    def collected(self, key: str) -> dict | None:
        """The record ``ml-assets store gc`` left when it collected version ``key``, else None."""
        path = self.version_dir(key) / TOMBSTONE
        return orjson.loads(path.read_bytes()) if path.exists() else None

    def refuse_collected(self, key: str) -> None:
        """Raise :class:`VersionCollectedError` naming what was removed and when, if it was."""
        record = self.collected(key)
        if record is not None:
            raise VersionCollectedError(
                f"dataset version {key} was collected by `ml-assets store gc` at "
                f"{record['collected_at']} ({record['reason']}): removed "
                f"{', '.join(record['removed'])} and the objects no other version uses. To use "
                f"it again, delete {self.version_dir(key) / TOMBSTONE} and materialize "
                "raw_dataset for it: the files are copied again from its landing location, if "
                "they are still there"
            )


# The store over time (ml_assets.data.retention): a version's snapshot folder, and the record
# left in its folder when it was collected (its manifest stays, as the record of what it held).
SNAPSHOT = "files"
TOMBSTONE = "collected.json"


class VersionCollectedError(ValueError):
    """A dataset version whose files ``ml-assets store gc`` removed."""
