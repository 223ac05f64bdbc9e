"""Real data benchmark (issue 14): our pipeline on scikit-learn's handwritten digits, beside
scikit-learn's SVC and a plain timm loop, on the same stratified folds, in one run.

    .venv/bin/python benchmarks/real.py [--workdir DIR] [--folds 3]
        [--epochs N --per-class N]   (smaller runs while developing; the goals need neither)

The 1,797 digits are written as an image folder, ``<digit>/<index>.png``
(``ml_assets_tests.real_sets.write_digits``), into a throwaway home (``ML_ASSETS_HOME`` and
``DAGSTER_HOME`` under ``--workdir``), then, one after the other:

1. ``ours``: ``ml-assets ingest`` (``ml_assets.data.landing.add_dataset`` into the home's
   landing) and ``ml-assets train`` (``ml_assets.local.demo.run_pipeline(folds, models=
   ("image_classifier",), dataset="digits")``) with the classifier's default settings: ingest,
   k folds of training, checks and evaluation, the report. Mean macro F1 of the held-out folds
   from the report (``macro_f1``, without flip TTA, the kind's primary metric). The clock covers
   the two calls; loading the code location (``ml_assets.definitions``: dagster, torch, timm
   imports) is timed apart, as the plain loop's ``import torch, timm`` is not timed.
2. ``SVC``: ``sklearn.svm.SVC(gamma=0.001)`` on the 64 raw pixel values (0..16, as in
   scikit-learn's digits example), on the fold assignment the pipeline made (its version's
   ``folds.parquet``; image ids mapped to digit indices through the images table's file names).
3. ``plain``: a hand-written loop, no Dagster, MLflow, checkpoints or validation: the same files
   read and resized to the same inputs (``ml_assets.train.classifier.crop_box`` of the whole
   image, ``normalize``), the same folds, ``timm.create_model(resnet10t, pretrained=False,
   num_classes=10)``, timm's AdamW and cosine schedule (warmup, per-update steps) and
   cross-entropy with label smoothing, all with ``ClassifierConfig``'s default values, no
   augmentation; then argmax of the held-out fold, macro F1 by ``sklearn.metrics.f1_score``.

torch runs on the threads ``TrainingDevice(threads=0)`` gives the pipeline (every core this
process may use, ``ml_assets.train.device.configure_threads``), set the same way for the plain
loop. Wall seconds are the goal's measure; "vs plain" is the ratio to the plain loop's. CPU
seconds (of this process, every thread) are printed beside them: a jump in one but not the other
says the machine was busy. std is the sample standard deviation over folds (as in the report).

Goals (issue 14): mean macro F1 at most 0.01 below the SVC's; wall time at most 1.1x the plain
loop's. Below the table, where ours spent its time: each Dagster step's seconds over every run
(from the instance's event log) and the training seconds the model assets record
(``train_seconds``: crops, the epochs with their per-epoch validation, saving).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # ml_assets_tests (write_digits) is not an installed package
DATASET = "digits"
KIND = "image_classifier"


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_ours(source: Path, folds: int, epochs: int | None) -> dict:
    """``ml-assets ingest`` then ``ml-assets train`` on the digits, timed together."""
    from ml_assets import runtime
    from ml_assets.data.landing import add_dataset, landing_location, open_landing
    from ml_assets.local.demo import run_pipeline

    started, cpu = time.perf_counter(), time.process_time()
    add_dataset(source, open_landing(landing_location("", runtime.home())), DATASET)
    results = run_pipeline(
        folds,
        epochs,
        models=(KIND,),
        dataset=DATASET,
        echo=lambda line: print(f"  ours | {line}", flush=True),
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    report = results[DATASET][KIND]
    by_fold = {r["fold"]: r["metrics"] for r in report["folds"]}
    return {
        "wall": wall,
        "cpu": cpu,
        "version": report["version"],
        "f1": [by_fold[f]["macro_f1"] for f in sorted(by_fold)],
        "f1_tta": [by_fold[f].get("macro_f1_tta", float("nan")) for f in sorted(by_fold)],
    }


def fold_data(version: str, folds: int):
    """The pipeline's fold assignment as (digit index, label, fold, file name) per image."""
    from ml_assets.data.folds import read_folds
    from ml_assets.data.tables import load_tables
    from ml_assets.defs.resources import MLAssetsHome

    home = MLAssetsHome(root=os.environ["ML_ASSETS_HOME"])
    assignment, _ = read_folds(home.folds_path(version), folds)
    images = load_tables(home.tables_dir(version)).images[["image_id", "file_name"]]
    table = images.merge(assignment, on="image_id", validate="1:1")
    names = table["file_name"].map(Path)
    table["index"] = [int(p.stem) for p in names]  # <digit>/<index>.png
    table["label"] = [int(p.parent.name) for p in names]
    return table.sort_values("index").reset_index(drop=True)


def run_svc(table, folds: int) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.metrics import f1_score
    from sklearn.svm import SVC

    digits = load_digits()
    started, cpu = time.perf_counter(), time.process_time()
    x, y = digits.data[table["index"]], digits.target[table["index"]]
    assert (y == table["label"].to_numpy()).all(), "folder names disagree with the digit labels"
    scores = []
    for fold in range(folds):
        held = (table["fold"] == fold).to_numpy()
        predicted = SVC(gamma=0.001).fit(x[~held], y[~held]).predict(x[held])
        scores.append(float(f1_score(y[held], predicted, average="macro")))
    return {
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "f1": scores,
    }


def run_plain(table, source: Path, folds: int, epochs: int | None) -> dict:
    """The plain timm loop on the same files and folds (see the module docstring)."""
    import numpy as np
    import timm
    import torch
    from PIL import Image
    from sklearn.metrics import f1_score
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from torch.utils.data import DataLoader, TensorDataset

    from ml_assets.train.classifier import ClassifierConfig, crop_box, normalize
    from ml_assets.train.device import configure_threads, select_device

    config = ClassifierConfig(**({"epochs": epochs} if epochs else {}))
    device = select_device("auto")
    configure_threads(None)  # as TrainingDevice(threads=0) does for the pipeline
    started, cpu = time.perf_counter(), time.process_time()
    images = []
    for name in table["file_name"]:
        with Image.open(source / name) as image:
            images.append(crop_box(image.convert("RGB"), 0, 0, *image.size, config.img_size, 0.0))
    x_all = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # uint8
    y_all = torch.as_tensor(table["label"].to_numpy())
    scores, train_seconds = [], 0.0
    for fold in range(folds):
        held = torch.as_tensor((table["fold"] == fold).to_numpy())
        fold_started = time.perf_counter()
        torch.manual_seed(config.seed)
        model = timm.create_model(config.model_name, pretrained=False, num_classes=10).to(device)
        optimizer = create_optimizer_v2(
            model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay
        )
        n = int((~held).sum())
        loader = DataLoader(
            TensorDataset(x_all[~held], y_all[~held]),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=n % config.batch_size == 1,  # batch norm cannot train on one sample
        )
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=config.schedule,
            num_epochs=config.epochs,
            step_on_epochs=False,
            updates_per_epoch=len(loader),
            warmup_epochs=min(config.warmup_epochs, config.epochs - 1),
            warmup_lr=config.lr * 0.01,
            min_lr=config.lr * 0.01,
        )
        updates = 0
        for epoch in range(config.epochs):
            model.train()
            for x, y in loader:
                logits = model(normalize(x, device))
                loss = torch.nn.functional.cross_entropy(
                    logits, y.to(device), label_smoothing=config.label_smoothing
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                updates += 1
                scheduler.step_update(updates)
            scheduler.step(epoch + 1)
        train_seconds += time.perf_counter() - fold_started
        model.eval()
        with torch.inference_mode():
            x_held = x_all[held]
            logits = [
                model(normalize(x_held[i : i + 128], device)) for i in range(0, len(x_held), 128)
            ]
            predicted = torch.cat(logits).argmax(1).cpu().numpy()
        scores.append(float(f1_score(y_all[held].numpy(), predicted, average="macro")))
    return {
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "f1": scores,
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
        "config": config,
    }


def where_ours_went() -> tuple[dict[str, float], float, list[float]]:
    """Seconds per Dagster step over every run of the instance, the runs' total, and each
    fold's recorded ``train_seconds``."""
    import dagster as dg
    from dagster._core.events import DagsterEventType

    from ml_assets.local.runs import in_process_instance

    steps: dict[str, float] = defaultdict(float)
    runs_total = 0.0
    with in_process_instance(os.environ["DAGSTER_HOME"]) as instance:
        for record in instance.get_run_records():
            if record.start_time and record.end_time:
                runs_total += record.end_time - record.start_time
            begun = {}
            kinds = {
                DagsterEventType.STEP_START,
                DagsterEventType.STEP_SUCCESS,
                DagsterEventType.STEP_FAILURE,
            }
            for entry in instance.all_logs(record.dagster_run.run_id, of_type=kinds):
                if entry.dagster_event_type == DagsterEventType.STEP_START:
                    begun[entry.step_key] = entry.timestamp
                elif entry.step_key in begun:
                    steps[entry.step_key] += entry.timestamp - begun.pop(entry.step_key)
        found = instance.fetch_materializations(dg.AssetKey(KIND), limit=100).records
        train = {
            r.asset_materialization.partition: r.asset_materialization.metadata[
                "train_seconds"
            ].value
            for r in found
        }
    return dict(steps), runs_total, [train[k] for k in sorted(train)]


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folds", type=int, default=3, help="k of the stratified folds")
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the classifier's epochs (default 12)"
    )
    parser.add_argument(
        "--per-class", type=int, default=None, help="the first N digits of each class only"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="a new folder (default: a temporary one)"
    )
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ml_assets_real."))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Read when ml_assets is imported: a throwaway home and its Dagster instance.
    os.environ["ML_ASSETS_HOME"] = str(workdir / "home")
    os.environ["DAGSTER_HOME"] = str(workdir / "home" / "dagster")
    os.environ["ML_ASSETS_FOLDS"] = str(args.folds)  # what the runs' code location is built with
    for setting in ("ML_ASSETS_LANDING", "ML_ASSETS_MLFLOW_URI", "ML_ASSETS_KINDS"):
        os.environ.pop(setting, None)
    os.chdir(REPO)  # the instance gets the repository's dagster.yaml, as with make

    from ml_assets_tests.real_sets import write_digits

    source = write_digits(workdir / DATASET, per_class=args.per_class)
    started = time.perf_counter()
    from ml_assets.definitions import defs  # the code location: dagster, torch, timm, ...

    defs()  # built from the environment, as a run's process loads it

    load = time.perf_counter() - started
    print(
        f"digits: {sum(1 for _ in source.glob('*/*.png'))} images in {source}; k={args.folds}; "
        f"{os.cpu_count()} CPUs; load average {loadavg()}; code location loaded in {load:.1f} s",
        flush=True,
    )

    ours = run_ours(source, args.folds, args.epochs)
    table = fold_data(ours["version"], args.folds)
    svc = run_svc(table, args.folds)
    print("  plain | training ...", flush=True)
    plain = run_plain(table, source, args.folds, args.epochs)
    steps, runs_total, train_seconds = where_ours_went()

    config = plain["config"]
    print(
        f"\n{len(table)} images, version {ours['version']}, folds of "
        f"{table.groupby('fold').size().tolist()} images; {config.model_name} {config.img_size} "
        f"px, {config.epochs} epochs, batch {config.batch_size}, {config.optimizer} "
        f"{config.lr:g}, {config.schedule} with {config.warmup_epochs} warmup epoch(s), label "
        f"smoothing {config.label_smoothing}; torch threads {plain['threads']}\n"
    )
    rows = [
        ("ours (ingest + train)", ours),
        ("SVC(gamma=0.001)", svc),
        ("plain timm loop", plain),
    ]
    header = (
        f"{'method':<24}{'macro F1 mean ± std':>22}{'wall s':>10}{'vs plain':>10}"
        f"{'CPU s':>9}{'vs plain':>10}   macro F1 per fold"
    )
    print(header)
    print("-" * len(header))
    for name, found in rows:
        each = " ".join(f"{v:.4f}" for v in found["f1"])
        print(
            f"{name:<24}{mean_std(found['f1']):>22}{found['wall']:>10.1f}"
            f"{found['wall'] / plain['wall']:>10.3f}{found['cpu']:>9.1f}"
            f"{found['cpu'] / plain['cpu']:>10.3f}   {each}"
        )
    diff = statistics.mean(ours["f1"]) - statistics.mean(svc["f1"])
    ratio = ours["wall"] / plain["wall"]
    print(
        f"\nmacro F1 within 0.01 of the SVC's: {'PASS' if diff >= -0.01 else 'FAIL'} ({diff:+.4f})"
    )
    print(
        f"time within 1.1x of the plain loop's: {'PASS' if ratio <= 1.1 else 'FAIL'} ({ratio:.3f})"
    )

    print(
        f"\nours with flip TTA (macro_f1_tta): {mean_std(ours['f1_tta'])}\n"
        f"ours: {sum(train_seconds):.1f} s training (train_seconds per fold: "
        f"{', '.join(f'{s:.1f}' for s in train_seconds)}) of {ours['wall']:.1f} s; Dagster runs "
        f"{runs_total:.1f} s, outside runs {ours['wall'] - runs_total:.1f} s. plain: "
        f"{plain['train_seconds']:.1f} s training of {plain['wall']:.1f} s"
    )
    print("ours, seconds per Dagster step over every run:")
    for step, seconds in sorted(steps.items(), key=lambda item: -item[1]):
        print(f"  {step:<44}{seconds:>8.1f}")
    print(f"load average {loadavg()}; benchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
