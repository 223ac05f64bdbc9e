"""Dataset version hashing, cold (every file hashed) and warm (the hash cache answers).

Run alone: ``.venv/bin/python benchmarks/versions.py [--files 20000 --kb 48 --repeat 5]``; it
is also one row group of ``benchmarks/formats.py``. Before each cold scan the files are evicted
from the page cache (``posix_fadvise(DONTNEED)`` after a sync), so cold means read from disk, as
it is for a new drop; the hash cache is new for every cold scan.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from ml_assets.data.store import HashCache, manifest_key, scan, walk


def make_files(folder: Path, files: int, size: int, seed: int = 0) -> Path:
    """``files`` files of ``size`` random bytes (the size of a small JPEG) in 100 subfolders."""
    rng = random.Random(seed)
    for i in range(files):
        path = folder / f"d{i % 100:02d}" / f"f{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return folder


def evict(folder: Path) -> None:
    """Drop ``folder``'s files from the page cache, so the next read comes from disk."""
    os.sync()
    for _, entry in walk(folder):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_versioning(folder: Path, repeat: int) -> dict[str, float]:
    """Median seconds of a cold scan, a warm scan and a bare stat-only walk of ``folder``."""
    cold, warm, stat = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            cache_path = Path(tmp) / f"cache{i}.json"
            evict(folder)
            started = time.perf_counter()
            key = manifest_key(scan(folder, HashCache(cache_path)))
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert manifest_key(scan(folder, HashCache(cache_path))) == key
            warm.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _, entry in walk(folder):
                entry.stat()
            stat.append(time.perf_counter() - started)
    return {
        "cold": statistics.median(cold),
        "warm": statistics.median(warm),
        "stat_walk": statistics.median(stat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--kb", type=int, default=48, help="size of each file in KiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write (default: a temp folder)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        files = make_files(Path(tmp), args.files, args.kb * 1024)
        time.sleep(HashCache.RACY_NS / 1e9)  # files younger than this are never cached
        seconds = time_versioning(files, args.repeat)
    print(f"{'step':<24}{'seconds':>10}{'ratio':>10}")
    for name, value in seconds.items():
        print(f"{'version hashing ' + name:<24}{value:>10.3f}{seconds['cold'] / value:>9.1f}x")


if __name__ == "__main__":
    main()
