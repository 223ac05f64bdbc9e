"""Training overhead benchmark: what our pipeline adds around the training libraries.

    .venv/bin/python benchmarks/training.py [--images 96 --size 96 --folds 3 --epochs 3
        --batch 16 --repeat 3 --cls-epochs 4 --cls-batch 32 --workdir DIR]

One sample dataset (``ml_assets.data.sample.write_sample``) is ingested once through Dagster
(``raw_dataset``, ``annotations``, ``folds``, ``yolo_dataset``) into a throwaway home with a
persistent Dagster instance (the repository's ``dagster.yaml``, pools included), then:

1. YOLO (``--yolo-kind``: ``yolo_detector``, or ``yolo_segmenter``, the same script with
   ``task="segment"`` and its default ``-seg`` model), fold 0 of the version, alternating the two
   in fresh subprocesses (pairs in the order
   AB, BA, AB, ... so a drifting load hits both alike), medians of ``--repeat`` each:

   - ``materialize``: ``dg.materialize`` of the ``yolo_detector`` asset alone (no checks, no
     evaluation) built by ``build_pipeline(YOLO_DETECTOR)``, with the resources of
     ml_assets_tests/test_models.py (``TrainingDevice(device="cpu")``, ``MLflowTracking()``: a
     tracked MLflow run, its artifacts and a registered model version, as users run it);
   - ``plain``: ``YOLO(model).train(...)`` in a plain script, over a ``data.yaml`` with per-fold
     image lists (``train.txt``, ``val.txt``) into a hard-linked mirror of the same export, with
     the same fold images and the keyword arguments of ``ml_assets.train.yolo.train_arguments``
     (epochs, imgsz, batch, optimizer, lr0, seed, ``amp=False``, ``deterministic=True``,
     ``val=True`` so it validates every epoch like our fit). Its label caches and run folder are
     removed before each run, as our run folder is (a finished materialization removes it).

   Times cover the call only (``dg.materialize`` vs ``YOLO(...)`` + ``.train``): torch,
   ultralytics, dagster and ml_assets are imported before the clock starts, in both processes;
   whatever the asset imports itself (mlflow) counts. "process" is the child's whole life,
   interpreter start and imports included.

2. Classifier, in one subprocess, after one warm-up run of each, round-robin, medians:

   - ``ours``: ``ml_assets.train.classifier.train_classifier`` with ``augment="none"``,
     ``label_smoothing=0`` (plain cross-entropy), no validation set, without a run folder;
   - ``ours+ckpt``: the same with a fresh run folder, so it checkpoints every epoch (the loop
     users run);
   - ``minimal``: a hand-written loop, the same timm model, batch size, epochs and crops (a
     normalized float ``TensorDataset``, shuffled), ``torch.optim.AdamW``, cross-entropy.

   images/s = epochs x crops / seconds of the whole call (model creation included, same for all).

Every measurement runs torch on ``--threads`` threads (1 by default): on a small machine shared
with other work, two OpenMP threads spin-wait for each other while the other processes hold the
cores (one classifier step took ten times the CPU with 2 threads than with 1), which measures
the scheduler rather than our code. ``--threads 0`` runs with every core, as users do.
(ultralytics' trainer sets its own CPU thread count, cores - 1, in both YOLO runs alike.) Wall
seconds are the goals' measure; CPU seconds (of the measuring process) are steadier on a busy
machine and are printed beside them.

Goals (issue 7): materialize / plain <= 1.05 wall time; ours / minimal >= 0.95 images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLD = 0
SETUP = "setup.json"
CROPS = "crops.npz"
YOLO_TASKS = ("plain", "materialize")
CLASSIFIER_TASKS = ("minimal", "ours", "ours+ckpt")


# ---------------------------------------------------------------- setup (parent process)


def prepare(workdir: Path, args: argparse.Namespace) -> dict:
    """Ingest the sample, write the plain script's data and the classifier's crops; the setup
    the children read (``workdir/setup.json``)."""
    import dagster as dg
    import numpy as np

    from ml_assets.data.folds import held_out_ids, read_folds, training_ids
    from ml_assets.data.sample import write_sample
    from ml_assets.data.tables import class_list
    from ml_assets.defs import datasets, exports
    from ml_assets.defs.datasets import load_version
    from ml_assets.defs.partitions import dataset_versions
    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.train.classifier import extract_crops

    landing = write_sample(workdir / "landing", images=args.images, seed=0, size=args.size)
    home = MLAssetsHome(root=str(workdir / "home"), landing=str(landing))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    version = home.store.register(landing)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(dataset_versions.name, [version])
        folds = datasets.build_folds(args.folds)[0]
        data = [datasets.raw_dataset, datasets.annotations, folds, exports.yolo_dataset]
        dg.materialize(
            data,
            partition_key=version,
            resources={"home": home},
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )

    ds = load_version(home, version)
    assignment, _ = read_folds(home.folds_path(version), args.folds)
    parts = {"train": training_ids(assignment, FOLD), "val": held_out_ids(assignment, FOLD)}
    plain_yaml = plain_data(ds, home.export_dir("yolo", version), parts, workdir / "plain")

    classes = [c["id"] for c in class_list(ds)]
    crops = extract_crops(ds, parts["train"], classes, size=args.cls_size)
    keep = len(crops.labels) // args.cls_batch * args.cls_batch  # full batches only
    np.savez(workdir / CROPS, images=crops.images[:keep], labels=crops.labels[:keep])
    setup = {
        "version": version,
        "folds": args.folds,
        "root": str(workdir / "home"),
        "landing": str(landing),
        "plain_yaml": str(plain_yaml),
        "train_images": len(parts["train"]),
        "val_images": len(parts["val"]),
        "yolo": {"epochs": args.epochs, "imgsz": args.size, "batch": args.batch},
        "yolo_kind": args.yolo_kind,
        "classifier": {
            "epochs": args.cls_epochs,
            "img_size": args.cls_size,
            "batch_size": args.cls_batch,
            "augment": "none",
            "label_smoothing": 0.0,
        },
        "threads": args.threads,
        "classes": len(classes),
        "crops": keep,
    }
    (workdir / SETUP).write_text(json.dumps(setup, indent=2))
    return setup


def plain_data(ds, export: Path, parts: dict[str, list[int]], dst: Path) -> Path:
    """``dst/data.yaml`` over a hard-linked mirror of ``export`` with one image list per part
    (so ultralytics' label caches land in our mirror, never in the stored export)."""
    import yaml

    from ml_assets.train.yolo import export_files

    mirror = dst / "export"
    shutil.copytree(export, mirror, copy_function=os.link)
    files = export_files(ds).set_index("image_id")["image"]
    for name, ids in parts.items():
        lines = [str(mirror / files[i]) for i in ids]
        (dst / f"{name}.txt").write_text("\n".join(lines) + "\n")
    names = yaml.safe_load((export / "data.yaml").read_text())["names"]
    config = {"train": "train.txt", "val": "val.txt", "names": names}
    (dst / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dst / "data.yaml"


# ---------------------------------------------------------------- children


def run_plain(workdir: Path, setup: dict) -> dict:
    """The plain script: ``YOLO(model).train(...)`` with our settings on the same images."""
    from ml_assets.runtime import ultralytics_ready

    ultralytics_ready()  # the same ultralytics settings (integrations off, fonts local)
    from ultralytics import YOLO

    from ml_assets.train.registry import kind
    from ml_assets.train.yolo import train_arguments

    if setup["threads"]:
        import torch

        torch.set_num_threads(setup["threads"])
    config = kind(setup["yolo_kind"]).config_class(**setup["yolo"])
    arguments = train_arguments(config)
    project = workdir / "plain" / "runs"
    shutil.rmtree(project, ignore_errors=True)
    for cache in (workdir / "plain" / "export").rglob("*.cache"):
        cache.unlink()
    started, cpu = time.perf_counter(), time.process_time()
    model = YOLO(config.model)
    model.train(
        data=setup["plain_yaml"],
        device="cpu",
        project=str(project),
        name="train",
        exist_ok=True,
        **arguments,
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu": cpu,
        "epochs": model.trainer.epoch + 1,
        "map50_95": float(model.metrics.box.map),
        "arguments": {"model": config.model, **arguments},
    }


def run_materialize(workdir: Path, setup: dict) -> dict:
    """``dg.materialize`` of the YOLO kind's asset for (version, fold 0), MLflow on."""
    import dagster as dg

    from ml_assets.defs.models import build_pipeline
    from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
    from ml_assets.defs.settings import Settings
    from ml_assets.runtime import ultralytics_ready
    from ml_assets.train.registry import kind

    ultralytics_ready()
    import ultralytics  # noqa: F401  (imported before the clock, as in the plain script)

    yolo = kind(setup["yolo_kind"])
    model = build_pipeline(yolo, Settings(folds=setup["folds"])).model
    resources = {
        "home": MLAssetsHome(root=setup["root"], landing=setup["landing"]),
        "training_device": TrainingDevice(device="cpu", threads=setup["threads"]),
        "mlflow_tracking": MLflowTracking(),
    }
    key = dg.MultiPartitionKey({"version": setup["version"], "fold": str(FOLD)})
    with dg.DagsterInstance.get() as instance:
        started, cpu = time.perf_counter(), time.process_time()
        result = dg.materialize(
            [model],
            partition_key=key,
            resources=resources,
            instance=instance,
            run_config={"ops": {yolo.name: {"config": setup["yolo"]}}},
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    (event,) = result.asset_materializations_for_node(yolo.name)
    metadata = {k: v.value for k, v in event.metadata.items()}
    return {
        "seconds": seconds,
        "cpu": cpu,
        "epochs": metadata["epochs_run"],
        "map50_95": metadata["map50_95"],
        "train_seconds": metadata["train_seconds"],
    }


def minimal_loop(images, labels, num_classes: int, config) -> int:
    """A hand-written loop: the same timm model, batch size and data, AdamW, cross-entropy."""
    import timm
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ml_assets.train.classifier import MEAN, STD

    torch.manual_seed(config.seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.from_numpy(MEAN).view(1, 3, 1, 1)) / torch.from_numpy(STD).view(1, 3, 1, 1)
    loader = DataLoader(
        TensorDataset(x, torch.from_numpy(labels)), batch_size=config.batch_size, shuffle=True
    )
    model = timm.create_model(config.model_name, pretrained=False, num_classes=num_classes)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    model.train()
    for _ in range(config.epochs):
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return config.epochs * len(labels)


def run_classifier(workdir: Path, setup: dict, repeat: int) -> dict:
    """Each loop ``repeat`` times round-robin after one warm-up run each: images/s."""
    import numpy as np
    import torch

    from ml_assets.train.classifier import ClassifierConfig, Crops, train_classifier
    from ml_assets.train.device import configure_threads

    configure_threads(setup["threads"] or None)  # as TrainingDevice does; the same for all
    saved = np.load(workdir / CROPS)
    images, labels = saved["images"], saved["labels"]
    crops = Crops(images, labels, np.arange(len(labels)))
    config = ClassifierConfig(**setup["classifier"])
    classes = setup["classes"]
    device = torch.device("cpu")

    def once(task: str, settings) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        if task == "minimal":
            minimal_loop(images, labels, classes, settings)
        else:
            with tempfile.TemporaryDirectory(dir=workdir) as run_dir:
                folder = Path(run_dir) if task == "ours+ckpt" else None
                train_classifier(crops, classes, settings, device, run_dir=folder)
        return time.perf_counter() - started, time.process_time() - cpu

    warm = config.model_copy(update={"epochs": 1})
    for task in CLASSIFIER_TASKS:
        once(task, warm)
    times: dict[str, list[tuple[float, float]]] = {task: [] for task in CLASSIFIER_TASKS}
    for r in range(repeat):
        order = CLASSIFIER_TASKS[r % 3 :] + CLASSIFIER_TASKS[: r % 3]
        for task in order:
            times[task].append(once(task, config))
    images_seen = config.epochs * len(labels)
    return {
        task: {
            "seconds": [wall for wall, _ in found],
            "images_per_second": images_seen / statistics.median(wall for wall, _ in found),
            "images_per_cpu_second": images_seen / statistics.median(cpu for _, cpu in found),
        }
        for task, found in times.items()
    }


def run_child(task: str, workdir: Path, setup: dict, repeat: int, profile: Path | None) -> dict:
    """One child's work; with ``profile``, under cProfile on the CPU-time clock (steady on a
    busy machine), its statistics written to that file."""
    if task == "classifier":
        work, arguments = run_classifier, (workdir, setup, repeat)
    else:
        work, arguments = (
            {"plain": run_plain, "materialize": run_materialize}[task],
            (workdir, setup),
        )
    if profile is None:
        return work(*arguments)
    import cProfile

    profiler = cProfile.Profile(time.process_time)
    report = profiler.runcall(work, *arguments)
    profiler.dump_stats(profile)
    return report


def _child(task: str, workdir: Path, repeat: int = 1) -> dict:
    command = [sys.executable, __file__, "--task", task, "--workdir", str(workdir)]
    command += ["--repeat", str(repeat)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{task} failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["process"] = time.perf_counter() - started
    return report


# ---------------------------------------------------------------- the report


def measure_yolo(workdir: Path, repeat: int) -> dict[str, list[dict]]:
    """Pairs of runs, the order swapped every pair (AB BA AB ...)."""
    runs: dict[str, list[dict]] = {task: [] for task in YOLO_TASKS}
    for r in range(repeat):
        for task in YOLO_TASKS if r % 2 == 0 else YOLO_TASKS[::-1]:
            runs[task].append(_child(task, workdir))
            print(f"  {task:<12} run {r + 1}: {runs[task][-1]['seconds']:.1f} s", flush=True)
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_yolo(runs: dict[str, list[dict]]) -> float:
    plain, ours = runs["plain"], runs["materialize"]
    header = (
        f"{'YOLO fold 0':<14}{'call s':>9}{'vs plain':>10}{'CPU s':>8}{'vs plain':>10}"
        f"{'process s':>11}{'epochs':>8}{'mAP50-95':>10}   runs (s)"
    )
    print(header)
    print("-" * len(header))
    for task, found in runs.items():
        every = " ".join(f"{r['seconds']:.1f}" for r in found)
        print(
            f"{task:<14}{median(found, 'seconds'):>9.1f}"
            f"{median(found, 'seconds') / median(plain, 'seconds'):>10.3f}"
            f"{median(found, 'cpu'):>8.1f}{median(found, 'cpu') / median(plain, 'cpu'):>10.3f}"
            f"{median(found, 'process'):>11.1f}{found[0]['epochs']:>8}"
            f"{found[0]['map50_95']:>10.4f}   {every}"
        )
    ratio = median(ours, "seconds") / median(plain, "seconds")
    extra = median(ours, "seconds") - median(plain, "seconds")
    extra_cpu = median(ours, "cpu") - median(plain, "cpu")
    print(
        f"\nmaterialize / plain = {ratio:.3f} wall time (goal <= 1.05), "
        f"{median(ours, 'cpu') / median(plain, 'cpu'):.3f} CPU time; whole processes "
        f"{median(ours, 'process') / median(plain, 'process'):.3f}"
    )
    print(
        f"materializing adds {extra:+.1f} s wall, {extra_cpu:+.1f} s CPU per fold: within 5% "
        f"once the plain training takes at least {max(extra, 0) / 0.05:.0f} s"
    )
    return ratio


def print_classifier(found: dict) -> float:
    minimal, minimal_cpu = (
        found["minimal"][k] for k in ("images_per_second", "images_per_cpu_second")
    )
    header = (
        f"{'classifier':<14}{'images/s':>10}{'vs minimal':>12}{'images/CPU s':>14}"
        f"{'vs minimal':>12}   runs (s)"
    )
    print(header)
    print("-" * len(header))
    for task in CLASSIFIER_TASKS:
        r = found[task]
        every = " ".join(f"{s:.2f}" for s in r["seconds"])
        print(
            f"{task:<14}{r['images_per_second']:>10.0f}"
            f"{r['images_per_second'] / minimal:>12.3f}"
            f"{r['images_per_cpu_second']:>14.0f}"
            f"{r['images_per_cpu_second'] / minimal_cpu:>12.3f}   {every}"
        )
    ratio = found["ours+ckpt"]["images_per_second"] / minimal
    print(
        f"\nours / minimal = {found['ours']['images_per_second'] / minimal:.3f} images/s without "
        f"checkpoints, {ratio:.3f} checkpointing every epoch, the loop users run (goal >= 0.95)"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=96, help="sample images")
    parser.add_argument("--size", type=int, default=96, help="image side, also YOLO imgsz")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="YOLO epochs")
    parser.add_argument("--batch", type=int, default=16, help="YOLO batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, medians reported")
    parser.add_argument("--cls-epochs", type=int, default=4)
    parser.add_argument("--cls-batch", type=int, default=32)
    parser.add_argument("--cls-size", type=int, default=48, help="classifier input side")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for every measurement (0: every core, as TrainingDevice does)",
    )
    parser.add_argument("--skip", choices=["yolo", "classifier"], help="leave one part out")
    parser.add_argument(
        "--yolo-kind",
        choices=["yolo_detector", "yolo_segmenter"],
        default="yolo_detector",
        help="the YOLO kind measured",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="a new folder (default: a temporary one)"
    )
    parser.add_argument("--task", choices=[*YOLO_TASKS, "classifier"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=Path,
        help="with --task: write a cProfile of the child (CPU-time clock) to this file",
    )
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ml_assets_bench."))).resolve()
    # Read when ml_assets is imported: a throwaway home and its Dagster instance.
    os.environ["ML_ASSETS_HOME"] = str(workdir / "home")
    os.environ["DAGSTER_HOME"] = str(workdir / "home" / "dagster")
    os.environ.pop("ML_ASSETS_MLFLOW_URI", None)
    if args.task:
        setup = json.loads((workdir / SETUP).read_text())
        report = run_child(args.task, workdir, setup, args.repeat, args.profile)
        print(json.dumps(report))
        return

    started = time.perf_counter()
    setup = prepare(workdir, args)
    print(
        f"{args.images} sample images of {args.size} px, k={args.folds}; {args.yolo_kind} "
        f"fold {FOLD}: "
        f"{setup['train_images']} training and {setup['val_images']} validation images, "
        f"{setup['yolo']}; classifier: {setup['crops']} crops of {args.cls_size} px, "
        f"{setup['classes']} classes, {setup['classifier']}; {os.cpu_count()} CPUs, torch "
        f"threads {args.threads or 'all'}; "
        f"in {workdir}\n"
    )
    if args.skip != "yolo":
        runs = measure_yolo(workdir, args.repeat)
        print(f"\nplain arguments: {runs['plain'][0]['arguments']}\n")
        print_yolo(runs)
        print()
    if args.skip != "classifier":
        print_classifier(_child("classifier", workdir, args.repeat))
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
