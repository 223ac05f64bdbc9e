"""Pretrained weights, pulled once into the store, pinned by name and hash, used offline.

:func:`pull` fetches a *spec* and stores its bytes once, content-addressed, as a read-only
snapshot folder ``base_models/<hash>/`` (a manifest of files and a folder of links to the
objects), the layout of base-model snapshots (``ml_assets.train.base_models``); then it records
a *pin* ``weights/<name>.json`` (name, spec, hash, size, source, source revision, when). Specs:

- a local file or folder: copied (hashed through the store's hash cache);
- ``http(s)://host/path[#sha256=<hex>]``: streamed to ``objects/.pull.<key>`` while hashing,
  resumed with a ``Range`` request (and ``If-Range``: the ETag, else Last-Modified) when an
  earlier attempt or pull left part of it, then renamed into ``objects/``. Checked against the
  published sha256 where there is one: the ``#sha256=`` fragment (pip's convention; a fragment
  is never sent to the server), else an ``X-Checksum-Sha256`` header (Artifactory, Nexus), else
  an ``X-Linked-Etag`` that is a sha256 (Hugging Face's LFS files, on the redirect); and against
  the size the server announced (``Content-Length``, ``Content-Range``, ``X-Linked-Size``);
- ``s3://bucket/key``: the landing's S3 client (``AWS_ENDPOINT_URL`` and keys from the
  environment), resumed the same way, checked against S3's ``ChecksumSHA256`` when the object
  has one;
- ``hf://org/repo[@revision][/path/in/repo]``: ``huggingface_hub.snapshot_download`` into a
  temporary cache beside the objects (so ``HF_ENDPOINT``, ``HF_TOKEN`` and mirrors work), the
  whole repository (a folder pin) or one file (a file pin); the revision is resolved to its
  commit and recorded; every file is checked against the ETag the Hub gave (sha256 of an LFS
  file, git blob id of another);
- a timm model name, with or without its pretrained tag (``resnet50.a1_in1k``): where timm's
  own pretrained config says it loads from, ``hf://<hf_hub_id>/model.safetensors`` (else
  ``pytorch_model.bin``), else its ``url``;
- an ultralytics weights name (``yolo11n.pt``, ``yolo11n-seg.pt``): the release asset URL
  ultralytics downloads it from (``https://github.com/ultralytics/assets/releases/download/
  <release>/<name>``, the release being the default of ultralytics' ``attempt_download_asset``);
  ``$ML_ASSETS_ULTRALYTICS_URL`` replaces the part before ``/<name>`` (a mirror).

A second pull of a remote spec already pinned under its name is a stat of the stored copy and a
read of the pin: nothing is downloaded or hashed again (``replace`` fetches it again). A local
spec is looked at again through the hash cache (a stat per file while unchanged). A different
hash under an existing name is refused unless ``replace``. :func:`resolve` never uses the
network: it gives the stored copy of a pulled name (or spec), or fails naming the command that
pulls it. Base models recorded by name (``ml_assets.train.base_models.record_name``) are pins
too, of kind ``base_model``: :func:`pinned` lists them and :func:`resolve` finds them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import shlex
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from ml_assets.data.atomic import atomic_dir, link_or_copy, out_of_space, write_bytes
from ml_assets.data.retention import now_iso
from ml_assets.data.store import CHUNK, Entry, Store, hash_file, manifest_key, scan, walk

WEIGHTS = "weights"  # <store>/weights/<name>.json: the pins
SNAPSHOTS = "base_models"  # <store>/base_models/<hash>/{manifest.json,files/}: as base models
BASE_MODEL_NAMES = "base_model_names"  # <store>/base_model_names/<name>.json (base_models.py)
MANIFEST = "manifest.json"
ULTRALYTICS_URL_ENV = "ML_ASSETS_ULTRALYTICS_URL"
ULTRALYTICS_SUFFIXES = (".pt", ".pth", ".ts", ".onnx", ".zip")
SCHEMES = {"http": "url", "https": "url", "s3": "s3", "hf": "hf"}
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order on the Hub
ATTEMPTS = 4
TIMEOUT_S = 60
NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]*")
SHA256 = re.compile(r"[0-9a-f]{64}")
GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
TRANSIENT = (ConnectionError, TimeoutError, http.client.IncompleteRead)


class NotPulledError(FileNotFoundError):
    """Weights asked for by name or spec that no pull stored: one line naming the command."""


class WeightsChangedError(ValueError):
    """A pull whose bytes differ from those already pinned under its name."""


class ChecksumError(ValueError):
    """Downloaded bytes that differ from the checksum or size their source published."""


@dataclass(frozen=True)
class Pinned:
    """Weights in the store under a name: ``path`` is the read-only file or folder to load."""

    name: str
    spec: str
    kind: str  # file, folder, or base_model (a snapshot ml_assets.train.base_models recorded)
    hash: str  # sha256 of a file; the manifest hash of a folder (as base models, versions)
    size: int
    revision: str | None  # the source's: Hub commit, ETag or Last-Modified, S3 version or ETag
    source: str  # where the bytes came from (a timm or ultralytics name: the URL or hf:// spec)
    pulled_at: str
    path: Path
    fetched: bool = field(default=False, compare=False)  # by this pull (not in the pin)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc.pop("fetched")
        return doc | {"path": str(self.path)}


@dataclass(frozen=True)
class Fetched:
    entries: list[Entry]  # the files, stored as objects; one entry, named, for a file
    single: bool
    source: str
    revision: str | None


@dataclass
class Response:
    """The body of a download from byte ``start`` on, and what its server said about it."""

    readinto: Callable[[memoryview], int]
    close: Callable[[], None]
    start: int
    total: int | None  # the whole file's size
    validator: str | None  # what a later request must match to resume (ETag, Last-Modified)
    sha256: str | None  # a published checksum
    revision: str | None


Opener = Callable[[int, str | None], Response]  # (offset, validator) -> response


# --- the spec and the pin -------------------------------------------------------------------


def classify(spec: str) -> tuple[str, str]:
    """(source kind, spec as pinned): a stat at most, no import. A local path is made absolute."""
    spec = spec.strip()
    scheme, sep, _ = spec.partition("://")
    if sep:
        if scheme.lower() not in SCHEMES:
            raise ValueError(
                f"weights spec {spec!r}: unknown scheme {scheme}:// (a file or folder, http(s)://, "
                "s3://, hf://, a timm model name or an ultralytics weights name)"
            )
        return SCHEMES[scheme.lower()], spec
    path = Path(spec).expanduser()
    if path.exists():
        return "local", str(path.resolve())
    if "/" in spec or spec.startswith((".", "~")):
        raise FileNotFoundError(f"weights spec {spec!r}: no such file or folder")
    if PurePosixPath(spec).suffix in ULTRALYTICS_SUFFIXES:
        return "ultralytics", spec
    return "timm", spec


def default_name(kind: str, spec: str) -> str:
    """The file or folder name of a path, URL or S3 key; ``org/repo[/path]`` of a Hub spec; a
    timm or ultralytics name as it is."""
    if kind == "local":
        return Path(spec).name
    if kind == "url":
        url = urllib.parse.urlsplit(spec)
        return urllib.parse.unquote(PurePosixPath(url.path).name) or url.hostname or "download"
    if kind == "s3":
        return PurePosixPath(spec[len("s3://") :]).name
    if kind == "hf":
        repo, _, path = hf_parts(spec)
        return f"{repo}/{path}" if path else repo
    return spec


def pin_path(store: Store, name: str) -> Path:
    if not all(NAME_PART.fullmatch(part) for part in name.split("/")):
        raise ValueError(
            f"invalid weights name {name!r}: letters, digits and . _ - + = @, in parts separated "
            "by / (org/repo), none starting with a dot"
        )
    return store.root / WEIGHTS / f"{name}.json"


def read_pin(store: Store, path: Path) -> Pinned:
    doc = orjson.loads(path.read_bytes())
    return Pinned(**{**doc, "path": store.root / doc["path"]})


def write_pin(store: Store, pin: Pinned) -> None:
    doc = pin.to_dict() | {"path": pin.path.relative_to(store.root).as_posix()}
    write_bytes(pin_path(store, pin.name), orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def snapshot(store: Store, entries: list[Entry], source: str) -> Path:
    """The read-only folder of links to the stored ``entries``, written once (atomically) under
    the hash of their manifest; returns its ``files`` folder."""
    key = manifest_key(entries)
    folder = store.root / SNAPSHOTS / key
    if not (folder / MANIFEST).is_file():
        # Another pull may write the same snapshot at the same time: either result is the same.
        with contextlib.suppress(FileExistsError), atomic_dir(folder) as tmp:
            for e in entries:
                link_or_copy(store.object_path(e.sha256), tmp / "files" / e.path)
            doc = {"source": source, "hash": key, "files": [e.__dict__ for e in entries]}
            (tmp / MANIFEST).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return folder / "files"


# --- pull, list, resolve --------------------------------------------------------------------


def pull(
    spec: str,
    store: Store,
    name: str | None = None,
    replace: bool = False,
    client_factory: Callable[[], Any] | None = None,
) -> Pinned:
    """Fetch ``spec`` into ``store`` (bytes once) and pin it under ``name`` (default: from the
    spec); see the module docstring. ``client_factory`` makes the S3 client (default: the
    environment's, as the landing's). Refuses a different hash under an existing name with
    :class:`WeightsChangedError` unless ``replace``."""
    kind, spec = classify(spec)
    name = name or default_name(kind, spec)
    path = pin_path(store, name)
    old = read_pin(store, path) if path.is_file() else None
    if old and old.spec == spec and not replace and kind != "local" and old.path.exists():
        return old  # a stat and the pin: nothing downloaded, nothing hashed
    fetched = FETCHERS[kind](spec, store, client_factory)
    entries = fetched.entries
    digest = entries[0].sha256 if fetched.single else manifest_key(entries)
    if old and old.hash != digest and not replace:
        raise WeightsChangedError(
            f"weights {name!r} are pinned to {old.hash[:12]} ({old.spec}, pulled {old.pulled_at}); "
            f"{spec} now gives {digest[:12]}: pass --replace to pin the new bytes (runs that "
            "recorded the old hash then start afresh)"
        )
    if old and old.hash == digest and old.spec == spec and old.path.exists():
        return old
    files = snapshot(store, entries, spec)
    pin = Pinned(
        name=name,
        spec=spec,
        kind="file" if fetched.single else "folder",
        hash=digest,
        size=sum(e.size for e in entries),
        revision=fetched.revision,
        source=fetched.source,
        pulled_at=now_iso(),
        path=files / entries[0].path if fetched.single else files,
        fetched=True,
    )
    write_pin(store, pin)
    return pin


def pinned(store: Store) -> list[Pinned]:
    """Every pin by name, then every base model recorded by name (kind ``base_model``)."""
    root = store.root / WEIGHTS
    paths = sorted(root.rglob("*.json")) if root.is_dir() else []
    pins = [read_pin(store, p) for p in paths if not p.name.startswith(".")]
    names = store.root / BASE_MODEL_NAMES
    for path in sorted(names.glob("*.json")) if names.is_dir() else []:
        doc = orjson.loads(path.read_bytes())
        manifest = Path(doc["folder"]).parent / MANIFEST
        record = orjson.loads(manifest.read_bytes()) if manifest.is_file() else {}
        recorded = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        pins.append(
            Pinned(
                name=doc["name"],
                spec=record.get("source", ""),
                kind="base_model",
                hash=doc["hash"],
                size=sum(f["size"] for f in record.get("files", [])),
                revision=None,
                source=record.get("source", ""),
                pulled_at=recorded.isoformat(timespec="seconds"),
                path=Path(doc["folder"]),
            )
        )
    return pins


def resolve(store: Store, name_or_spec: str) -> Path:
    """The stored copy (file or folder) of pulled weights: see :func:`lookup`."""
    return lookup(store, name_or_spec).path


def lookup(store: Store, name_or_spec: str) -> Pinned:
    """The pin of weights pulled under that name or from that spec, or of a base model by name
    (what a model's lineage records: name, hash, path); never the network. Otherwise
    :class:`NotPulledError`, one line naming the command that pulls them."""
    pin = None
    with contextlib.suppress(ValueError):  # a name that is no pin's file name: search below
        path = pin_path(store, name_or_spec)
        pin = read_pin(store, path) if path.is_file() else None
    if pin is None:  # a base model by name, or weights named by their spec
        spec = name_or_spec.strip()
        with contextlib.suppress(ValueError, FileNotFoundError):
            spec = classify(spec)[1]
        pins = pinned(store)
        by_name = (p for p in pins if p.name == name_or_spec)
        pin = next(by_name, None) or next((p for p in pins if p.spec == spec), None)
    if pin is None:
        command = f"ml-assets weights pull {shlex.quote(name_or_spec)}"
        raise NotPulledError(f"weights {name_or_spec!r} are not pulled: run `{command}`")
    if not pin.path.exists():
        command = f"ml-assets weights pull {shlex.quote(pin.spec)} --name {shlex.quote(pin.name)}"
        raise NotPulledError(
            f"weights {pin.name!r} are pinned but their stored copy {pin.path} is gone: run "
            f"`{command}`"
        )
    return pin


# --- sources ----------------------------------------------------------------------------------


def fetch_local(spec: str, store: Store, client_factory=None) -> Fetched:
    path, cache = Path(spec), store.cache
    if path.is_dir():
        entries = scan(path, cache)
        if not entries:
            raise ValueError(f"{path} holds no files")
        for e in entries:
            store.put(path / e.path, e.sha256)
        return Fetched(entries, False, spec, None)
    st = path.stat()
    sha = cache.sha256(spec, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    cache.save()
    store.put(path, sha)
    return Fetched([Entry(path.name, sha, st.st_size)], True, spec, None)


def fetch_url(spec: str, store: Store, client_factory=None) -> Fetched:
    url, _, fragment = spec.partition("#")
    published = urllib.parse.parse_qs(fragment).get("sha256", [None])[0]
    sha, size, revision = download(store, spec, http_opener(url), published)
    entry = Entry(default_name("url", url), sha, size)
    return Fetched([entry], True, url, revision)


def fetch_s3(spec: str, store: Store, client_factory=None) -> Fetched:
    from ml_assets.data.landing import default_client

    bucket, _, key = spec[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"weights spec {spec!r}: an S3 object is s3://bucket/key")
    client = (client_factory or default_client)()
    sha, size, revision = download(store, spec, s3_opener(client, bucket, key, spec))
    return Fetched([Entry(PurePosixPath(key).name, sha, size)], True, spec, revision)


def fetch_hf(spec: str, store: Store, client_factory=None) -> Fetched:
    repo, revision, path = hf_parts(spec)
    at = revision or "main"
    with hub_cache(store, spec) as cache:
        folder = hub_snapshot(repo, revision, path, cache)
        commit, target = folder.name, folder / path if path else folder
        entries = store_hub_files(store, f"{repo}@{commit}", target) if target.exists() else []
    if path and not entries:
        raise MissingInRepoError(f"{repo} at {at} ({commit}) has no file {path}")
    if not entries:
        raise ValueError(f"{repo} at {at} ({commit}) holds no files")
    if path:
        entries = [Entry(path, entries[0].sha256, entries[0].size)]
    source = f"hf://{repo}@{commit}" + (f"/{path}" if path else "")
    return Fetched(entries, bool(path), source, commit)


def fetch_timm(spec: str, store: Store, client_factory=None) -> Fetched:
    """Where timm loads ``spec``'s pretrained weights from: its Hub repository (as
    ``timm.models.load_pretrained`` does, safetensors first), else its URL."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(spec)
    if cfg is None:
        raise ValueError(
            f"weights spec {spec!r} is not a file or folder, a URL (http, https, s3, hf), an "
            "ultralytics weights name nor a timm model with pretrained weights"
        )
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        at = f"@{revision}" if revision else ""
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else TIMM_FILES:
            with contextlib.suppress(MissingInRepoError):
                return fetch_hf(f"hf://{repo}{at}/{filename}", store)
        raise FileNotFoundError(f"timm's {repo} has none of {', '.join(TIMM_FILES)}")
    if cfg.url:
        return fetch_url(cfg.url, store)
    raise ValueError(f"timm names no place to download {spec!r}'s pretrained weights from")


def fetch_ultralytics(spec: str, store: Store, client_factory=None) -> Fetched:
    """The release asset ultralytics' own ``attempt_download_asset`` downloads ``spec`` from,
    under ``$ML_ASSETS_ULTRALYTICS_URL`` when it is set."""
    import inspect

    from ultralytics.utils.downloads import (
        GITHUB_ASSETS_NAMES,
        GITHUB_ASSETS_REPO,
        attempt_download_asset,
    )

    if spec not in GITHUB_ASSETS_NAMES:
        raise ValueError(
            f"weights spec {spec!r} is not a file, nor a weights name ultralytics publishes "
            "(yolo11n.pt, yolo11n-seg.pt, yolo26n.pt, ...)"
        )
    release = inspect.signature(attempt_download_asset).parameters["release"].default
    base = os.environ.get(ULTRALYTICS_URL_ENV) or (
        f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{release}"
    )
    return fetch_url(f"{base.rstrip('/')}/{spec}", store)


FETCHERS: dict[str, Callable[..., Fetched]] = {
    "local": fetch_local,
    "url": fetch_url,
    "s3": fetch_s3,
    "hf": fetch_hf,
    "timm": fetch_timm,
    "ultralytics": fetch_ultralytics,
}


# --- streamed, resumable downloads ------------------------------------------------------------


def download(
    store: Store, spec: str, open_at: Opener, published: str | None = None
) -> tuple[str, int, str | None]:
    """Stream what ``open_at`` opens into the store, hashing on the way; (sha256, size, source
    revision). A download cut short is resumed where it stopped, within this call (``ATTEMPTS``
    tries) or by a later one: the part stays in ``objects/.pull.<key>`` until it is whole."""
    objects = store.root / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    partial = objects / f".pull.{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
    state = partial.with_name(f"{partial.name}.json")
    with locked(partial.with_name(f"{partial.name}.lock")), out_of_space(objects):
        for attempt in range(ATTEMPTS):
            try:
                sha, response = fetch_part(partial, state, open_at)
                break
            except TRANSIENT as err:
                if attempt + 1 == ATTEMPTS:
                    got = partial.stat().st_size if partial.exists() else 0
                    raise ConnectionError(
                        f"download of {spec} failed {ATTEMPTS} times ({err}); run the pull "
                        f"again to resume after the {got:,} bytes it has"
                    ) from err
                time.sleep(0.5 * attempt)
        size = partial.stat().st_size
        expected = published or response.sha256
        if expected and expected.lower() != sha:
            partial.unlink()
            state.unlink()
            raise ChecksumError(
                f"{spec}: the downloaded bytes hash to sha256 {sha}, the source published "
                f"{expected}: nothing stored"
            )
        adopt(store, partial, sha)
        state.unlink(missing_ok=True)
    return sha, size, response.revision


def fetch_part(partial: Path, state: Path, open_at: Opener) -> tuple[str, Response]:
    """One attempt: ask for the bytes after those ``partial`` holds (all when it holds none or
    the source changed), append them, and check the size; (sha256 of the whole file, response)."""
    offset = partial.stat().st_size if partial.exists() else 0
    validator = orjson.loads(state.read_bytes()).get("validator") if state.exists() else None
    response = open_at(offset, validator) if offset and validator else open_at(0, None)
    try:
        if response.start not in (0, offset):  # not where this part ends: start again
            partial.unlink()
            raise ConnectionError(f"asked for bytes {offset:,}-, sent {response.start:,}-")
        digest = hashlib.sha256()
        if response.start:  # the server sends the rest
            with open(partial, "rb") as done:
                while chunk := done.read(CHUNK):
                    digest.update(chunk)
        write_bytes(state, orjson.dumps({"validator": response.validator}))
        with open(partial, "ab" if response.start else "wb") as out:
            copy_hashing(response.readinto, out, digest)
    finally:
        response.close()
    size = partial.stat().st_size
    if response.total is not None and size != response.total:
        if size > response.total:
            partial.unlink()
            raise ChecksumError(f"got {size:,} bytes where the source announced {response.total:,}")
        raise ConnectionError(f"the connection ended after {size:,} of {response.total:,} bytes")
    return digest.hexdigest(), response


def copy_hashing(readinto: Callable[[memoryview], int], out, digest) -> None:
    """Write everything ``readinto`` gives to ``out`` and into ``digest``, through one buffer:
    memory stays flat whatever the size. (Hashing in a thread of its own measured no faster
    on two cores, where hashing is the one cost curl does not have: benchmarks/weights.py.)"""
    buffer = memoryview(bytearray(CHUNK))
    while n := readinto(buffer):
        digest.update(buffer[:n])
        out.write(buffer[:n])


def adopt(store: Store, path: Path, sha256: str) -> None:
    """Move the file ``path`` (already hashed, on the store's file system) into the store as its
    object, or drop it when the object is there: no second copy, no second hash."""
    target = store.object_path(sha256)
    if target.exists():
        path.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o444)
    os.replace(path, target)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: two pulls of one spec (pods sharing a store) take turns."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class RedirectHeaders(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, keeping each hop's headers: Hugging Face sends an LFS
    file's sha256 and size (``X-Linked-Etag``, ``X-Linked-Size``) on the redirect only."""

    def __init__(self, hops: list):
        self.hops = hops

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def http_opener(url: str) -> Opener:
    def open_at(offset: int, validator: str | None) -> Response:
        headers = {"User-Agent": "ml-assets", "Accept-Encoding": "identity"}
        if offset:
            headers |= {"Range": f"bytes={offset}-", "If-Range": validator}
        hops: list = []
        opener = urllib.request.build_opener(RedirectHeaders(hops))
        try:
            answer = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # the part on disk is no prefix of the file
                return open_at(0, None)
            failed = ConnectionError if err.code >= 500 or err.code == 429 else OSError
            raise failed(f"GET {url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise ConnectionError(f"GET {url}: {err.reason}") from None

        def header(name: str) -> str | None:
            # The final answer's; Hugging Face's X-Linked-* come on a redirect (the latest hop's).
            # A redirect's own length or validator says nothing about the file.
            sources = [answer.headers, *reversed(hops)] if name.startswith("X-Linked") else []
            found = [h.get(name) for h in sources or [answer.headers] if h.get(name)]
            return found[0].strip() if found else None

        part = header("Content-Range") if answer.status == 206 else None
        start, total = spans(part, header("Content-Length"))
        linked, linked_size = unquoted(header("X-Linked-Etag")), header("X-Linked-Size")
        etag = header("ETag")
        return Response(
            readinto=answer.readinto,
            close=answer.close,
            start=start,
            total=int(linked_size) if linked_size else total,
            validator=(etag if etag and not etag.startswith("W/") else None)
            or header("Last-Modified"),
            sha256=header("X-Checksum-Sha256")
            or (linked if linked and SHA256.fullmatch(linked) else None),
            revision=header("X-Repo-Commit") or unquoted(etag) or header("Last-Modified"),
        )

    return open_at


def s3_opener(client, bucket: str, key: str, spec: str) -> Opener:
    def open_at(offset: int, validator: str | None) -> Response:
        from botocore.exceptions import BotoCoreError

        from ml_assets.data.landing import s3_errors

        ask = {"Bucket": bucket, "Key": key}
        ask |= {"Range": f"bytes={offset}-"} if offset else {"ChecksumMode": "ENABLED"}
        with s3_errors(f"download of {spec}"):
            answer = client.get_object(**ask)
        body = answer["Body"]
        if offset and answer.get("ETag") != validator:  # the object changed: start again
            body.close()
            return open_at(0, None)

        def readinto(buffer: memoryview) -> int:
            try:
                return body.readinto(buffer)
            except BotoCoreError as err:  # a connection cut short: resumed by the caller
                raise ConnectionError(f"{spec}: {err}") from None

        checksum = answer.get("ChecksumSHA256") or ""  # "<base64>-<parts>": of the parts, not ours
        start, total = spans(answer.get("ContentRange"), answer.get("ContentLength"))
        return Response(
            readinto=readinto,
            close=body.close,
            start=start,
            total=total,
            validator=answer.get("ETag"),
            sha256=base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None,
            revision=answer.get("VersionId") or unquoted(answer.get("ETag")),
        )

    return open_at


def spans(content_range: str | None, length) -> tuple[int, int | None]:
    """(first byte sent, whole size) from ``Content-Range: bytes 100-199/200`` when the answer
    is a part, else from the length of the whole answer."""
    if not content_range:
        return 0, int(length) if length is not None else None
    first, _, total = content_range.split()[-1].partition("/")
    return int(first.split("-")[0]), int(total) if total.isdigit() else None


def unquoted(etag: str | None) -> str | None:
    return etag.removeprefix("W/").strip('"') if etag else None


# --- the Hugging Face Hub ---------------------------------------------------------------------


class MissingInRepoError(FileNotFoundError):
    """A file a Hub repository does not hold at the revision asked for."""


def hf_parts(spec: str) -> tuple[str, str | None, str]:
    """``hf://org/repo[@revision][/path]`` -> (org/repo, revision or None, path or "")."""
    rest = spec[len("hf://") :].strip("/")
    parts = rest.split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"weights spec {spec!r}: a Hub repository is hf://org/repo[@revision]")
    org, repo = parts[0], parts[1]
    repo, _, revision = repo.partition("@")
    path = parts[2] if len(parts) == 3 else ""
    return f"{org}/{repo}", urllib.parse.unquote(revision) or None, path


@contextlib.contextmanager
def hub_cache(store: Store, spec: str) -> Iterator[Path]:
    """A Hugging Face cache for one spec beside the objects (same file system: its files are
    moved into the store, not copied); removed once the pull stored them, kept after a failure
    (but one that failed a checksum) so that huggingface_hub resumes its partial files."""
    folder = store.root / "objects" / f".hf.{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder.with_name(f".lock{folder.name}")):  # two pulls of one spec take turns
        try:
            with out_of_space(store.root / "objects"):
                yield folder
        except ValueError:  # bytes that failed their checksum: not to be resumed
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def hub_online() -> Iterator[None]:
    """Lets huggingface_hub use the network inside the block. ``ml_assets.runtime`` turns it off
    for the process (``HF_HUB_OFFLINE``, read once when huggingface_hub is imported); pulling is
    the one thing that may go online. Changes process state while it lasts."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def hub_snapshot(repo: str, revision: str | None, path: str, cache: Path) -> Path:
    """The files of ``repo`` at ``revision`` (or only ``path``) in ``cache``: the snapshot
    folder, named by the commit. ``HF_ENDPOINT`` is read now, not when huggingface_hub was
    imported."""
    from huggingface_hub import snapshot_download

    with hub_online():
        folder = snapshot_download(
            repo,
            revision=revision,
            cache_dir=cache,
            allow_patterns=[path] if path else None,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    return Path(folder)


def store_hub_files(store: Store, what: str, target: Path) -> list[Entry]:
    """Hash the cached files of ``target`` (a snapshot folder or one file in it), check each
    against the ETag the Hub gave (its blob's name: the sha256 of an LFS file, the git blob id
    of another) and move the blobs into the store."""
    links = {target.name: target} if target.is_file() else {r: e.path for r, e in walk(target)}
    blobs = {rel: Path(os.path.realpath(link)) for rel, link in links.items()}
    stored = {}  # blob -> (sha256, size): several files may share one blob
    for blob in sorted(set(blobs.values())):
        sha, etag = hash_file(blob), blob.name
        found = etag  # a file copied, not linked to its blob, has no ETag to check
        if SHA256.fullmatch(etag):
            found = sha
        elif GIT_SHA1.fullmatch(etag):
            found = git_blob_id(blob)
        if found != etag:
            raise ChecksumError(
                f"{what}: a downloaded file does not match the Hub's checksum {etag} (its bytes "
                f"give {found}): nothing stored"
            )
        stored[blob] = sha, blob.stat().st_size
        adopt(store, blob, sha)
    return [Entry(rel, *stored[blob]) for rel, blob in sorted(blobs.items())]


def git_blob_id(path: Path) -> str:
    """The id git gives a file's bytes (sha1 of ``blob <size>\\0<bytes>``): the Hub's ETag of a
    file not stored with LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
