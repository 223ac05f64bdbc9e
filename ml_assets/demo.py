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

import orjson
import pandas as pd

from ml_assets import runtime
from ml_assets.data.atomic import write_bytes
from ml_assets.data.sample import write_sample
from ml_assets.data.store import Store


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


def run_demo(
    images: int, folds: int, epochs: int, seed: int = 0, echo: Callable[[str], None] = print
) -> dict:
    os.environ["ML_ASSETS_FOLDS"] = str(folds)  # read when the definitions load, just below
    import dagster as dg

    from ml_assets.definitions import defs
    from ml_assets.defs.partitions import fold_partitions

    if len(fold_partitions.get_partition_keys()) != folds:
        raise RuntimeError(
            f"the code location was loaded with {len(fold_partitions.get_partition_keys())} folds "
            f"before the demo could ask for {folds}: set ML_ASSETS_FOLDS={folds}"
        )

    home = runtime.home()
    landing = home / "landing"
    prepare_landing(landing, images, seed, echo)
    with dg.DagsterInstance.from_config(str(instance_home())) as instance:
        return run_jobs(defs, instance, home, landing, epochs, folds, seed, echo)


def run_jobs(defs, instance, home: Path, landing: Path, epochs: int, folds: int, seed: int, echo):
    import dagster as dg

    from ml_assets.defs.partitions import dataset_versions

    version = Store(home / "store").register(landing)
    if not instance.has_dynamic_partition(dataset_versions.name, version):
        instance.add_dynamic_partitions(dataset_versions.name, [version])
    echo(f"dataset version {version}")
    tags = {"ml_assets/trigger": "demo"}

    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def run(job: str, partition_key, run_config=None):
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance,
            partition_key=partition_key,
            run_config={**quiet, **(run_config or {})},
            tags=tags,
            raise_on_error=False,
        )
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        failed = sorted(name for name, passed in checks.items() if not passed)
        echo(
            f"{job} [{partition_key}]: {'ok' if result.success else 'FAILED'} (run {result.run_id})"
        )
        # A failed promotion gate is a result to report, not a crash of the demo.
        if not result.success and failed != ["classifier_promotable"]:
            raise RuntimeError(
                f"{job} failed for {partition_key}; see run {result.run_id} in make ui"
            )
        return checks

    run("ingest_job", version)
    training = {"ops": {"image_classifier": {"config": {"epochs": epochs, "seed": seed}}}}
    for fold in range(folds):
        key = dg.MultiPartitionKey({"version": version, "fold": str(fold)})
        run("training_job", key, training)
    promotable = run("report_job", version)["classifier_promotable"]
    report_path = home / "reports" / "image_classifier" / version / "report.json"
    return orjson.loads(report_path.read_bytes()) | {
        "path": str(report_path.parent),
        "promotable": promotable,
    }


def report_table(report: dict) -> pd.DataFrame:
    """Per-fold metrics with mean and standard deviation rows, for printing."""
    columns = ["accuracy", "balanced_accuracy", "macro_f1", "samples"]
    table = pd.DataFrame(report["folds"]).set_index("fold")[columns]
    table.index = [f"fold {i}" for i in table.index]
    table.loc["mean"] = pd.Series(report["mean"])
    table.loc["std"] = pd.Series(report["std"])
    return table
