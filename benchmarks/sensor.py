"""Landing sensor ticks at scale, against the bare listing they cannot beat, in one run.

Run: ``.venv/bin/python benchmarks/sensor.py [--files 100000 --objects 10000 --repeat 5]``.

- Local: a landing folder of ``--files`` small files. A tick with nothing changed is compared
  with a bare ``os.scandir`` + ``stat`` walk of the same tree (goal: at most 2x).
- S3: ``--objects`` objects on a moto server on loopback (started and stopped here). A tick with
  nothing changed is compared with a bare paginated ``list_objects_v2`` (goal: at most 2x).
- New files: 0, 100 and 10,000 new files (S3: 100 new objects) are added to the registered
  landing; the two ticks that follow (the one that sees the change and waits, and the one that
  registers the new version) are timed: their cost grows with the new files, not with all.

Times are medians of ``--repeat`` runs, the bare listing and the tick taken in turns so that the
machine's load weighs on both alike (S3: at most 3 runs, and one for the ticks with new objects:
moto lists slowly), in seconds; the ratio column divides by the bare listing. Everything is
written to a temporary folder, in memory (``/dev/shm``) where there is one so that removing
100,000 files takes seconds, not minutes (``--workdir`` chooses another place); it is removed at
the end, and the moto server is stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from ml_assets.data.store import HashCache
from ml_assets.defs import automation
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

sys.path.insert(0, str(Path(__file__).parents[1] / "ml_assets_tests"))  # the tests' servers
from servers import moto_server  # noqa: E402


def bare_walk(root: str) -> int:
    """Every regular file below ``root`` stat-ed once: what any change detection must do."""
    count, stack = 0, [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                else:
                    entry.stat()
                    count += 1
    return count


def bare_list(client, bucket: str, prefix: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(len(page.get("Contents", ())) for page in pages)


def test_instance(folder: Path):
    folder.mkdir(parents=True)  # instance_for_test(temp_dir=...) needs it to exist
    return dg.instance_for_test(temp_dir=str(folder))


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def compared(bare, tick, repeat: int) -> tuple[float, float, object]:
    """Medians of ``bare()`` and ``tick()`` run in turns, so that a change in the machine's
    load weighs on both alike; returns them and what ``bare()`` returned."""
    bare_times, tick_times, result = [], [], None
    for _ in range(repeat):
        seconds, result = timed(bare, 1)
        bare_times.append(seconds)
        tick_times.append(timed(tick, 1)[0])
    return statistics.median(bare_times), statistics.median(tick_times), result


class Sensor:
    """The landing sensor as the daemon runs it: one instance, the cursor carried over, new
    versions added as dynamic partitions between ticks."""

    def __init__(self, instance, home: MLAssetsHome):
        self.instance, self.home, self.cursor = instance, home, None

    def tick(self):
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"home": self.home}
        ) as context:
            result = automation.landing_sensor(context)
        self.cursor = result.cursor
        keys = [r.partition_key for r in result.run_requests]
        self.instance.add_dynamic_partitions(dataset_versions.name, keys)
        return keys

    def settle(self) -> list[str]:
        """Tick until a version is registered (two ticks for a new drop)."""
        for _ in range(3):
            if keys := self.tick():
                return keys
        raise RuntimeError("the sensor registered nothing")

    def new_files_ticks(self, add, repeat: int) -> tuple[float, float]:
        """Seconds of the tick that sees ``add()``'s files and of the one that registers them."""
        seeing, registering = [], []
        for _ in range(repeat):
            add()
            started = time.perf_counter()
            assert not self.tick()
            seeing.append(time.perf_counter() - started)
            started = time.perf_counter()
            self.tick()
            registering.append(time.perf_counter() - started)
        return statistics.median(seeing), statistics.median(registering)


def write_files(folder: Path, count: int, start: int = 0, tag: str = "f") -> None:
    for i in range(start, start + count):
        path = folder / f"d{i % 100:02d}" / f"{tag}{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "little") * 8)


def local_rows(tmp: Path, files: int, repeat: int) -> list[tuple]:
    landing = tmp / "landing"
    write_files(landing / "images", files)
    (landing / "annotations.json").write_text("{}")  # the root is one dataset
    time.sleep(HashCache.RACY_NS / 1e9)  # files younger than this are never cached
    home = MLAssetsHome(root=str(tmp / "home"), landing=str(landing))
    rows = []
    with test_instance(tmp / "dagster") as instance:
        sensor = Sensor(instance, home)
        started = time.perf_counter()
        sensor.settle()
        rows.append((f"local: first version, {files} files hashed", time.perf_counter() - started))
        bare, tick, count = compared(lambda: bare_walk(str(landing)), sensor.tick, repeat)
        assert count == files + 1
        rows.append((f"local: bare scandir+stat walk, {count} files", bare, 1.0))
        rows.append(("local: sensor tick, nothing changed", tick, tick / bare))
        added = files
        for new in (0, 100, 10_000):

            def add(new=new):
                nonlocal added
                write_files(landing / "new", new, added, tag="n")
                added += new

            seeing, registering = sensor.new_files_ticks(add, 1 if new else repeat)
            rows.append((f"local: {new} new files, tick that sees them", seeing, seeing / bare))
            rows.append(
                (f"local: {new} new files, tick that registers", registering, registering / bare)
            )
    return rows


def s3_rows(tmp: Path, objects: int, repeat: int) -> list[tuple]:
    import boto3

    rows = []
    with moto_server() as endpoint:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")

        def put(names):
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda n: client.put_object(Bucket="bench", Key=n, Body=n), names))

        put([f"landing/shapes/images/f{i:07d}.jpg" for i in range(objects)])
        put(["landing/shapes/annotations.json"])
        home = MLAssetsHome(root=str(tmp / "s3home"), landing="s3://bench/landing")
        with test_instance(tmp / "s3dagster") as instance:
            sensor = Sensor(instance, home)
            started = time.perf_counter()
            sensor.settle()
            rows.append(
                (f"s3: first version, {objects} objects copied", time.perf_counter() - started)
            )
            listing = lambda: bare_list(client, "bench", "landing/")  # noqa: E731
            bare, tick, count = compared(listing, sensor.tick, repeat)
            assert count == objects + 1
            rows.append((f"s3: bare paginated list_objects_v2, {count} objects", bare, 1.0))
            rows.append(("s3: sensor tick, nothing changed", tick, tick / bare))
            added = 0
            for new in (100,):  # 0 new objects is the unchanged tick above

                def add(new=new):
                    nonlocal added
                    put([f"landing/shapes/new/n{i:07d}.jpg" for i in range(added, added + new)])
                    added += new

                seeing, registering = sensor.new_files_ticks(add, 1)
                rows.append((f"s3: {new} new objects, tick that sees them", seeing, seeing / bare))
                rows.append(
                    (f"s3: {new} new objects, tick that registers", registering, registering / bare)
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the trees")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    workdir = args.workdir or (shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    logging.disable(logging.INFO)  # the sensor logs one line per tick
    warnings.filterwarnings("ignore")  # Dagster's preview warnings
    with tempfile.TemporaryDirectory(prefix="ml_assets_bench_sensor_", dir=workdir) as tmp:
        rows = local_rows(Path(tmp), args.files, args.repeat)
        rows += s3_rows(Path(tmp), args.objects, min(args.repeat, 3))  # moto lists slowly
    print(f"{'step':<58}{'seconds':>10}{'ratio':>8}")
    for name, seconds, *ratio in rows:
        print(f"{name:<58}{seconds:>10.3f}{(f'{ratio[0]:.2f}' if ratio else ''):>8}")
    print(f"trees written under {workdir or tempfile.gettempdir()}")
    print("goal: a tick with nothing changed costs at most 2x the bare listing (ratio <= 2.00)")


if __name__ == "__main__":
    main()
