"""`ml-assets store` at scale, against the bare listing and the hashing tool it cannot beat.

Run: ``.venv/bin/python benchmarks/store.py [--versions 50 --files 10000 --kb 4 --repeat 3]``.

Builds a home of ``--versions`` dataset versions of ``--files`` files of ``--kb`` KiB each, every
version sharing 90% of its objects with the others (the other 10% are its own), through the
store's own functions: the objects are added once, each version is registered from its entries
and ingested into a snapshot of hard links; each version also gets tables, folds, a fold model and
a report where MLAssetsHome puts them, and a partition in a Dagster instance ($DAGSTER_HOME).

- ``store status`` and ``store gc --dry-run`` (the commands, in this process) against a bare
  ``os.scandir`` + ``stat`` walk of the store (goal: at most 2x);
- ``store verify`` against ``find objects -type f -print0 | xargs -0 -P <cores> -n 1000
  sha256sum`` over the same objects (goal: at least 0.9x its speed), and the same hashing in one
  thread: what the threads bring on this machine.

Times are medians of ``--repeat`` runs, the reference and the command taken in turns, in seconds;
the ratio column divides by the reference (for verify, the reference's time by ours: a speed).
Everything is written to a temporary folder, in memory (``/dev/shm``) where there is one
(``--workdir`` chooses another place), and removed at the end.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is a folder of scripts, no package
from sensor import bare_walk, compared, test_instance  # noqa: E402

from ml_assets.cli import main as cli  # noqa: E402
from ml_assets.data import retention  # noqa: E402
from ml_assets.data.store import Entry  # noqa: E402
from ml_assets.defs.partitions import dataset_versions  # noqa: E402
from ml_assets.defs.resources import MLAssetsHome  # noqa: E402
from ml_assets.local.store import store as store_group  # noqa: E402

SHARED = 0.9


def content(version: int, i: int, size: int) -> bytes:
    """File ``i`` of ``version``: the common bytes, except in the version's own tenth."""
    own = i % 10 == version % 10
    tag = f"{version if own else -1}:{i}".encode()
    return (tag * (size // len(tag) + 1))[:size]


def build_home(root: Path, versions: int, files: int, size: int) -> tuple[MLAssetsHome, list]:
    home = MLAssetsHome(root=str(root))
    store = home.store
    added, keys = {}, []
    for v in range(versions):
        entries = []
        for i in range(files):
            data = content(v, i, size)
            if data not in added:
                added[data] = store.add(lambda data=data: io.BytesIO(data))[0]
            entries.append(Entry(f"images/d{i % 100:02d}/f{i:06d}.jpg", added[data], size))
        key = store.register(root / "landing" / f"drop{v}", entries)
        store.ingest(key)  # every object is there: a snapshot of hard links
        stamp = (1_700_000_000 + 60 * v) * 10**9
        os.utime(store.manifest_path(key), ns=(stamp, stamp))
        for path, n in (
            (home.tables_dir(key) / "annotations.parquet", 64_000),
            (home.folds_path(key), 8_000),
            (home.model_dir("image_classifier", key, 0) / "weights.pt", 500_000),
            (home.report_dir("image_classifier", key) / "report.json", 4_000),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * n)
        keys.append(key)
    return home, keys


def command(*args: str):
    def run():
        result = CliRunner().invoke(cli, ["store", *args])
        assert result.exit_code == 0, result.output
        return result.output

    return run


def sha256sum(objects: Path):
    cores = os.cpu_count() or 1
    line = f"find {objects} -type f -print0 | xargs -0 -P {cores} -n 1000 sha256sum >/dev/null"
    return lambda: subprocess.run(line, shell=True, check=True)


def rows(tmp: Path, versions: int, files: int, kb: int, repeat: int) -> list[tuple]:
    started = time.perf_counter()
    home, keys = build_home(tmp / "home", versions, files, kb * 1024)
    objects = home.store.root / "objects"
    count = sum(1 for _ in objects.rglob("*") if _.is_file())
    built = f"home built: {versions} versions x {files} files, {count} objects"
    result = [(built, time.perf_counter() - started)]
    os.environ["ML_ASSETS_HOME"] = str(home.path)
    os.environ["DAGSTER_HOME"] = str(tmp / "dagster")
    cli.add_command(store_group)
    with test_instance(tmp / "dagster") as instance:
        instance.add_dynamic_partitions(dataset_versions.name, keys)
        walk = lambda: bare_walk(str(home.store.root))  # noqa: E731
        bare, status, n = compared(walk, command("status"), repeat)
        result.append((f"bare scandir+stat walk of the store, {n} files", bare, 1.0))
        result.append(("store status", status, status / bare))
        _, gc, _ = compared(walk, command("gc", "--dry-run"), repeat)
        result.append(("store gc --dry-run (keep the 5 newest)", gc, gc / bare))
        tool, ours, _ = compared(sha256sum(objects), command("verify"), repeat)
        mb = count * kb / 1024
        cores = os.cpu_count()
        result.append((f"sha256sum, {cores} processes ({mb / tool:.0f} MiB/s)", tool, 1.0))
        result.append((f"store verify, {cores} threads ({mb / ours:.0f} MiB/s)", ours, tool / ours))
        one = lambda: retention.verify(home.store, workers=1)  # noqa: E731
        tool, ours, _ = compared(sha256sum(objects), one, repeat)
        result.append((f"the same, 1 thread ({mb / ours:.0f} MiB/s)", ours, tool / ours))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--kb", type=int, default=4, help="size of every file in KiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the home")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    workdir = args.workdir or (shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")  # Dagster's preview warnings
    with tempfile.TemporaryDirectory(prefix="ml_assets_bench_store_", dir=workdir) as tmp:
        table = rows(Path(tmp), args.versions, args.files, args.kb, args.repeat)
    print(f"{'step':<58}{'seconds':>10}{'ratio':>8}")
    for name, seconds, *ratio in table:
        print(f"{name:<58}{seconds:>10.3f}{(f'{ratio[0]:.2f}' if ratio else ''):>8}")
    print(f"home written under {workdir or tempfile.gettempdir()}")
    print(
        "goals: status and gc --dry-run at most 2x the bare walk (ratio <= 2.00); verify at "
        "least 0.9x the speed of sha256sum (ratio >= 0.90)"
    )


if __name__ == "__main__":
    main()
