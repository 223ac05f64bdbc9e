"""The store over time: what each dataset version costs on disk, which versions a retention rule
removes, and whether the stored objects still hold the bytes their names promise.

Pure (no Dagster): ``ml_assets.local.store`` (``ml-assets store ...``) adds what only the Dagster
instance and the models know (runs in flight, partitions, champions) and prints.

Layout. A version's outputs are the entries of its store folder (``versions/<key>/``: the
snapshot ``files/``, its data beside it such as ``tables/`` and ``folds.parquet``, and one folder
per export format) and, outside the store, ``<area>/<kind>/<key>/`` in every area (models, runs,
evaluations, reports, model exports, predictions). :class:`Layout` names them;
``ml_assets.local.store.layout`` builds it from ``MLAssetsHome``.

Sizes. Every object is counted once, in the store, and split per version into unique bytes
(objects no other version nor base model uses: what collecting that version alone frees) and
shared bytes. A file elsewhere that is a hard link to an object (the snapshot, exports, YOLO's
run folders) or a symlink costs nothing more; every other file is counted once, by its inode.

Retention rule. Versions are ordered by registration time: the modification time of their
manifest, which ``Store.register`` writes once and never rewrites (a copy of the home that does
not keep modification times reorders them; the key breaks ties). A registered version is
- kept whole when it is one of the ``keep_last`` newest, pinned, or named by a run in flight
  (the caller says which);
- trimmed when a champion needs it (the caller names the versions and the paths: the champion's
  model and its deployable export): its data stays (manifest, snapshot, objects, tables, folds)
  with those paths, and its other outputs go (exports, fold models, checkpoints, evaluations);
- collected otherwise: every output goes, then the objects that no remaining version nor base
  model names.

Order of a collection; an interruption anywhere leaves a state that readers read right, and the
next ``gc`` finishes the work:
1. the tombstone ``versions/<key>/collected.json`` is written (an atomic rename): from then on
   ``Store.ingest``, ``files_dir`` and ``manifest`` refuse the version, naming what was removed
   and when; the manifest stays, as the record of what the version held;
2. ``forget(key)``: the caller removes its dynamic partition, so nothing new starts for it;
3. each output is renamed into the home's trash, then deleted: a reader sees a whole folder or
   none; what an interruption leaves in the trash is deleted by the next ``gc``;
4. after all versions, the objects that no registered, uncollected version nor base model names
   (read again from disk at that moment) are unlinked, except those written in the last
   ``grace_s`` seconds: a registration in progress may be about to name them.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path

import orjson

from ml_assets.data.atomic import write_bytes
from ml_assets.data.store import SNAPSHOT, TOMBSTONE, Store, folders, hash_file, walk

PINS = "pins"  # <store>/pins/<key>: one file per pinned version
QUARANTINE = "quarantine"  # <store>/quarantine/<sha256>: objects whose bytes did not match
GRACE_S = 3600
# Objects hashed per task: one task per file costs more in hand-offs between threads than
# hashing a small file does.
BATCH = 256


@dataclass(frozen=True)
class Layout:
    """Where a home keeps every version's outputs."""

    store: Store
    data: frozenset[str]  # entries of versions/<key>/ that are its data, beside the snapshot
    areas: dict[str, Path]  # outside the store: area name -> folder of <kind>/<key>/
    base_manifests: tuple[Path, ...]  # manifests whose objects are always kept (base models)
    trash: Path  # on the file system of the outputs: renamed there, then deleted


@dataclass(frozen=True)
class Output:
    label: str  # snapshot, tables, folds, exports/coco, models/image_classifier, ...
    path: Path
    bytes: int


@dataclass
class Version:
    key: str
    state: str  # registered, collected (it has a tombstone) or unregistered (only outputs)
    registered_ns: int = 0
    files: int = 0
    data_bytes: int = 0
    shas: frozenset[str] = frozenset()
    unique_bytes: int = 0
    shared_bytes: int = 0
    outputs: list[Output] = field(default_factory=list)


@dataclass
class Usage:
    versions: list[Version]  # registered ones oldest first, then the others by key
    objects: dict[str, tuple[int, int]]  # sha256 -> (bytes, mtime_ns) of every stored object
    used: Counter  # sha256 -> how many registered versions and base models name it
    base: set[str]  # sha256 of the objects base models name
    inodes: set[tuple[int, int]]  # (device, inode) of the objects


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stored_objects(store: Store) -> Iterable[os.DirEntry]:
    objects = store.root / "objects"
    return (entry for _, entry in walk(objects)) if objects.is_dir() else iter(())


def manifest_files(path: Path) -> list[dict]:
    """A manifest's entries as dicts (``Store.manifest`` makes objects: five times slower)."""
    return orjson.loads(path.read_bytes())["files"]


def subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def disk_bytes(path: Path, skip: set[tuple[int, int]]) -> int:
    """Bytes of the files under ``path`` (or of the file) whose (device, inode) are not in
    ``skip``; adds them to ``skip``, so a file linked from two places is counted once. Only files
    not skipped are stat-ed: the inode comes with the folder's listing."""
    if path.is_symlink():
        return 0
    device = os.stat(path).st_dev
    if path.is_file():
        files = [(os.stat(path).st_ino, path)]
    else:
        files = [(e.inode(), e.path) for _, es in folders(path) for e in es if not e.is_symlink()]
    total = 0
    for inode, file in files:
        if (device, inode) not in skip:
            skip.add((device, inode))
            total += os.stat(file).st_size
    return total


def snapshot_bytes(path: Path, probe: str, objects: set[tuple[int, int]], seen: set) -> int:
    """A snapshot's own bytes: none when its files are hard links to the objects, as
    ``Store.ingest`` makes them (the file ``probe`` is looked at); where it had to copy, all."""
    first = path / probe
    if first.is_file() and (os.stat(first).st_dev, os.stat(first).st_ino) in objects:
        return 0
    return disk_bytes(path, seen)


def usage(layout: Layout) -> Usage:
    """Every version with its files, unique and shared object bytes, and its outputs' bytes."""
    store = layout.store
    objects, inodes = {}, set()
    for entry in stored_objects(store):
        st = entry.stat()
        objects[entry.name] = (st.st_size, st.st_mtime_ns)
        inodes.add((st.st_dev, st.st_ino))
    seen = set(inodes)  # an inode counted once over the whole home
    versions: dict[str, Version] = {}
    for folder in subfolders(store.root / "versions"):
        version = versions[folder.name] = Version(folder.name, "unregistered")
        manifest = store.manifest_path(folder.name)
        files = []
        if (folder / TOMBSTONE).exists():
            version.state = "collected"
        elif manifest.exists():
            files = manifest_files(manifest)
            version.state, version.registered_ns = "registered", manifest.stat().st_mtime_ns
            version.files, version.data_bytes = len(files), sum(e["size"] for e in files)
            version.shas = frozenset(e["sha256"] for e in files)
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry.name in (manifest.name, TOMBSTONE):
                continue
            if entry.name == SNAPSHOT:
                probe = files[0]["path"] if files else ""
                output = Output("snapshot", entry, snapshot_bytes(entry, probe, inodes, seen))
            else:
                label = entry.stem if entry.name in layout.data else f"exports/{entry.name}"
                output = Output(label, entry, disk_bytes(entry, seen))
            version.outputs.append(output)
    for area, root in layout.areas.items():
        for kind in subfolders(root):
            for folder in subfolders(kind):
                version = versions.setdefault(folder.name, Version(folder.name, "unregistered"))
                version.outputs.append(
                    Output(f"{area}/{kind.name}", folder, disk_bytes(folder, seen))
                )
    used, base = Counter(), set()
    for path in layout.base_manifests:
        shas = {e["sha256"] for e in manifest_files(path)}
        used.update(shas)
        base |= shas
    for version in versions.values():
        used.update(version.shas)
    sizes = {sha: size for sha, (size, _) in objects.items()}
    single = {sha for sha, n in used.items() if n == 1}
    for version in versions.values():  # map and set operations: 500,000 names in 0.1 s
        present = sum(map(sizes.get, version.shas, repeat(0)))
        version.unique_bytes = sum(map(sizes.get, version.shas & single, repeat(0)))
        version.shared_bytes = present - version.unique_bytes
    ordered = sorted(
        versions.values(), key=lambda v: (v.state != "registered", v.registered_ns, v.key)
    )
    return Usage(ordered, objects, used, base, inodes)


@dataclass
class Decision:
    version: Version
    action: str  # keep, trim, collect, or finish (a collected version's leftovers)
    reasons: list[str]
    remove: list[Output]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.remove)


@dataclass
class Plan:
    decisions: list[Decision]
    objects: dict[str, int]  # sha256 -> bytes of the objects to unlink

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.decisions) + sum(self.objects.values())


def within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def trimmed(output: Output, protected: set[Path], seen: set) -> list[Output]:
    """What goes of ``output`` when the ``protected`` paths stay: all of it, nothing, or (when a
    protected path lies inside it) its other entries, one level at a time."""
    if any(within(output.path, p) for p in protected):
        return []
    if not any(within(p, output.path) for p in protected):
        return [output]
    gone = []
    for entry in sorted(output.path.iterdir()):
        part = Output(f"{output.label}/{entry.name}", entry, disk_bytes(entry, seen))
        gone += trimmed(part, protected, seen)
    return gone


def plan(
    found: Usage,
    keep_last: int,
    whole: dict[str, list[str]],
    champions: dict[str, list[str]],
    protected: Iterable[Path] = (),
    now_ns: int | None = None,
    grace_s: float = GRACE_S,
) -> Plan:
    """What the retention rule keeps, trims and collects (module docstring). ``whole``: reasons
    to keep a version whole besides being one of the ``keep_last`` newest (pinned, a run in
    flight); ``champions``: reasons a champion needs a version's data; ``protected``: paths that
    stay wherever they are (a champion's model and export)."""
    protected = {Path(p) for p in protected}
    registered = [v for v in found.versions if v.state == "registered"]
    newest = {v.key for v in registered[len(registered) - keep_last :]} if keep_last else set()
    seen = set(found.inodes)
    decisions = []
    for version in found.versions:
        key, outputs = version.key, version.outputs
        reasons = ([f"one of the {keep_last} newest"] if key in newest else []) + whole.get(key, [])
        if version.state == "unregistered":
            decision = Decision(version, "keep", ["not a registered version"], [])
        elif version.state == "collected":
            decision = Decision(version, "finish", ["collected before"], outputs)
        elif reasons:
            decision = Decision(version, "keep", reasons, [])
        elif key in champions or any(within(p, o.path) for p in protected for o in outputs):
            data = [o for o in outputs if o.label == "snapshot" or "/" not in o.label]
            gone = [part for o in outputs if o not in data for part in trimmed(o, protected, seen)]
            why = champions.get(key, ["holds a champion's model"])
            decision = Decision(version, "trim", why, gone)
        else:
            why = f"not one of the {keep_last} newest, not pinned nor needed by a champion or run"
            decision = Decision(version, "collect", [why], outputs)
        decisions.append(decision)
    kept = set(found.base).union(
        *(d.version.shas for d in decisions if d.action in ("keep", "trim"))
    )
    young = (now_ns or time.time_ns()) - grace_s * 1e9
    objects = {
        sha: size
        for sha, (size, mtime_ns) in found.objects.items()
        if sha not in kept and mtime_ns < young
    }
    return Plan(decisions, objects)


def discard(path: Path, trash: Path) -> None:
    """Remove the file or folder ``path``: renamed into ``trash`` first, so that no reader ever
    sees part of it, then deleted."""
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / uuid.uuid4().hex
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return
    except OSError:  # another file system: delete it where it is
        target = path
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def empty_trash(trash: Path) -> None:
    for entry in sorted(trash.iterdir()) if trash.is_dir() else ():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def live_shas(layout: Layout) -> set[str]:
    """The objects registered, uncollected versions and base models name, read from disk now."""
    store, live = layout.store, set()
    for folder in subfolders(store.root / "versions"):
        manifest = store.manifest_path(folder.name)
        if manifest.exists() and not (folder / TOMBSTONE).exists():
            live.update(e["sha256"] for e in manifest_files(manifest))
    for path in layout.base_manifests:
        live.update(e["sha256"] for e in manifest_files(path))
    return live


def collect(
    layout: Layout, todo: Plan, forget: Callable[[str], None] = lambda key: None
) -> tuple[int, int]:
    """Carry out ``todo`` in the order the module docstring gives; returns the bytes freed and
    the number of objects removed."""
    store = layout.store
    empty_trash(layout.trash)
    for d in todo.decisions:
        key = d.version.key
        if d.action == "collect":
            record = {
                "version": key,
                "collected_at": now_iso(),
                "reason": d.reasons[0],
                "removed": sorted({o.label for o in d.remove}),
                "files": d.version.files,
                "bytes": d.bytes + d.version.unique_bytes,
            }
            write_bytes(
                store.version_dir(key) / TOMBSTONE,
                orjson.dumps(record, option=orjson.OPT_INDENT_2),
            )
        if d.action in ("collect", "finish"):
            forget(key)
        for output in d.remove:
            discard(output.path, layout.trash)
    live = live_shas(layout)
    gone = [sha for sha in todo.objects if sha not in live]
    for sha in gone:
        store.object_path(sha).unlink(missing_ok=True)
    empty_trash(layout.trash)
    freed = sum(d.bytes for d in todo.decisions) + sum(todo.objects[sha] for sha in gone)
    return freed, len(gone)


def pin_path(store: Store, key: str) -> Path:
    if not key.isalnum():
        raise ValueError(f"{key!r} is not a dataset version key")
    return store.root / PINS / key


def pin(store: Store, key: str) -> None:
    """Keep version ``key`` whatever the retention rule says, until it is unpinned."""
    store.refuse_collected(key)
    if not store.manifest_path(key).exists():
        raise ValueError(f"{key} is not a registered dataset version (no manifest in the store)")
    write_bytes(pin_path(store, key), orjson.dumps({"pinned_at": now_iso()}))


def unpin(store: Store, key: str) -> bool:
    """Whether ``key`` was pinned; it no longer is."""
    path = pin_path(store, key)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def pinned(store: Store) -> list[str]:
    folder = store.root / PINS
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@dataclass(frozen=True)
class Damaged:
    sha256: str  # the name the object has
    found: str  # what its bytes hash to, or why they could not be read
    moved_to: Path


def hash_names(paths: list[str]) -> list[str]:
    """The sha256 of each file, or why it could not be read."""
    found = []
    for path in paths:
        try:
            found.append(hash_file(path))
        except OSError as error:
            found.append(f"unreadable: {error}")
    return found


def verify(
    store: Store, sample: int | None = None, workers: int | None = None, seed: int | None = None
) -> tuple[int, list[Damaged]]:
    """Hash every object (or ``sample`` of them, drawn at random) and move those whose bytes no
    longer match their name (or folder) to ``<store>/quarantine/``; returns how many were
    checked and the damaged ones. Threads hash in parallel: hashlib releases the GIL."""
    paths = sorted(entry.path for entry in stored_objects(store))
    if sample is not None and sample < len(paths):
        paths = random.Random(seed).sample(paths, sample)
    batches = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        found = [sha for shas in pool.map(hash_names, batches) for sha in shas]
    damaged = []
    for path, sha in zip(paths, found, strict=True):
        folder, name = path.rsplit(os.sep, 2)[-2:]
        if sha != name or folder != name[:2]:
            damaged.append(Damaged(name, sha, quarantine(store, Path(path))))
    return len(paths), damaged


def quarantine(store: Store, path: Path) -> Path:
    folder = store.root / QUARANTINE
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 0
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    os.replace(path, target)
    return target


def users(store: Store, shas: set[str]) -> dict[str, list[str]]:
    """The ``version:path`` places in registered versions that name each of ``shas``."""
    found: dict[str, list[str]] = {sha: [] for sha in shas}
    for folder in subfolders(store.root / "versions"):
        if store.manifest_path(folder.name).exists() and store.collected(folder.name) is None:
            for e in store.manifest(folder.name):
                if e.sha256 in found:
                    found[e.sha256].append(f"{folder.name}:{e.path}")
    return found
