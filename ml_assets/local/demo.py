"""The pipeline end to end, in process, against the Dagster instance in $DAGSTER_HOME.

:func:`run_pipeline` (``ml-assets train``) runs every dataset the landing location holds (or the
one named), each registered as its own version by the landing rule the sensor uses
(``ml_assets.data.landing``): ingest, training and evaluation per fold, and the report, through
the same jobs `dagster dev` shows. A kind whose needs a version's labels cannot meet is not
trained on it, and says why (``ml_assets.train.kinds.refusal``). :func:`run_demo` (``ml-assets
demo``) first lands the sample data when the landing location is empty. Each epoch's progress line
is echoed as it happens; runs, metadata and checks are recorded in the instance, so `make ui`
shows them afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from ml_assets import runtime
from ml_assets.data.atomic import write_bytes
from ml_assets.data.landing import Landing, add_dataset, datasets, landing_location, open_landing
from ml_assets.data.landing import register as register_dataset
from ml_assets.data.sample import write_sample
from ml_assets.data.store import Store
from ml_assets.local.runs import (
    execute_as_location,
    in_process_instance,
    reap_dead_runs,
    show_automation_on,
    step_errors,
)
from ml_assets.train.registry import KINDS, kind

SAMPLE_NAME = "shapes"  # the sample dataset's folder in the landing location


def instance_home() -> Path:
    """$DAGSTER_HOME, defaulting to <home>/dagster so the CLI works outside make; a new one gets
    the repository's dagster.yaml when run from the checkout."""
    folder = Path(os.environ.setdefault("DAGSTER_HOME", str(runtime.home() / "dagster")))
    folder.mkdir(parents=True, exist_ok=True)
    settings = Path("dagster.yaml")
    if not (folder / "dagster.yaml").exists() and settings.is_file():
        write_bytes(folder / "dagster.yaml", settings.read_bytes())
    return folder


def the_landing() -> Landing:
    """The landing location the sensor watches (``$ML_ASSETS_LANDING``, else <home>/landing)."""
    return open_landing(landing_location("", runtime.home()))


def prepare_landing(landing: Landing, images: int, seed: int, echo: Callable[[str], None]) -> None:
    """Land ``images`` sample images as the dataset ``shapes`` when ``landing`` holds nothing."""
    if landing.exists() and any(d.items for d in landing.listing().drops):
        echo(f"the landing location {landing.url} already holds data: using it as it is")
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_sample(Path(tmp) / SAMPLE_NAME, images=images, seed=seed)
        target = add_dataset(Path(tmp) / SAMPLE_NAME, landing, SAMPLE_NAME)
    echo(f"wrote {images} sample images to {target}")


# Per kind, the training settings the demo uses on 2 CPU cores, as each kind declares them.
DEMO_SETTINGS = {name: k.demo for name, k in KINDS.items()}
DEFAULT_MODELS = ("image_classifier", "yolo_detector")
Results = dict[str, dict[str, dict]]  # dataset -> kind -> report, or {"not_trained": reason}


def run_demo(
    images: int,
    folds: int,
    epochs: int | None = None,
    seed: int = 0,
    models: tuple[str, ...] = DEFAULT_MODELS,
    dataset: str | None = None,
    echo: Callable[[str], None] = print,
) -> Results:
    """The tour: land the sample data if the landing location is empty, then
    :func:`run_pipeline` with the demo's training settings."""
    prepare_landing(the_landing(), images, seed, echo)
    return run_pipeline(folds, epochs, seed, models, dataset, echo, DEMO_SETTINGS)


def run_pipeline(
    folds: int,
    epochs: int | None = None,
    seed: int = 0,
    models: tuple[str, ...] = DEFAULT_MODELS,
    dataset: str | None = None,
    echo: Callable[[str], None] = print,
    settings: dict[str, dict] | None = None,
) -> Results:
    """Run the graph for the given model kinds on every dataset of the landing location (or the
    one called ``dataset``); ``settings`` are training settings per kind (else its defaults).
    Returns each dataset's reports by kind name."""
    from ml_assets.definitions import build_defs, deployed_kinds
    from ml_assets.defs.settings import Settings

    # The runs below load the code location as Dagster does, from the environment.
    os.environ["ML_ASSETS_FOLDS"] = str(folds)
    location = Settings.from_env()
    defs, deployed = build_defs(location), deployed_kinds(location)
    kinds = [kind(name) for name in models]
    absent = [k.name for k in kinds if k.name not in {d.name for d in deployed}]
    if absent:
        raise ValueError(
            f"the code location builds only {', '.join(d.name for d in deployed)} "
            f"(ML_ASSETS_KINDS={os.environ.get('ML_ASSETS_KINDS', '')}), not {', '.join(absent)}: "
            "set ML_ASSETS_KINDS to the kinds you train (make sets it from MODELS)"
        )
    home = runtime.home()
    landing = the_landing()
    drops = datasets(landing, dataset)
    store = Store(home / "store")
    results: Results = {}
    with in_process_instance(str(instance_home())) as instance, echoing_progress(echo):
        reap_dead_runs(instance, echo)
        show_automation_on(instance)
        for drop in drops:
            version = register_dataset(landing, drop, store)
            echo(f"dataset {drop.label}: version {version}")
            results[drop.label] = run_jobs(
                defs, instance, home, version, kinds, (settings or {}, epochs, folds, seed), echo
            )
    return results


@contextlib.contextmanager
def echoing_progress(echo: Callable[[str], None]) -> Iterator[None]:
    """Each epoch's progress line (the ``ml_assets.progress`` logger) goes to ``echo`` inside
    the block: training in this process reports on the terminal as it happens."""
    from ml_assets.train.runs import PROGRESS_LOGGER

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            echo(f"  {record.getMessage()}")

    logger, handler = logging.getLogger(PROGRESS_LOGGER), Echo()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_jobs(defs, instance, home: Path, version: str, kinds, training, echo) -> dict[str, dict]:
    """Ingest ``version`` (with its diff and image issues), then train, evaluate and report each
    kind its labels can teach, and find its label issues; ``training`` is (settings per kind,
    epochs, folds, seed). Each kind's report by name."""
    import dagster as dg

    from ml_assets.data.tables import load_tables
    from ml_assets.defs.partitions import dataset_versions
    from ml_assets.defs.quality import label_issues_name
    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.train.kinds import reads

    settings, epochs, folds, seed = training
    if not instance.has_dynamic_partition(dataset_versions.name, version):
        instance.add_dynamic_partitions(dataset_versions.name, [version])
    run = job_runner(instance, {k.gate_name for k in kinds}, echo)
    run("ingest_job", version)
    run("quality_job", version, [dg.AssetKey("version_diff"), dg.AssetKey("image_issues")])
    where = MLAssetsHome(root=str(home))
    trainable, reports = split_by_refusal(
        kinds, load_tables(where.tables_dir(version)), version, echo
    )
    if not trainable:
        return reports
    if any(reads(k, "base_model") for k in trainable):
        prepare_base_models(defs, instance, home, trainable, echo)
    trained = [dg.AssetKey(n) for k in trainable for n in (k.name, k.evaluation_name)]
    ops = {"ops": training_configs(trainable, settings, epochs, seed)}
    for fold in range(folds):
        key = dg.MultiPartitionKey({"version": version, "fold": str(fold)})
        run("training_job", key, trained, ops)
    checks = run("report_job", version, [dg.AssetKey(k.report_name) for k in trainable])
    checked = [k for k in trainable if k.held_out]
    if checked:
        run("quality_job", version, [dg.AssetKey(label_issues_name(k)) for k in checked])
    return reports | kind_reports(where, version, trainable, checks)


def job_runner(instance, gates: set[str], echo) -> Callable:
    """``run(job, partition_key, assets=None, run_config=None)``: a run of the code location in
    this process, as if launched from the UI (make ui files it under its job), one line on the
    terminal for it (step logs and tracebacks are in make ui); its checks' results. A failed
    promotion gate (one of ``gates``) is a result to report; any other failure raises."""
    tags = {"ml_assets/trigger": "demo"}
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

    def run(job: str, partition_key, assets=None, run_config=None) -> dict[str, bool]:
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
        if not result.success and not (failed and failed <= gates):
            for step, error in step_errors(result).items():
                echo(f"  {step}: {error}")
            raise RuntimeError(
                f"{job} failed for {partition_key}; see run {result.run_id} in make ui"
            )
        return checks

    return run


def split_by_refusal(kinds, ds, version: str, echo) -> tuple[list, dict[str, dict]]:
    """The kinds ``ds``'s labels can teach, and a "not trained" report of each other one."""
    from ml_assets.train.kinds import refusal

    trainable, reports = [], {}
    for k in kinds:
        reason = refusal(k, ds)
        if reason is None:
            trainable.append(k)
        else:
            echo(f"{k.name}: not trained on version {version}: {reason}")
            reports[k.name] = {"not_trained": reason, "version": version}
    return trainable, reports


def training_configs(kinds, settings: dict, epochs: int | None, seed: int) -> dict:
    """Each kind's launchpad config: its ``settings``, ``epochs`` and ``seed`` where given."""
    return {
        k.name: {
            "config": settings.get(k.name, {})
            | ({"epochs": epochs} if epochs else {})
            | ({"seed": seed} if "seed" in k.config_class.model_fields else {})
        }
        for k in kinds
    }


def kind_reports(where, version: str, kinds, checks: dict[str, bool]) -> dict[str, dict]:
    """Each kind's report of ``version``, whether its gate passed and its label-issue count."""
    from ml_assets.defs.quality import label_issues_name
    from ml_assets.evaluate.report import read_report

    reports = {}
    for k in kinds:
        folder = where.report_dir(k.name, version)
        reports[k.name] = read_report(folder) | {
            "path": str(folder),
            "promotable": checks.get(k.gate_name, False),
        }
        if k.held_out:
            issues = where.quality_dir(label_issues_name(k), version) / "label_issues.parquet"
            reports[k.name]["label_issues"] = (len(pd.read_parquet(issues)), str(issues))
    return reports


def prepare_base_models(defs, instance, home: Path, kinds, echo) -> None:
    """Snapshot the base models the LoRA kinds train on (each kind's default ``base_model``):
    every folder in <home>/base_models/; a name with neither a folder nor an earlier snapshot
    gets a tiny random model made as ``ml-assets base-model init --tiny`` would, and says so."""
    import dagster as dg

    from ml_assets.defs.base_models import BASE_MODELS_FOLDER
    from ml_assets.train.base_models import ARCHS, init_base_model, named_snapshot
    from ml_assets.train.kinds import reads

    store = Store(home / "store")
    for k in kinds:
        if not reads(k, "base_model"):
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
        wanted = list(kind(report["kind"]).headline)
        table = table[[c for c in wanted if c in table.columns]]
    return table
