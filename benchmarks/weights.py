"""Pulling pretrained weights: `weights pull` of a large file against `curl -o`, and a second pull.

- A ``--mb`` MB file (random bytes) is served on loopback by :class:`FileServer` (``sendfile``,
  ``Range`` requests; the weights tests use it too), in a process of its own so that it takes
  no time from the process that pulls.
- ``curl -s -o`` of its URL and ``ml_assets.data.weights.pull`` of the same URL into a fresh
  store are taken in turns, ``--repeat`` times; the ratio column divides curl's median time by
  the pull's (throughput ratio; goal: at least 0.90). The pull streams, hashes (sha256) and
  writes the file into the store; curl only writes it.
- Peak memory: growth of the process' peak RSS over the first large pull (goal: flat, a few MB
  whatever the file's size).
- A second pull of the same spec, in process (median of 50; goal: under 50 ms): a stat and the
  pin, no request. The whole ``ml-assets weights pull`` command is shown for reference
  (Python's start and imports included).

Files are written under a temporary folder (``--workdir`` chooses where), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "ml_assets_tests"))  # the tests' servers
from servers import FileServer  # noqa: E402

GOAL_RATIO = 0.9
GOAL_SECOND_S = 0.050


@contextlib.contextmanager
def served_elsewhere(root: Path) -> Iterator[str]:
    """A :class:`FileServer` of ``root`` in a process of its own; yields its URL."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(root)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(10)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_random(path: Path, mb: int) -> None:
    with open(path, "wb") as out:
        for _ in range(mb):
            out.write(os.urandom(1 << 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the files")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # the server process of served_elsewhere
        server = FileServer(args.serve)
        print(server.url, flush=True)
        server.serve_forever()
        return

    from ml_assets.data.store import Store
    from ml_assets.data.weights import pull

    def timed(step) -> float:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="ml_assets_bench_weights_", dir=args.workdir) as tmp:
        root = Path(tmp)
        (root / "served").mkdir()
        write_random(root / "served" / "weights.bin", args.mb)
        (root / "served" / "small.bin").write_bytes(b"warm-up")
        out, store = root / "curl.bin", Store(root / "home" / "store")
        with served_elsewhere(root / "served") as base:
            url = f"{base}/weights.bin"
            curl = ["curl", "-s", "-f", "-o", str(out), url]
            pull(f"{base}/small.bin", Store(root / "warm"))  # imports, first connection
            runs, growth = {"curl": [], "curl, sha256sum": [], "pull": []}, None
            for _ in range(args.repeat):  # in turns: the machine's load weighs on all alike
                runs["curl"].append(timed(lambda: subprocess.run(curl, check=True)))
                runs["curl, sha256sum"].append(
                    timed(
                        lambda: (
                            subprocess.run(curl, check=True)
                            and subprocess.run(["sha256sum", str(out)], capture_output=True)
                        )
                    )
                )
                out.unlink()
                shutil.rmtree(store.root, ignore_errors=True)
                before = peak_rss_mb()
                runs["pull"].append(timed(lambda: pull(url, store)))
                growth = peak_rss_mb() - before if growth is None else growth
            again = [timed(lambda: pull(url, store)) for _ in range(50)]
            assert not pull(url, store).fetched
            code = "import sys; from ml_assets.local.weights import weights; sys.exit(weights())"
            command = [sys.executable, "-c", code, "pull", url]
            env = os.environ | {"ML_ASSETS_HOME": str(root / "home")}
            whole = timed(lambda: subprocess.run(command, check=True, env=env, capture_output=True))
    curl_s, both_s, pull_s = (statistics.median(runs[k]) for k in runs)
    rows = [
        (f"curl -o, {args.mb} MB", curl_s, True),
        (f"curl -o, then sha256sum (a download checked by hand), {args.mb} MB", both_s, True),
        (f"weights pull, {args.mb} MB (stream, sha256, store)", pull_s, True),
        ("weights pull again, same spec (in process)", statistics.median(again), False),
        ("ml-assets weights pull again (whole command, for reference)", whole, False),
    ]
    print(f"{'step':<66}{'seconds':>10}{'MB/s':>7}{'ratio':>7}")
    for name, seconds, moved in rows:
        rate, ratio = (f"{args.mb / seconds:.0f}", f"{curl_s / seconds:.2f}") if moved else ("", "")
        print(f"{name:<66}{seconds:>10.5f}{rate:>7}{ratio:>7}")
    print(f"peak RSS growth over the first {args.mb} MB pull: {growth:.1f} MB")
    print(
        f"goal: pull throughput at least {GOAL_RATIO:.2f}x curl's (ratio = curl's time / the "
        f"step's), peak RSS flat, a second pull under {GOAL_SECOND_S * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
