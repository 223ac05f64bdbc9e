"""Format conversion benchmark: ours against ultralytics' convert_coco and a plain-I/O floor.

    .venv/bin/python benchmarks/formats.py [--images 20000 --boxes 200000 --repeat 5
                                            --files 20000 --kb 48 --workdir DIR]
                                           [--tasks 'coco->yolo,validate' --no-versions]

``--tasks`` picks the conversions to time (convert_coco and floor always run, as the yardsticks);
``--no-versions`` leaves out version hashing: both for quicker runs while iterating.

Generates a synthetic COCO dataset (tiny distinct PNGs, boxes with 1..90 category ids with gaps),
then times, each run in a fresh subprocess, the median of ``--repeat`` runs (taken round-robin
over the tasks) of:

- ``coco->yolo``, ``yolo->coco``, ``coco->voc``: ``ml_assets.data.formats.convert``;
- ``validate``: ``validate_source`` on the COCO folder (tables and image files);
- ``convert_coco``: ``ultralytics.data.converter.convert_coco(cls91to80=False)`` on the same file;
- ``floor``: ``orjson.loads`` of the file plus writing as many label files, with the same bytes,
  as ``coco->yolo`` writes.

Then, in this process, dataset version hashing from ``benchmarks/versions.py`` on ``--files``
random files of ``--kb`` KiB: cold (page cache evicted, fresh hash cache), warm (the hash cache
answers) and a bare stat walk, each the median of ``--repeat`` runs.

Times cover the work only, not interpreter start-up and imports. Peak memory is the child's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the same figure the parent would read through
RUSAGE_CHILDREN for a single child); "above imports" subtracts the child's resident size measured
just before the work starts, which is what the work itself added.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is a folder of scripts, no package
from versions import make_files, time_versioning  # noqa: E402

TASKS = ["coco->yolo", "yolo->coco", "coco->voc", "validate", "convert_coco", "floor"]


def generate(root: Path, images: int, boxes: int, seed: int = 0) -> Path:
    """A COCO folder ``root/src`` with ``images`` tiny PNGs and ``boxes`` annotations."""
    import numpy as np
    import orjson
    from PIL import Image

    src = root / "src"
    if (src / "annotations.json").is_file():
        return src
    rng = np.random.default_rng(seed)
    (src / "images").mkdir(parents=True, exist_ok=True)
    width, height = 64, 48
    for i in range(images):
        color = (i % 256, (i // 256) % 256, (i // 65536) % 256)
        Image.new("RGB", (width, height), color).save(src / "images" / f"{i:06d}.png")
    category_ids = [c for c in range(1, 91) if c % 7]
    image_ids = rng.integers(0, int(images * 0.98), size=boxes)  # ~2% of images without boxes
    w = np.round(rng.uniform(1, width / 2, boxes), 3)
    h = np.round(rng.uniform(1, height / 2, boxes), 3)
    x = np.round(rng.uniform(0, 1, boxes) * (width - w), 3)
    y = np.round(rng.uniform(0, 1, boxes) * (height - h), 3)
    cats = rng.choice(category_ids, size=boxes)
    document = {
        "info": {"description": "synthetic"},
        "licenses": [],
        "images": [
            {"id": i, "file_name": f"{i:06d}.png", "width": width, "height": height}
            for i in range(images)
        ],
        "annotations": [
            {
                "id": n + 1,
                "image_id": int(image_ids[n]),
                "category_id": int(cats[n]),
                "bbox": [float(x[n]), float(y[n]), float(w[n]), float(h[n])],
                "area": round(float(w[n] * h[n]), 4),
                "iscrowd": 0,
                "segmentation": [],
            }
            for n in range(boxes)
        ],
        "categories": [
            {"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in category_ids
        ],
    }
    (src / "annotations.json").write_bytes(orjson.dumps(document))
    return src


def run_task(task: str, workdir: Path, out: Path) -> None:
    """Run one task in this process and print {"seconds", "peak_kb", "base_kb"} as JSON."""
    import ml_assets  # noqa: F401  (configures the offline environment)
    from ml_assets.data.formats import convert
    from ml_assets.data.validate import validate_source

    src = workdir / "src"
    if task == "convert_coco":
        from ultralytics.data.converter import convert_coco

        from ml_assets.runtime import ultralytics_ready

        ultralytics_ready()
    base_kb = _rss_kb()
    start = time.perf_counter()
    if task == "coco->yolo":
        convert(src, out, to="yolo", from_="coco")
    elif task == "yolo->coco":
        convert(workdir / "yolo", out, to="coco", from_="yolo")
    elif task == "coco->voc":
        convert(src, out, to="voc", from_="coco")
    elif task == "validate":
        validate_source(src, "coco")
    elif task == "convert_coco":
        convert_coco(labels_dir=str(src), save_dir=str(out), cls91to80=False)
    elif task == "floor":
        _floor(src / "annotations.json", workdir / "yolo" / "labels", out)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_kb": peak_kb, "base_kb": base_kb}))


def _floor(annotation_file: Path, labels: Path, out: Path) -> None:
    import orjson

    orjson.loads(annotation_file.read_bytes())
    sizes = [p.stat().st_size for p in sorted(labels.rglob("*.txt"))]
    out.mkdir(parents=True)
    payload = b"0 0.5 0.5 0.25 0.25\n" * (max(sizes, default=0) // 20 + 1)
    for i, size in enumerate(sizes):
        with open(out / f"{i:06d}.txt", "wb") as handle:
            handle.write(payload[:size])


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _child(task: str, workdir: Path, out: Path) -> dict[str, float]:
    """Run one task in a fresh interpreter whose ml_assets home is inside ``workdir``."""
    env = {**os.environ, "ML_ASSETS_HOME": str(workdir / "home")}
    command = [
        sys.executable,
        __file__,
        "--task",
        task,
        "--workdir",
        str(workdir),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise SystemExit(f"{task} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(tasks: list[str], workdir: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Each task ``repeat`` times, round-robin, so that a noisy stretch hits every task alike."""
    runs: dict[str, list[dict[str, float]]] = {task: [] for task in tasks}
    for n in range(repeat):
        for task in tasks:
            out = workdir / "out" / f"{task.replace('->', '_to_')}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # outputs are deleted only at the end: pending deletes would slow creation
            runs[task].append(_child(task, workdir, out))
    return {
        task: {
            "seconds": statistics.median(r["seconds"] for r in found),
            "peak_mb": max(r["peak_kb"] for r in found) / 1024,
            "added_mb": max(r["peak_kb"] - r["base_kb"] for r in found) / 1024,
        }
        for task, found in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--boxes", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--files", type=int, default=20_000, help="files for version hashing")
    parser.add_argument("--kb", type=int, default=48, help="size of each of those files in KiB")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help="comma-separated subset of: " + ", ".join(TASKS)
    )
    parser.add_argument("--no-versions", action="store_true", help="skip version hashing")
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.tasks.split(",")) - set(TASKS)
    if unknown:
        parser.error(f"unknown tasks: {', '.join(sorted(unknown))}")
    if args.task:
        run_task(args.task, args.workdir, args.out)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ml_assets_bench."))
    workdir.mkdir(parents=True, exist_ok=True)
    src = generate(workdir, args.images, args.boxes)
    json_mb = (src / "annotations.json").stat().st_size / 2**20
    if not (workdir / "yolo").is_dir():  # the input of yolo->coco and the floor's file sizes
        _child("coco->yolo", workdir, workdir / "yolo")
    print(
        f"{args.images} images, {args.boxes} boxes, COCO file {json_mb:.1f} MiB, workdir {workdir}"
    )
    print(f"median of {args.repeat} runs, each in a fresh subprocess; peak = child ru_maxrss\n")
    tasks = [t for t in TASKS if t in args.tasks.split(",") or t in ("convert_coco", "floor")]
    results = measure(tasks, workdir, args.repeat)
    shutil.rmtree(workdir / "out")
    reference, floor = results["convert_coco"]["seconds"], results["floor"]["seconds"]
    header = f"{'task':<14}{'seconds':>9}{'vs convert_coco':>17}{'vs floor':>10}{'peak MiB':>10}{'above imports':>15}{'x JSON':>8}"
    print(header)
    print("-" * len(header))
    for task, r in results.items():
        print(
            f"{task:<14}{r['seconds']:>9.2f}{r['seconds'] / reference:>17.2f}{r['seconds'] / floor:>10.2f}"
            f"{r['peak_mb']:>10.0f}{r['added_mb']:>15.0f}{r['added_mb'] / json_mb:>8.2f}"
        )
    if "coco->yolo" in results:
        speedup = reference / results["coco->yolo"]["seconds"]
        print(
            f"\ncoco->yolo is {speedup:.1f}x faster than convert_coco (goal >= 3x), "
            f"{results['coco->yolo']['seconds'] / floor:.2f}x the floor (goal <= 1.5x)\n"
        )
    if args.no_versions:
        return
    versions = workdir / "versions"
    shutil.rmtree(versions, ignore_errors=True)
    seconds = time_versioning(make_files(versions, args.files, args.kb * 1024), args.repeat)
    shutil.rmtree(versions)
    rows = {"cold (from disk)": "cold", "warm (hash cache)": "warm", "stat walk": "stat_walk"}
    header = f"{f'version hashing, {args.files} files of {args.kb} KiB':<44}{'seconds':>9}{'vs cold':>10}"
    print(header)
    print("-" * len(header))
    for label, key in rows.items():
        print(f"{label:<44}{seconds[key]:>9.3f}{seconds['cold'] / seconds[key]:>9.1f}x")
    print(f"\nwarm is {seconds['cold'] / seconds['warm']:.1f}x faster than cold (goal >= 20x)")


if __name__ == "__main__":
    main()
