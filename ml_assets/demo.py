"""The main job end to end, in process, against the Dagster instance in $DAGSTER_HOME.

Fills an empty landing folder with sample data, registers its version, runs the same jobs that
`dagster dev` shows (ingest, training and evaluation per fold, report), and returns the report.
The runs, their metadata and the asset checks are recorded in the instance, so `make ui` shows
them afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ml_assets import runtime
from ml_assets.data.atomic import write_bytes
from ml_assets.data.sample import write_sample
from ml_assets.data.store import Store
from ml_assets.hygiene import (
    execute_as_location,
    in_process_instance,
    reap_dead_runs,
    step_errors,
)


def instance_home() -> Path:
    """$DAGSTER_HOME, defaulting to <home>/dagster so the CLI works outside make; a new one gets
    the repository's dagster.yaml when run from the checkout."""
    folder = Path(os.environ.setdefault("DAGSTER_HOME", str(runtime.home() / "dagster")))
    folder.mkdir(parents=True, exist_ok=True)
    settings = Path("dagster.yaml")
    if not (folder / "dagster.yaml").exists() and settings.is_file():
        write_bytes(folder / "dagster.yaml", settings.read_bytes())
    return folder


def prepare_landing(landing: Path, images: int, seed: int, echo: Callable[[str], None]) -> None:
    if landing.is_dir() and any(landing.iterdir()):
        echo(
            f"landing folder {landing} already holds data: using it as it is (make clean to reset)"
        )
        return
    if landing.is_dir():
        landing.rmdir()
    write_sample(landing, images=images, seed=seed)
    echo(f"wrote {images} sample images to {landing}")


# Per kind, the training settings the demo uses on 2 CPU cores (``--epochs`` overrides epochs).
DEMO_SETTINGS = {
    "image_classifier": {"epochs": 12},
    "yolo_detector": {"epochs": 12, "imgsz": 96, "batch": 32},
    "lora_classifier": {"epochs": 8, "lr": 5e-3},
    # Not in DEFAULT_MODELS (ask with --models): tiny base models named "grounding-dino", "sam".
    "lora_detector": {"epochs": 8, "batch_size": 8, "lr": 1e-3},
    "lora_segmenter": {"epochs": 8, "batch_size": 8, "lr": 1e-3},
}
DEFAULT_MODELS = ("image_classifier", "yolo_detector")


def run_demo(
    images: int,
    folds: int,
    epochs: int | None = None,
    seed: int = 0,
    models: tuple[str, ...] = DEFAULT_MODELS,
    echo: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run the graph for the given model kinds; return each kind's report by kind name."""
    os.environ["ML_ASSETS_FOLDS"] = str(folds)  # read when the definitions load, just below

    from ml_assets.definitions import defs
    from ml_assets.defs.partitions import fold_partitions
    from ml_assets.train.registry import kind

    if len(fold_partitions.get_partition_keys()) != folds:
        raise RuntimeError(
            f"the code location was loaded with {len(fold_partitions.get_partition_keys())} folds "
            f"before the demo could ask for {folds}: set ML_ASSETS_FOLDS={folds}"
        )
    kinds = [kind(name) for name in models]
    home = runtime.home()
    landing = home / "landing"
    prepare_landing(landing, images, seed, echo)
    with in_process_instance(str(instance_home())) as instance:
        reap_dead_runs(instance, echo)
        return run_jobs(defs, instance, home, landing, kinds, epochs, folds, seed, echo)


def run_jobs(defs, instance, home: Path, landing: Path, kinds, epochs, folds, seed, echo):
    import dagster as dg

    from ml_assets.defs.partitions import dataset_versions

    version = Store(home / "store").register(landing)
    if not instance.has_dynamic_partition(dataset_versions.name, version):
        instance.add_dynamic_partitions(dataset_versions.name, [version])
    echo(f"dataset version {version}")
    tags = {"ml_assets/trigger": "demo"}
    gates = {k.gate_name for k in kinds}
    # Step logs and tracebacks are in make ui; the terminal gets one line per run (and per error).
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

    def run(job: str, partition_key, assets=None, run_config=None):
        # A run of the code location, as if launched from the UI: make ui files it under its job.
        result = execute_as_location(
            instance,
            job,
            partition_key=partition_key,
            asset_selection=assets,
            run_config={**quiet, **(run_config or {})},
            tags=tags,
            echo=echo,
        )
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        failed = {name for name, passed in checks.items() if not passed}
        echo(
            f"{job} [{partition_key}]: {'ok' if result.success else 'FAILED'} (run {result.run_id})"
        )
        # A failed promotion gate is a result to report, not a crash of the demo.
        if not result.success and not (failed and failed <= gates):
            for step, error in step_errors(result).items():
                echo(f"  {step}: {error}")
            raise RuntimeError(
                f"{job} failed for {partition_key}; see run {result.run_id} in make ui"
            )
        return checks

    run("ingest_job", version)
    if any("base_model" in k.inputs for k in kinds):
        prepare_base_models(defs, instance, home, kinds, echo)
    training = {
        k.name: DEMO_SETTINGS.get(k.name, {})
        | ({"epochs": epochs} if epochs else {})
        | ({"seed": seed} if "seed" in k.config_class.model_fields else {})
        for k in kinds
    }
    trained = [dg.AssetKey(n) for k in kinds for n in (k.name, k.evaluation_name)]
    ops = {"ops": {name: {"config": settings} for name, settings in training.items()}}
    for fold in range(folds):
        key = dg.MultiPartitionKey({"version": version, "fold": str(fold)})
        run("training_job", key, trained, ops)
    checks = run("report_job", version, [dg.AssetKey(k.report_name) for k in kinds])
    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.evaluate.report import read_report

    reports = {}
    for k in kinds:
        folder = MLAssetsHome(root=str(home)).report_dir(k.name, version)
        reports[k.name] = read_report(folder) | {
            "path": str(folder),
            "promotable": checks.get(k.gate_name, False),
        }
    return reports


def prepare_base_models(defs, instance, home: Path, kinds, echo) -> None:
    """Snapshot the base models the LoRA kinds train on (each kind's default ``base_model``):
    every folder in <home>/base_models/; a name with neither a folder nor an earlier snapshot
    gets a tiny random model made as ``ml-assets base-model init --tiny`` would, and says so."""
    import dagster as dg

    from ml_assets.defs.base_models import BASE_MODELS_FOLDER
    from ml_assets.train.base_models import ARCHS, init_base_model, named_snapshot

    store = Store(home / "store")
    for k in kinds:
        if "base_model" not in k.inputs:
            continue
        name = k.config_class.model_fields["base_model"].default
        folder = home / BASE_MODELS_FOLDER / name
        if folder.exists():
            echo(f"base model {name!r}: {folder}")
            continue
        try:
            named_snapshot(store, name)
        except FileNotFoundError:
            arch = name if name in ARCHS else "vit"
            init_base_model(folder, arch, tiny=True)
            echo(
                f"no base model {name!r} configured: wrote a tiny randomly initialized {arch} to "
                f"{folder} (base-model init --tiny); put real weights there for a real run"
            )
    if (home / BASE_MODELS_FOLDER).is_dir():
        result = execute_as_location(
            instance,
            defs.resolve_implicit_global_asset_job_def().name,
            asset_selection=[dg.AssetKey("base_model")],
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            echo=echo,
        )
        echo(f"base_model: {'ok' if result.success else 'FAILED'} (run {result.run_id})")
        if not result.success:
            raise RuntimeError(f"base_model failed; see run {result.run_id} in make ui")


# The columns the demo prints per kind (report.md and the UI hold every metric).
HEADLINE = {
    "image_classifier": ["accuracy", "macro_f1", "weighted_f1", "ece", "macro_f1_tta", "samples"],
    "lora_classifier": ["accuracy", "macro_f1", "weighted_f1", "ece", "samples"],
    "yolo_detector": ["AP", "AP50", "AP75", "AR100", "ultralytics_map50_95", "instances"],
    "lora_detector": ["AP", "AP50", "AP75", "AR100", "instances"],
    "lora_segmenter": ["mask_iou", "boundary_iou", "box_mask_iou", "objects"],
}
COUNTS = ("samples", "images", "instances", "detections", "objects")


def report_table(report: dict, headline: bool = False) -> pd.DataFrame:
    """Per-fold metrics with mean and standard deviation rows, for printing; ``headline`` keeps
    the kind's main columns."""
    from ml_assets.evaluate.report import per_fold_table

    table = per_fold_table(report["folds"])  # COCO's -1 left out, as in the mean
    table.index = [f"fold {i}" for i in table.index]
    table.loc["mean"] = pd.Series(report["mean"])
    table.loc["std"] = pd.Series(report["std"])
    if headline:
        wanted = HEADLINE.get(report["kind"], list(table.columns))
        table = table[[c for c in wanted if c in table.columns]]
    return table
