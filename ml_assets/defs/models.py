"""One pipeline per model kind, built by one factory (like Dagster's ``rss_pipeline_factory``).

For each kind in ``ml_assets.train.registry.KINDS``:

    <kind>[version, fold]            trained on every fold but this one, in the gpu pool
      checks: weights_finite, reloads_identically (blocking)
    <evaluation>[version, fold]      the model of this very partition on its held-out fold
    <report>[version]                every fold, mean and std, baseline
      check: <gate> (blocking)       the promotion gate
    jobs: <kind>_job (model and evaluation of one partition), <report>_job

Asset bodies call one pure function (``train.runs.train_fold``, ``evaluate.report``) and turn
its result into metadata.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ml_assets.defs.datasets import load_folds, load_version
from ml_assets.defs.partitions import (
    blocking_checks,
    checked_partition,
    dataset_versions,
    selected,
    version_fold,
    version_folds,
)
from ml_assets.defs.policies import training_run_tags
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
from ml_assets.defs.settings import Settings
from ml_assets.train.ddp import processes
from ml_assets.train.kinds import ModelKind

# On Kubernetes (dagster-k8s run launcher), each training step asks for one GPU.
GPU_OP_TAGS = {
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
}
# Automation: a partition is due when it is missing, when an input's data version changed
# (a re-materialization with identical output keeps its data version: nothing is due), or when
# its code version changed (a kind's code or default configuration), and only once its inputs'
# blocking checks passed. Every asset upstream of a model declares a data version: raw_dataset
# its content key, annotations and the exports the tables' digest, folds the assignment's digest,
# a model the fingerprint of what decided it (config, fold assignment, inputs), an evaluation
# its numbers, a report its summary.
INPUT_CHANGED = dg.AutomationCondition.any_deps_match(
    (
        dg.AutomationCondition.data_version_changed()
        & ~dg.AutomationCondition.executed_with_root_target()
    ).with_label("data version changed")
    | dg.AutomationCondition.will_be_requested()
).with_label("an input changed")


def on_change(ignore: dg.AssetSelection | None = None) -> dg.AutomationCondition:
    """Due when missing, when an input changed (``ignore``: inputs that do not count) or when
    the code version changed; never while an input is missing or running or its blocking checks
    failed."""
    changed = INPUT_CHANGED if ignore is None else INPUT_CHANGED.ignore(ignore)
    return (
        dg.AutomationCondition.in_latest_time_window()
        & (
            dg.AutomationCondition.newly_missing()
            | changed
            | dg.AutomationCondition.code_version_changed()
        ).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("on change") & dg.AutomationCondition.all_deps_blocking_checks_passed()


ON_CHANGE = on_change()
# Model assets: a new snapshot of some base model is not new data for every version's models
# (base_model is unpartitioned); a training config names the base model it uses, and its
# snapshot's hash is part of the model's fingerprint (as every pulled weights' hash is).
TRAIN_ON_CHANGE = on_change(ignore=dg.AssetSelection.assets("base_model"))


def train_on_change(kind: ModelKind) -> dg.AutomationCondition:
    """``TRAIN_ON_CHANGE``, blind to the inputs only some configurations read (the classifier's
    shards): a version trains from its images whether or not those exist or changed."""
    optional = [spec.asset for spec in kind.inputs if spec.used is not None]
    return (
        TRAIN_ON_CHANGE.ignore(dg.AssetSelection.assets(*optional)) if optional else TRAIN_ON_CHANGE
    )


def code_version(kind: ModelKind) -> str:
    """A kind's code version: its ``version`` (bumped when its training or scoring changes) and
    its default configuration; a change makes every partition of its assets due."""
    from ml_assets.train.kinds import fingerprint

    defaults = kind.config_class().model_dump()
    return f"{kind.version}-{fingerprint(config=defaults)}"


def data_version(**parts) -> dg.DataVersion:
    from ml_assets.train.kinds import fingerprint

    return dg.DataVersion(fingerprint(**parts))


KIND_TAG = "ml_assets/kind"


def check_metadata(found: dict) -> dict:
    """A check's numbers (rounded) and its text, such as the reasons a gate failed."""
    return numbers(found) | {k: v for k, v in found.items() if isinstance(v, str)}


def numbers(values: dict) -> dict[str, float | int]:
    """Metadata numbers as numbers (the UI plots them), rounded to what a person reads."""
    return {
        k: (round(float(v), 4) if isinstance(v, float) else int(v))
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def md_frame(frame: pd.DataFrame, index: bool = True) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.round(4).to_markdown(index=index))


def as_metadata(view: dict) -> dict:
    """An ordered view of ``ml_assets.evaluate.report`` (numbers, text, ``Markdown``, ``Link``,
    ``Path``) as Dagster metadata, in the same order (the UI shows it so)."""
    from ml_assets.evaluate.report import Link, Markdown

    def one(value):
        if isinstance(value, Markdown):
            return dg.MetadataValue.md(value)
        if isinstance(value, Link):
            return dg.MetadataValue.url(value)
        if isinstance(value, Path):
            return dg.MetadataValue.path(str(value))
        return value

    return {k: one(v) for k, v in view.items()}


def inputs_of(kind: ModelKind, home: MLAssetsHome, version: str, config=None) -> dict:
    """The folders of the exports ``kind`` reads for ``version`` (``yolo_dataset`` -> its
    folder), those a training ``config`` reads only when it does (None: every one). Weights
    (``reads="weights"``, a ``base_model``) are not folders of the version:
    ``ml_assets.train.weights.resolve_weights`` finds the snapshot the config names (evaluation
    finds it through what the model recorded)."""
    return {
        spec.asset: home.export_dir(spec.export_folder(), version)
        for spec in kind.inputs
        if spec.reads == "export" and (config is None or spec.read_by(config))
    }


def input_assets(kind: ModelKind) -> list[str]:
    """The assets ``kind`` trains from besides the folds: lineage dependencies of its models."""
    return [spec.asset for spec in kind.inputs]


@dataclass(frozen=True)
class KindPipeline:
    model: dg.AssetsDefinition
    evaluation: dg.AssetsDefinition
    report: dg.AssetsDefinition
    model_checks: dg.AssetChecksDefinition
    gate: dg.AssetChecksDefinition
    jobs: list  # asset jobs, resolved when the Definitions load

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.model, self.evaluation, self.report]

    @property
    def checks(self) -> list[dg.AssetChecksDefinition]:
        return [self.model_checks, self.gate]


def model_fold(context) -> tuple[str, int | None] | None:
    """(version, fold) of a fold model's partition; (version, None) for a final model's; None
    for a run without a partition (``checked_partition``)."""
    key = checked_partition(context)
    if key is None:
        return None
    if isinstance(key, dg.MultiPartitionKey):
        return version_fold(context)
    return key, None


def model_checks(asset: dg.AssetsDefinition, kind: ModelKind) -> dg.AssetChecksDefinition:
    """Blocking checks of a model asset (fold or final): finite weights, identical reload."""

    @dg.multi_asset_check(
        **blocking_checks(
            asset,
            {
                "weights_finite": "Every weight of the saved model is a finite number.",
                "reloads_identically": "The saved model, rebuilt from disk, predicts what the "
                "trained model predicted on a few held-out images.",
            },
        )
    )
    def checks(
        context: dg.AssetCheckExecutionContext,
        home: MLAssetsHome,
        training_device: TrainingDevice,
    ):
        from ml_assets.train.runs import nonfinite_weights, reload_difference

        partition = model_fold(context)
        if partition is None:
            return
        version, fold = partition
        model_dir = home.model_dir(kind.name, version, fold)
        device = training_device.torch_device()
        if selected(context, "weights_finite"):
            bad = nonfinite_weights(kind, model_dir, device)
            yield dg.AssetCheckResult(
                check_name="weights_finite",
                passed=not bad,
                metadata={
                    "tensors_with_nonfinite_values": len(bad),
                    **dict(list(bad.items())[:20]),
                },
            )
        if selected(context, "reloads_identically"):
            found = reload_difference(kind, model_dir, load_version(home, version), device)
            yield dg.AssetCheckResult(
                check_name="reloads_identically",
                passed=found["max_abs_difference"] <= found["tolerance"],
                metadata={k: float(v) for k, v in found.items()},
            )

    return checks


def trained_metadata(trained, device) -> dict:
    """The model asset's metadata: how training went, the pulled weights it started from (name
    and hash), where the model is, its MLflow run."""
    from ml_assets.train.weights import weights_tags

    fit = trained.fit
    metadata = {
        "train_images": trained.train_images,
        "epochs_run": len(fit.history),
        "train_seconds": round(trained.seconds, 1),
        "resumed": fit.resumed_from is not None,
        "resumed_from_epoch": fit.resumed_from or 0,
        **numbers(fit.summary),
        **{k: v for k, v in fit.summary.items() if isinstance(v, str)},
        **weights_tags(trained.lineage.get("pretrained", {})),
        "device": str(device),
        "history": md_frame(fit.history, index=False),
        "path": dg.MetadataValue.path(str(trained.model_dir)),
    }
    if trained.mlflow_url:
        metadata["mlflow_run"] = dg.MetadataValue.url(trained.mlflow_url)
        metadata["registered_model"] = (
            f"{trained.lineage['kind']} version {trained.registered_version}"
        )
    return metadata


def train_partition(
    context: dg.AssetExecutionContext,
    kind: ModelKind,
    home: MLAssetsHome,
    training_device: TrainingDevice,
    mlflow_tracking: MLflowTracking,
    version: str,
    fold: int | None,
    config,
    k: int,
) -> Iterator[dg.MaterializeResult]:
    """What every model asset does, a fold's (``fold``) or a version's final model
    (``fold=None``): refuse a version that cannot teach the kind, else find the pulled weights
    the config names (offline: weights not pulled fail the step here, with the command that
    pulls them), the device resource's overrides, ``train_fold`` in this process or under
    torchrun (on the version's ``k`` folds), and the trained model's metadata. A refused
    partition yields nothing: it stays unmaterialized, so nothing downstream runs, and an
    observation on it says why (the assets take ``output_required=False``)."""
    from ml_assets.train.kinds import refusal
    from ml_assets.train.runs import FoldRun, train_fold
    from ml_assets.train.weights import resolve_weights

    ds = load_version(home, version)
    reason = refusal(kind, ds)
    if reason is not None:
        observe_refusal(context, reason)
        return
    settings = config.model_copy(update=training_device.overrides(config))
    run = FoldRun(
        kind,
        version,
        fold,
        settings,
        device=training_device.torch_device(),
        run_dir=home.run_dir(kind.name, version, fold),
        model_dir=home.model_dir(kind.name, version, fold),
        inputs=inputs_of(kind, home, version, settings),
        weights=resolve_weights(settings, home.store),
        tags={
            "dagster_run_id": context.run_id,
            "asset_key": context.asset_key.to_user_string(),
            "version": version,
            "fold": "final" if fold is None else str(fold),
        },
        tracking=mlflow_tracking.tracking(home.mlflow_dir),
    )
    part = "final model" if fold is None else f"fold {fold}"
    context.log.info(f"training {kind.name} for version {version} {part} on {run.device}")
    if kind.distributed == "torchrun" and processes(settings) > 1:
        trained = train_with_torchrun(context, home, run, k)
    else:
        assignment, folds_digest = load_folds(home, version, k)
        trained = train_fold(run, ds, assignment, folds_digest, context.log.info)
    from ml_assets.evaluate.report import trained_view

    metadata = trained_metadata(trained, run.device) | {"processes": processes(settings)}
    metadata = trained_view(metadata, kind.primary_metric)
    yield dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(trained.lineage["fingerprint"])
    )


def observe_refusal(context: dg.AssetExecutionContext, reason: str) -> None:
    """Say why a partition was not trained: a warning and an observation on the partition."""
    context.log.warning(f"not trained: {reason}")
    context.log_event(
        dg.AssetObservation(
            asset_key=context.asset_key,
            partition=context.partition_key,
            metadata={"not_trained": reason},
        )
    )


def train_with_torchrun(context, home: MLAssetsHome, run, k: int):
    """``train_fold`` of ``run`` in ``nproc_per_node`` processes under torchrun, launched
    through Dagster Pipes, each reading the version's assignment to ``k`` folds: rank 0's log
    lines and epochs arrive in this run's logs as they happen, and the trained fold comes back
    as a Pipes message (see ``ml_assets.train.distributed``)."""
    from ml_assets.train import distributed

    version = run.version
    with distributed.request_folder() as folder:
        request = distributed.write_request(
            folder,
            run,
            tables=home.tables_dir(version),
            files=home.store.files_dir(version),
            folds=home.folds_path(version),
            k=k,
        )
        command = distributed.torchrun_command(run.config, request, f"{version}-{run.fold}")
        context.log.info(f"launching {' '.join(command)}")
        invocation = dg.PipesSubprocessClient().run(context=context, command=command)
    return distributed.trained_from_messages(invocation.get_custom_messages())


def promotion_config(kind: ModelKind, champion: bool = False) -> type[dg.Config]:
    """A promotion gate's launchpad config, with the kind's own default floor; ``champion``
    adds the tolerance against the current champion (the final model's gate)."""
    fields = {
        "floor": Field(
            default=kind.promotion_floor,
            description=f"Least mean {kind.primary_metric} across folds to promote",
        )
    }
    if champion:
        fields["tolerance"] = Field(
            default=0.01,
            description=f"How much lower than the champion's mean {kind.primary_metric} a "
            "candidate may score and still be promoted",
        )
    name = kind.name.title().replace("_", "") + ("Champion" if champion else "Promotion")
    return type(
        f"{name}Config",
        (dg.Config,),
        {"__annotations__": dict.fromkeys(fields, float), **fields},
    )


def build_pipeline(kind: ModelKind, settings: Settings) -> KindPipeline:
    """The assets, checks and jobs of one model kind, with ``settings.folds`` fold partitions."""
    k = settings.folds
    model = model_asset(kind, k)
    evaluation = evaluation_asset(kind, model, k)
    report = report_asset(kind, evaluation, k)
    return KindPipeline(
        model,
        evaluation,
        report,
        model_checks(model, kind),
        gate_check(kind, report),
        kind_jobs(kind, training_run_tags(settings.max_runtime_hours)),
    )


def model_asset(kind: ModelKind, k: int) -> dg.AssetsDefinition:
    """``<kind>[version, fold]``: trained on every fold but this one."""
    config_class = type(kind.config_class.__name__, (dg.Config, kind.config_class), {})
    tags = {KIND_TAG: kind.name}

    @dg.asset(
        name=kind.name,
        partitions_def=version_folds(k),
        deps=["folds", *input_assets(kind)],
        group_name="training",
        kinds=set(kind.tags),
        tags=tags,
        pool="gpu",
        op_tags=GPU_OP_TAGS,
        automation_condition=train_on_change(kind),
        code_version=code_version(kind),
        description=kind.description,
        output_required=False,  # a version that cannot teach the kind is not trained
    )
    def model(
        context: dg.AssetExecutionContext,
        config: config_class,
        home: MLAssetsHome,
        training_device: TrainingDevice,
        mlflow_tracking: MLflowTracking,
    ):
        version, fold = version_fold(context)
        yield from train_partition(
            context, kind, home, training_device, mlflow_tracking, version, fold, config, k
        )

    return model


def evaluation_asset(kind: ModelKind, model: dg.AssetsDefinition, k: int) -> dg.AssetsDefinition:
    """``<evaluation>[version, fold]``: the model of this very partition on its held-out fold."""
    tags = {KIND_TAG: kind.name}

    @dg.asset(
        name=kind.evaluation_name,
        partitions_def=version_folds(k),
        deps=[model],
        group_name="evaluation",
        kinds={"pytorch"},
        tags=tags,
        pool="gpu",
        op_tags=GPU_OP_TAGS,
        automation_condition=ON_CHANGE,
        code_version=code_version(kind),
        description=f"The {kind.name} of this (version, fold) scored on its held-out fold.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, home: MLAssetsHome, training_device: TrainingDevice
    ) -> dg.MaterializeResult:
        from ml_assets.data.folds import held_out_ids
        from ml_assets.evaluate.report import evaluation_view
        from ml_assets.train.evaluation import evaluate_fold

        version, fold = version_fold(context)
        assignment, folds_digest = load_folds(home, version, k)
        out = home.evaluation_dir(kind.name, version, fold)
        # The model of this very partition, as lineage says: never "the latest".
        record, scores = evaluate_fold(
            kind,
            home.model_dir(kind.name, version, fold),
            load_version(home, version),
            held_out_ids(assignment, fold),
            training_device.torch_device(),
            folds_digest,
            out,
            inputs_of(kind, home, version),
        )
        links = {"model": Path(record["model"]), "path": out}
        return dg.MaterializeResult(
            data_version=data_version(metrics=record["metrics"], per_class=record["per_class"]),
            metadata=as_metadata(evaluation_view(kind.primary_metric, scores, links)),
        )

    return evaluation


def report_asset(kind: ModelKind, evaluation: dg.AssetsDefinition, k: int) -> dg.AssetsDefinition:
    """``<report>[version]``: every fold, mean and std, and the baseline."""
    tags = {KIND_TAG: kind.name}

    @dg.asset(
        name=kind.report_name,
        partitions_def=dataset_versions,
        deps=[evaluation, "version_diff"],  # its line heads the report
        group_name="reports",
        kinds={"pandas"},
        tags=tags,
        automation_condition=ON_CHANGE,
        description=f"Cross-validated quality of {kind.name} on a dataset version: every fold, "
        "mean and standard deviation, and the baseline of the primary metric.",
    )
    def report(
        context: dg.AssetExecutionContext, home: MLAssetsHome, mlflow_tracking: MLflowTracking
    ) -> dg.MaterializeResult:
        from ml_assets.evaluate.report import (
            data_change,
            decision_line,
            previous_report,
            read_fold_records,
            report_plots,
            report_view,
            write_report,
        )
        from ml_assets.train.evaluation import summarize_folds

        version = context.partition_key
        assignment, folds_digest = load_folds(home, version, k)
        folders = {f: home.evaluation_dir(kind.name, version, f) for f in range(k)}
        records = read_fold_records(folders, folds_digest)
        versions = context.instance.get_dynamic_partitions(dataset_versions.name)
        earlier = versions[: versions.index(version)] if version in versions else []
        previous = previous_report([home.report_dir(kind.name, v) for v in earlier])
        summary = summarize_folds(kind, version, records, previous)
        if line := data_change(home.quality_dir("version_diff", version)):
            summary["data_change"] = line  # what changed in the data since the previous version
        plots = report_plots(records, folders, lambda: load_version(home, version), assignment)
        _, decision = decision_line(summary, kind.promotion_floor)
        out = write_report(home.report_dir(kind.name, version), summary, plots, decision)
        links: dict = {"path": out}
        tracking = mlflow_tracking.tracking(home.mlflow_dir)
        if tracking is not None:  # report.html opens in the MLflow UI's artifact viewer
            means = {f"mean_{k}": v for k, v in summary["mean"].items()}
            links = {"report_html": tracking.log_report(kind.name, version, out, means)} | links
        view = report_view(summary, plots, kind.promotion_floor, links)
        numbers_only = {k: summary[k] for k in ("mean", "std", "baseline")}
        return dg.MaterializeResult(
            metadata=as_metadata(view), data_version=data_version(**numbers_only)
        )

    return report


def gate_check(kind: ModelKind, report: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """``<gate>``: the promotion gate on a report (blocking)."""
    gate_config = promotion_config(kind)

    @dg.multi_asset_check(
        **blocking_checks(
            report,
            {
                kind.gate_name: f"Promotion gate: mean {kind.primary_metric} over held-out folds "
                "reaches the floor and beats the kind's baseline."
            },
        )
    )
    def gate(context: dg.AssetCheckExecutionContext, config: gate_config, home: MLAssetsHome):
        from ml_assets.evaluate.report import promotion_decision, read_report

        version = checked_partition(context)
        if version is None:
            return
        report = read_report(home.report_dir(kind.name, version))
        passed, found = promotion_decision(report, config.floor)
        yield dg.AssetCheckResult(
            check_name=kind.gate_name, passed=passed, metadata=check_metadata(found)
        )

    return gate


def kind_jobs(kind: ModelKind, run_tags: dict[str, str]) -> list:
    """``<kind>_job`` (model and evaluation of one partition, with the training ``run_tags``)
    and ``<report>_job``."""
    selection = dg.AssetSelection.tag(KIND_TAG, kind.name)
    return [
        dg.define_asset_job(
            f"{kind.name}_job",
            selection=selection & dg.AssetSelection.groups("training", "evaluation"),
            tags=run_tags,
            description=f"Train and evaluate {kind.name} for one (version, fold).",
        ),
        dg.define_asset_job(
            f"{kind.report_name}_job",
            selection=selection & dg.AssetSelection.groups("reports"),
            description=f"Summarize every fold of {kind.name} and apply its promotion gate.",
        ),
    ]
