"""The landing location: a local folder or an ``s3://bucket/prefix``, listed the same way.

Which datasets it holds (one rule for both):

- The landing root **is one dataset** when it looks like an export: it has an annotation file at
  its top (any ``*.json``, ``*.yaml``, ``*.xml``, ``classes.txt``, ``obj.data``...),
  a top-level folder named like a part or split of an export (``images``, ``labels``,
  ``annotations``, ``Annotations``, ``JPEGImages``, ``train``, ``val``...), or no folder at all.
  This is how the demo and older setups drop data straight into the landing root.
- Otherwise **every visible top-level folder is a dataset of its own**, named after the folder
  (what ``ml-assets ingest PATH --name NAME`` writes). Stray files beside them are ignored and
  named in the sensor's skip reason. An image-folder (classification) set therefore lands in a
  folder of its own: dropped into the root, its class folders would read as datasets.

Hidden names (a leading dot) are never part of a dataset: ``ingest`` writes beside the target
under a hidden name and renames it (locally), or marks the dataset as being written with a hidden
``.ml-assets-writing`` object until its upload ends (on S3, which cannot rename a folder).

A listing is a list of items, plain tuples (relative path, size, *stamp): the stamp is the stat
data of a local file (mtime, ctime, inode), or the ETag of an S3 object. Two equal listings in a
row mean a dataset settled; only then is its manifest made (local files hashed through the
store's hash cache; S3 objects downloaded, hashed and stored in one pass, each (URL, size, ETag)
once).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ml_assets.data.store import (
    Entry,
    HashCache,
    Store,
    is_url,
    manifest_of,
    stat_walk,
    walk,
)

LANDING_ENV = "ML_ASSETS_LANDING"
WRITING = ".ml-assets-writing"
DOWNLOADS = 8


Item = tuple  # (path relative to the dataset folder, size, *what changes with the content)


@dataclass
class Drop:
    """One dataset in the landing location, as one listing saw it."""

    name: str  # the top-level folder; "" when the landing root is the dataset
    url: str  # its folder or s3:// URL
    items: list[Item] = field(default_factory=list)
    writing: bool = False  # `ml-assets ingest` is uploading it (S3)

    @property
    def label(self) -> str:
        return self.name or "the landing root"

    def fingerprint(self) -> str:
        """A short hash of the listing: equal on two ticks means the dataset settled."""
        return hashlib.sha256(orjson.dumps(sorted(self.items))).hexdigest()[:16]


@dataclass
class Listing:
    drops: list[Drop]
    ignored: list[str]  # top-level files beside dataset folders


def is_single(files: set[str], folders: set[str]) -> bool:
    """The module's rule: is the landing root itself one dataset? It is when it has no folder or
    shows the signs of an export that an image folder's classes never show (the image-folder
    reader's own rule, imported here: it pulls pandas, which ``ml-assets ingest`` does not need)."""
    from ml_assets.data.imagefolder import export_signs

    return not folders or bool(export_signs(files, folders))


def split(url: str, items: list[Item], writing: set[str]) -> Listing:
    """Group a listing of the landing root into its datasets by the module's rule."""
    top = {i[0].split("/", 1)[0]: "/" in i[0] for i in items}
    folders = {name for name, nested in top.items() if nested}
    files = set(top) - folders
    if is_single(files, folders):
        return Listing([Drop("", url, items, "" in writing)], [])
    groups: dict[str, list[Item]] = {name: [] for name in sorted(folders)}
    for i in items:
        name, _, rest = i[0].partition("/")
        if rest:
            groups[name].append((rest, *i[1:]))
    drops = [Drop(n, f"{url.rstrip('/')}/{n}", g, n in writing) for n, g in groups.items()]
    return Listing(drops, sorted(files))


class LocalFolder:
    """A landing folder on a local (or mounted) file system."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def listing(self) -> Listing:
        """One stat per file; the top level decides the datasets (:func:`split`)."""
        return split(self.url, stat_walk(self.root), set())

    def manifest(self, drop: Drop, store: Store, cache: HashCache) -> list[Entry]:
        """Hash the files the listing saw, through the hash cache (no second walk)."""
        return manifest_of(Path(drop.url), drop.items, cache)

    def opener(self, path: str) -> Path:
        """The file at ``path`` below the folder (what ``Store.ingest`` reads)."""
        return self.root / path

    def has(self, name: str) -> bool:
        return (self.root / name).exists()

    def write(self, src: Path, name: str, replace: bool) -> None:
        """Copy the folder ``src`` to ``<root>/<name>`` under a hidden name, then rename it."""
        from ml_assets.data.atomic import atomic_dir

        def needs() -> int:  # what the copy takes, counted when the disk is full
            return sum(entry.stat().st_size for _, entry in walk(src))

        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.root / name, overwrite=replace, needs=needs) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))


class S3Opener:
    """Opens one S3 object for reading; its text is the object's URL (never a credential)."""

    def __init__(self, folder: S3Folder, path: str):
        self.folder, self.path = folder, path

    def __call__(self):
        with s3_errors(f"reading {self}"):
            obj = self.folder.client.get_object(
                Bucket=self.folder.bucket, Key=self.folder.key(self.path)
            )
        return contextlib.closing(obj["Body"])

    def __str__(self) -> str:
        return f"s3://{self.folder.bucket}/{self.folder.key(self.path)}"


class S3Folder:
    """A landing prefix in an S3 bucket (AWS, MinIO, any S3 API), read through a boto3 client."""

    def __init__(self, bucket: str, prefix: str, client_factory: Callable[[], Any]):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._factory = client_factory
        self._client = None
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_url(cls, url: str, client_factory: Callable[[], Any] | None = None) -> S3Folder:
        """``s3://bucket/prefix``; without a factory the client comes from the environment
        (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``... as boto3 reads them)."""
        if not is_url(url):
            raise ValueError(f"{url} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{url} names no bucket: write s3://bucket/prefix")
        return cls(bucket, prefix, client_factory or default_client)

    @property
    def client(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def objects(self, under: str = "") -> Iterator[dict]:
        """Every object below the prefix (or below ``under`` inside it), page by page."""
        start = self.key(under).rstrip("/") + "/" if (self.prefix or under) else ""
        with s3_errors(f"listing s3://{self.bucket}/{start}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            )
            for page in pages:
                yield from page.get("Contents", ())

    def exists(self) -> bool:
        return True  # a prefix exists as soon as an object is written under it

    def listing(self) -> Listing:
        start = len(self.key("")) if self.prefix else 0
        items, writing = [], set()
        for obj in self.objects():
            path = obj["Key"][start:].lstrip("/")
            parts = path.split("/")
            if parts[-1] == WRITING:
                writing.add("/".join(parts[:-1]))
            if any(p.startswith(".") for p in parts) or not parts[-1]:
                continue
            items.append((path, obj["Size"], obj["ETag"].strip('"')))
        return split(self.url, items, writing)

    def manifest(self, drop: Drop, store: Store, cache: HashCache) -> list[Entry]:
        """Hash every object of ``drop``; one not seen before (URL, size, ETag) is downloaded
        into the store on the way (``DOWNLOADS`` at a time: S3 is latency bound), so
        registering copies only what is new."""
        folder = S3Folder.from_url(drop.url, lambda: self.client)
        known, missing = {}, []
        for path, size, etag in drop.items:
            sha = cache.get(f"{drop.url}/{path}", [size, etag])
            if sha is not None and store.object_path(sha).exists():
                known[path] = sha
            else:
                missing.append((path, size, etag))
        if missing:
            folder.client  # noqa: B018 (one client, made before the threads share it)
            with ThreadPoolExecutor(DOWNLOADS) as pool:
                added = pool.map(lambda i: store.add(folder.opener(i[0]))[0], missing)
                for (path, size, etag), sha in zip(missing, added, strict=True):
                    cache.remember(f"{drop.url}/{path}", [size, etag], sha)
                    known[path] = sha
            cache.save()
        return sorted((Entry(p, known[p], size) for p, size, _ in drop.items), key=lambda e: e.path)

    def opener(self, path: str) -> S3Opener:
        return S3Opener(self, path)

    def has(self, name: str) -> bool:
        return next(iter(self.objects(name)), None) is not None

    def write(self, src: Path, name: str, replace: bool) -> None:
        """Upload the folder ``src`` to ``<prefix>/<name>/``: a hidden marker object says it is
        being written (the sensor waits), stale objects of a replaced dataset go, then the
        marker. S3 cannot rename a folder, so this marker is the "write aside"."""
        marker = self.key(f"{name}/{WRITING}")
        target = f"{self.url}/{name}"
        stale = [obj["Key"] for obj in self.objects(name)] if replace else []
        with s3_errors(f"writing {target}"):
            self.client.put_object(Bucket=self.bucket, Key=marker, Body=b"")
            wanted = set()
            for rel, entry in walk(src):
                key = self.key(f"{name}/{rel}")
                wanted.add(key)
                with open(entry.path, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
            for key in stale:
                if key not in wanted and key != marker:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
            self.client.delete_object(Bucket=self.bucket, Key=marker)


Landing = LocalFolder | S3Folder


def add_dataset(src: Path, landing: Landing, name: str | None = None, replace: bool = False) -> str:
    """Copy the dataset folder ``src`` into ``landing`` as ``name`` (default: the folder's name)
    so that the sensor never sees it half-written; return its location. An existing ``name`` is
    refused unless ``replace``."""
    src = Path(src).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    name = name if name is not None else src.name
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"dataset name {name!r}: use a plain folder name (no '/', no leading '.')")
    if isinstance(landing, LocalFolder) and landing.root.is_relative_to(src):
        raise ValueError(f"{src} holds the landing folder {landing.root}: copy a dataset folder")
    if next(walk(src), None) is None:
        raise ValueError(f"{src} holds no visible files")
    root = landing.listing().drops if landing.exists() else []
    if root and root[0].name == "" and root[0].items:
        raise ValueError(
            f"{landing.url} is itself one dataset: {name}/ would be read as part of it; move that "
            "dataset into a folder of its own first (each top-level folder is then a dataset)"
        )
    target = f"{landing.url.rstrip('/')}/{name}"
    if not replace and landing.has(name):
        raise FileExistsError(f"{target} already exists: pass --replace to replace it")
    landing.write(src, name, replace)
    return target


def landing_location(setting: str, home: Path) -> str:
    """``setting``, else ``$ML_ASSETS_LANDING``, else ``<home>/landing``; a folder resolved."""
    location = setting or os.environ.get(LANDING_ENV, "") or str(Path(home) / "landing")
    return location if is_url(location) else str(Path(location).expanduser().resolve())


def open_landing(location: str | Path, client_factory: Callable[[], Any] | None = None) -> Landing:
    """The landing location ``location``: an ``s3://bucket/prefix`` URL or a folder."""
    if is_url(location):
        return S3Folder.from_url(str(location), client_factory)
    return LocalFolder(Path(location))


def register(landing: Landing, drop: Drop, store: Store, cache: HashCache | None = None) -> str:
    """Register the dataset ``drop`` of ``landing`` as a version of the store; its key."""
    return store.register(drop.url, landing.manifest(drop, store, cache or store.cache))


def datasets(landing: Landing, name: str | None = None) -> list[Drop]:
    """The datasets ``landing`` holds by the module's rule (only ``name`` when given), each with
    visible files; a clear error when there are none, or no dataset is called ``name``."""
    drops = [d for d in landing.listing().drops if d.items] if landing.exists() else []
    if not drops:
        raise ValueError(
            f"the landing location {landing.url} holds no dataset: add one with "
            "`ml-assets ingest PATH --name NAME`"
        )
    if name is None:
        return drops
    found = [d for d in drops if d.name == name]
    if not found:
        names = ", ".join(d.name or "(the landing root is one dataset)" for d in drops)
        raise ValueError(
            f"no dataset {name!r} in the landing location {landing.url}: it holds {names}"
        )
    return found


@dataclass
class Tick:
    """What one look at the landing location found: versions registered now (dataset, key),
    one line per dataset saying what was seen, and the cursor for the next look."""

    registered: list[tuple[Drop, str]]
    seen: list[str]
    cursor: dict[str, list]


def check(
    landing: Landing, store: Store, cursor: dict[str, list], known: Callable[[str], bool]
) -> Tick:
    """List ``landing`` once and register every dataset whose listing equals the last one's.

    ``cursor`` maps a dataset name to [listing fingerprint, version key or None] as the last
    look left it; ``known(key)`` says whether a version is registered already. An unchanged,
    known dataset costs its listing only: nothing is hashed or read.
    """
    listing = landing.listing()
    new_cursor, registered, seen = {}, [], []
    cache = None
    for drop in listing.drops:
        if not drop.items:
            seen.append(f"{drop.label}: no visible files")
            continue
        fingerprint = drop.fingerprint()
        last = cursor.get(drop.name)
        size = f"{len(drop.items)} files"
        if drop.writing:
            seen.append(
                f"{drop.label}: {size}, still being written by ml-assets ingest (if that upload "
                f"failed, run it again or delete {drop.url}/{WRITING})"
            )
            continue
        if last and last[0] == fingerprint and last[1] and known(last[1]):
            new_cursor[drop.name] = last
            seen.append(f"{drop.label}: {size}, unchanged: version {last[1]} is registered")
            continue
        if not last or last[0] != fingerprint:
            new_cursor[drop.name] = [fingerprint, None]
            seen.append(f"{drop.label}: {size}, changed: waiting one tick for it to settle")
            continue
        cache = cache or store.cache
        key = register(landing, drop, store, cache)
        new_cursor[drop.name] = [fingerprint, key]
        if known(key):
            seen.append(f"{drop.label}: {size}, version {key} is registered already")
        else:
            registered.append((drop, key))
            seen.append(f"{drop.label}: {size}, settled: new version {key}")
    if listing.ignored:
        seen.append(f"ignored files beside the dataset folders: {', '.join(listing.ignored)}")
    return Tick(registered, seen, new_cursor)


def default_client():
    """An S3 client configured by the environment (``AWS_ENDPOINT_URL`` and keys), with
    retries as dagster-aws configures its own (defs/resources.py builds the resource's)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """An S3 or connection error inside the block becomes an ``OSError`` saying ``what`` failed
    with the server's error code and message, and nothing else: no request details, so no
    credential can reach a log line or an error message through it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as err:
        error = err.response.get("Error", {})
        raise OSError(
            f"S3 {what} failed: {error.get('Code', '?')} {error.get('Message', '')}".rstrip()
        ) from None
    except BotoCoreError as err:
        raise OSError(f"S3 {what} failed: {type(err).__name__}: {err}") from None
