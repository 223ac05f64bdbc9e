"""The prediction server against a bare onnxruntime loop over the same images, in one run.

Run: ``.venv/bin/python benchmarks/serving.py [--requests 1000] [--clients 1 4 16]``.

Trains the demo's classifier and detector (their demo settings, one epoch) on 96-pixel sample
images in a temporary home, exports and promotes them, and starts ``ml-assets serve`` on a free
loopback port (a process of its own). For each kind and each number of concurrent clients
(threads with one keep-alive connection each), ``--requests`` requests of one PNG image go to
``POST /predict/<kind>``: throughput and p50/p99 latency. The bare loop runs the same champion's
``preprocess`` and ``session.run`` on the same images, already decoded, one at a time in a fresh
process that, like the server, never imports torch (this one trained the models): the server's
overhead is its p50 minus the bare p50, its throughput ratio over the bare loop's. The server's resident memory (RSS) is read before and after each row's requests.
Goals (issue 19): p50 overhead <= 3 ms at 1 client; throughput at 16 clients >= 0.8x the bare
loop's; memory flat.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1] / "ml_assets_tests"))  # the tests' helpers
from servers import free_port, wait_for  # noqa: E402
from test_serve import champion  # noqa: E402

from ml_assets.data.formats import read_dataset  # noqa: E402
from ml_assets.data.sample import write_sample  # noqa: E402
from ml_assets.defs.resources import MLAssetsHome  # noqa: E402
from ml_assets.train.classifier import ClassifierConfig  # noqa: E402
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER  # noqa: E402
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR  # noqa: E402
from ml_assets.train.yolo import YoloConfig  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, kind: str, bodies: list[bytes], requests: int, clients: int):
    """``requests`` requests from ``clients`` threads; (seconds, latencies in seconds)."""
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in counter:
            started = time.perf_counter()
            conn.request("POST", f"/predict/{kind}", bodies[i % len(bodies)],
                         {"content-type": "image/png"})  # fmt: skip
            answer = conn.getresponse()
            answer.read()
            mine.append(time.perf_counter() - started)
            if answer.status != 200:
                errors.append(answer.status)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests: {sorted(set(errors))}")
    return time.perf_counter() - started, latencies


BARE = """
import json, sys, time
import numpy as np
from PIL import Image
from ml_assets.serve.models import load_champion
from ml_assets.train.export import preprocess

home, kind, requests, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
served = load_champion(home, kind)
images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
name, pre = served.info["inputs"][0], served.info["preprocessing"]
runs = 2 if served.lineage.get("config", {}).get("tta") else 1  # the classifier's flip TTA
def loop(n):
    latencies, started = [], time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        x = preprocess(pre, [images[i % len(images)]])
        for _ in range(runs):
            served.session.run(None, {name: x})
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - started, latencies
loop(50)  # warm up
seconds, latencies = loop(requests)
json.dump({"seconds": seconds, "latencies": latencies, "torch": "torch" in sys.modules}, sys.stdout)
"""


def bare(home: Path, kind: str, files: list[Path], requests: int) -> tuple[float, list[float]]:
    """The champion's own work on decoded images, one at a time (preprocess and session.run),
    in a fresh process that never imports torch, like the server's: (seconds, latencies)."""
    command = [sys.executable, "-c", BARE, str(home), kind, str(requests), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the bare loop failed:\n{done.stderr}")
    found = json.loads(done.stdout)
    assert not found["torch"], "the bare loop imported torch"
    return found["seconds"], found["latencies"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--server-args", nargs=argparse.REMAINDER, default=[],
        help="the rest goes to ml-assets serve (e.g. --threads 1)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = read_dataset(write_sample(root / "shapes", 60, seed=0, size=96))
        paths = MLAssetsHome(root=str(root / "home"))
        print("training and exporting the demo's classifier and detector (one epoch)...")
        champion(paths, IMAGE_CLASSIFIER, ds, ClassifierConfig(epochs=1), "v1")
        champion(paths, YOLO_DETECTOR, ds, YoloConfig(epochs=1, imgsz=96, batch=32), "v1")
        files = sorted((root / "shapes" / "images").glob("*.png"))[:32]
        bodies = [f.read_bytes() for f in files]
        port = free_port()
        command = [sys.executable, "-c", "from ml_assets.cli import main; main()", "serve"]
        server = subprocess.Popen(
            [*command, "--home", str(paths.path), "--port", str(port), *args.server_args],
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        rows = []
        try:

            def ready():
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/ready")
                    return conn.getresponse().status == 200
                except OSError:
                    return False

            wait_for("the server", ready, timeout=120, every=0.3, process=server)
            for kind in ("image_classifier", "yolo_detector"):
                load(port, kind, bodies, 50, 1)  # warm up
                bare_seconds, bare_latencies = bare(paths.path, kind, files, args.requests)
                bare_rate = args.requests / bare_seconds
                bare_p50 = statistics.median(bare_latencies) * 1000
                for clients in args.clients:
                    before = rss_mb(server.pid)
                    seconds, latencies = load(port, kind, bodies, args.requests, clients)
                    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
                    rate = args.requests / seconds
                    rows.append(
                        {
                            "kind": kind,
                            "clients": clients,
                            "req/s": round(rate, 1),
                            "p50 ms": round(p50, 2),
                            "p99 ms": round(p99, 2),
                            "bare req/s": round(bare_rate, 1),
                            "bare p50 ms": round(bare_p50, 2),
                            "p50 overhead ms": round(p50 - bare_p50, 2),
                            "req/s vs bare": round(rate / bare_rate, 2),
                            "RSS before MB": round(before, 1),
                            "RSS after MB": round(rss_mb(server.pid), 1),
                        }
                    )
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\n{args.requests} requests of one 96x96 PNG per row, server and clients on loopback:")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
