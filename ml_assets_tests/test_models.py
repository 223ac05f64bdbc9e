"""The per-kind pipeline through Dagster: every kind trains, is checked, evaluated and reported
for real on tiny data; MLflow records the run; an interrupted materialization resumes."""

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient
from pipelines import (
    FOLDS,
    LOCATION,
    LOCATION_SETTINGS,
    declared_parts_work,
    ingested_version,
    landed_images,
    metadata_of,
    train_fold_assets,
    training_resources,
)

from ml_assets.defs import exports
from ml_assets.defs.models import build_pipeline
from ml_assets.train import runs
from ml_assets.train.kinds import reads
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.registry import KINDS
from ml_assets.train.tracking import tracking_uri

PIPELINES = {name: build_pipeline(kind, LOCATION_SETTINGS) for name, kind in KINDS.items()}


@pytest.fixture
def ingested(landed):
    """A tiny dataset version with its folds and YOLO export, in a test instance."""
    landing, home = landed
    with ingested_version(landing, home, [exports.yolo_dataset]) as (instance, key):
        yield instance, home, key


def train(instance, home, key, name, fold=0, settings=None, raise_on_error=True):
    settings = settings or KINDS[name].smoke
    return train_fold_assets(
        instance, home, key, KINDS[name], settings, fold, raise_on_error=raise_on_error
    )


def test_every_kind_declares_every_part_of_the_protocol():
    from ml_assets.train.kinds import Input, ModelKind

    methods = ("fit", "save", "load", "score", "baseline", "module", "outputs")
    assets = {k.to_user_string() for k in LOCATION.resolve_asset_graph().get_all_asset_keys()}
    for kind in KINDS.values():
        assert not [a for a in ModelKind.__annotations__ if not hasattr(kind, a)], kind.name
        assert all(callable(getattr(kind, m, None)) for m in methods), kind.name
        assert kind.held_out in {"classes", "boxes", ""} and set(kind.smoke) <= set(
            kind.config_class.model_fields
        )
        # Every input is a typed spec naming an asset of the location (its lineage).
        assert all(isinstance(i, Input) and i.asset in assets for i in kind.inputs), kind.name


# Kinds that train on a base model are materialized in their own tests, which make one.
WITHOUT_BASE = sorted(k for k, kind in KINDS.items() if not reads(kind, "base_model"))


@pytest.mark.parametrize("name", WITHOUT_BASE)
def test_every_kind_trains_is_checked_evaluated_reported_exported_and_predicts(
    ingested, name, tmp_path
):
    instance, home, key = ingested
    kind = KINDS[name]
    for fold in (0, 1):
        result = train(instance, home, key, name, fold)
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"weights_finite": True, "reloads_identically": True}
        trained = metadata_of(result, name)
        assert trained["epochs_run"] == 2 and trained["resumed"] is False
        assert trained["mlflow_run"].startswith("http://127.0.0.1:5000/#/experiments/")
        assert trained["registered_model"] == f"{name} version {fold + 1}"
        model_dir = home.model_dir(name, key, fold)
        assert runs.read_lineage(model_dir)["fold"] == fold
        assert not home.run_dir(name, key, fold).exists()  # a finished run leaves no checkpoint
        scored = metadata_of(result, kind.evaluation_name)
        assert 0 <= scored[kind.primary_metric] <= 1
        assert (home.evaluation_dir(name, key, fold) / "predictions.parquet").is_file()

    pipeline = PIPELINES[name]
    report = dg.materialize(
        [pipeline.report, pipeline.gate],
        partition_key=key,
        resources=training_resources(home),
        instance=instance,
        raise_on_error=False,
    )
    summary = metadata_of(report, kind.report_name)
    assert summary["folds"] == 2 and f"mean_{kind.primary_metric}" in summary
    assert (home.report_dir(name, key) / "report.json").is_file()
    (gate,) = report.get_asset_check_evaluations()
    assert gate.check_name == kind.gate_name
    assert gate.metadata["floor"].value == kind.promotion_floor
    declared_parts_work(kind, home.model_dir(name, key, 0), landed_images(home, key), tmp_path)


def test_mlflow_records_parameters_epochs_tags_the_model_and_its_registered_version(ingested):
    instance, home, key = ingested
    result = train(instance, home, key, "image_classifier", 1)
    client = MlflowClient(tracking_uri(home.mlflow_dir))
    (run,) = client.search_runs(
        [client.get_experiment_by_name("image_classifier").experiment_id],
        filter_string=f"tags.dagster_run_id = '{result.run_id}'",
    )
    assert run.data.tags["asset_key"] == "image_classifier"
    assert run.data.tags["version"] == key and run.data.tags["fold"] == "1"
    assert run.data.params["epochs"] == "2" and run.data.params["img_size"] == "32"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2]
    assert "final_train_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/classifier.json", "model/model.json"} <= artifacts
    (version,) = client.search_model_versions("name = 'image_classifier'")
    assert version.run_id == run.info.run_id


def test_an_interrupted_materialization_resumes_and_a_new_configuration_restarts(
    ingested, monkeypatch
):
    instance, home, key = ingested
    settings = {"epochs": 3, "img_size": 32, "batch_size": 8}
    lines = []
    original = runs.Progress.__call__

    def crash_after_first_epoch(self, epoch, epochs, row):
        original(self, epoch, epochs, row)
        lines.append(epoch)
        if epoch == 1:
            raise RuntimeError("power cut")

    monkeypatch.setattr(runs.Progress, "__call__", crash_after_first_epoch)
    failed = train(instance, home, key, "image_classifier", 0, settings, raise_on_error=False)
    assert not failed.success and lines == [1]
    assert (home.run_dir("image_classifier", key, 0) / "checkpoint.pt").is_file()
    monkeypatch.setattr(runs.Progress, "__call__", original)

    resumed = metadata_of(
        train(instance, home, key, "image_classifier", 0, settings), "image_classifier"
    )
    assert resumed["resumed"] is True and resumed["resumed_from_epoch"] == 2
    assert resumed["epochs_run"] == 3

    monkeypatch.setattr(runs.Progress, "__call__", crash_after_first_epoch)
    assert not train(instance, home, key, "image_classifier", 0, settings, False).success
    monkeypatch.setattr(runs.Progress, "__call__", original)
    changed = settings | {"lr": 1e-3}
    fresh = metadata_of(
        train(instance, home, key, "image_classifier", 0, changed), "image_classifier"
    )
    assert fresh["resumed"] is False and fresh["epochs_run"] == 3


def test_progress_is_one_line_per_epoch_in_the_run_log(ingested):
    instance, home, key = ingested
    result = train(instance, home, key, "yolo_detector", 0)
    messages = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.message and " epoch " in e.message and e.message.startswith("yolo_detector")
    ]
    assert len(messages) == 2
    assert (
        messages[0].startswith(f"yolo_detector {key} fold 0 epoch 1/2: ") and "left" in messages[0]
    )
    assert "map50_95" in messages[1] and "box_loss" in messages[1]  # per-epoch validation


def test_evaluation_refuses_a_model_of_another_fold_assignment(ingested):
    instance, home, key = ingested
    assert train(instance, home, key, "image_classifier", 0).success
    assert dg.materialize(
        [FOLDS],
        partition_key=key,
        resources={"home": home},
        instance=instance,
        run_config={"ops": {"folds": {"config": {"seed": 7}}}},
    ).success
    model, evaluation, _ = PIPELINES["image_classifier"].assets
    result = dg.materialize(
        [evaluation],
        partition_key=dg.MultiPartitionKey({"version": key, "fold": "0"}),
        resources=training_resources(home),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    message = result.failure_data_for_node("classifier_evaluation").error.cause.message
    assert "trained on another fold assignment" in message


def test_training_refuses_folds_made_for_another_k(ingested):
    import pandas as pd

    from ml_assets.data.atomic import write_bytes

    instance, home, key = ingested
    path = home.folds_path(key)
    folds = pd.read_parquet(path)
    write_bytes(path, folds.assign(fold=folds["image_id"] % 3).to_parquet(index=False))
    result = train(instance, home, key, "image_classifier", 0, raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("image_classifier").error.cause.message
    assert "do not match k=2" in message


def test_a_kind_registers_once_and_gets_its_whole_pipeline():
    assert KINDS["image_classifier"] is IMAGE_CLASSIFIER and KINDS["yolo_detector"] is YOLO_DETECTOR
    assert {"image_classifier", "yolo_detector"} <= set(WITHOUT_BASE)
    for kind, pipeline in zip(KINDS.values(), PIPELINES.values(), strict=True):
        names = [a.key.to_user_string() for a in pipeline.assets]
        assert names == [kind.name, kind.evaluation_name, kind.report_name]
        config = pipeline.model.op.config_schema.config_type
        assert set(config.fields) == set(kind.config_class.model_fields)
