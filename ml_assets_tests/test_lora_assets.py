"""The LoRA classifier through Dagster: a base model snapshotted by name, an adapter trained on
it for a (version, fold) with its checks, evaluation and MLflow artifact, and a new base hash
when the base folder changes."""

import shutil

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from pipelines import (
    LOCATION_SETTINGS,
    declared_parts_work,
    ingested_version,
    landed_images,
    metadata_of,
    train_fold_assets,
)

from ml_assets.cli import main
from ml_assets.defs import base_models
from ml_assets.defs.models import build_pipeline
from ml_assets.train.kinds.lora_classifier import LORA_CLASSIFIER
from ml_assets.train.lora import read_meta
from ml_assets.train.tracking import tracking_uri

PIPELINE = build_pipeline(LORA_CLASSIFIER, LOCATION_SETTINGS)
SETTINGS = {"base_model": "tiny-vit", **LORA_CLASSIFIER.smoke}


def snapshot(instance, home, folder) -> dict:
    result = dg.materialize(
        [base_models.base_model],
        resources={"home": home},
        instance=instance,
        run_config={"ops": {"base_model": {"config": {"folders": {"tiny-vit": str(folder)}}}}},
    )
    return metadata_of(result, "base_model")


def train(instance, home, key):
    return train_fold_assets(instance, home, key, LORA_CLASSIFIER, SETTINGS)


@pytest.fixture
def ingested(landed, tmp_path):
    landing, home = landed
    folder = tmp_path / "weights" / "vit"
    made = CliRunner().invoke(main, ["base-model", "init", str(folder), "--arch", "vit", "--tiny"])
    assert made.exit_code == 0, made.output
    with ingested_version(landing, home) as (instance, key):
        yield instance, home, key, folder


@pytest.mark.slow  # two trainings through Dagster: about 30 s on 2 idle cores
def test_lora_classifier_trains_on_a_named_base_snapshot_and_records_its_hash(ingested, tmp_path):
    instance, home, key, folder = ingested
    base = snapshot(instance, home, folder)
    assert base["base_models"] == 1 and base["tiny-vit_architecture"] == "vit"
    assert base["tiny-vit_parameters"] > 0 and base["tiny-vit_size_mb"] > 0

    result = train(instance, home, key)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"weights_finite": True, "reloads_identically": True}
    trained = metadata_of(result, LORA_CLASSIFIER.name)
    assert trained["epochs_run"] == 1
    assert 0 < trained["trainable_ratio"] < 1 and trained["trainable_parameters"] > 0
    assert trained["adapter_size_mb"] < base["tiny-vit_size_mb"]
    model_dir = home.model_dir(LORA_CLASSIFIER.name, key, 0)
    assert read_meta(model_dir)["base_model"]["hash"] == base["tiny-vit_hash"]
    assert trained["base_model_hash"] == base["tiny-vit_hash"]
    assert not (model_dir / "model.safetensors").exists()
    scored = metadata_of(result, LORA_CLASSIFIER.evaluation_name)
    assert 0 <= scored["macro_f1"] <= 1
    record = orjson.loads(
        (home.evaluation_dir(LORA_CLASSIFIER.name, key, 0) / "metrics.json").read_bytes()
    )
    assert record["extra"]["base_model_hash"] == base["tiny-vit_hash"]
    declared_parts_work(LORA_CLASSIFIER, model_dir, landed_images(home, key), tmp_path)

    client = MlflowClient(tracking_uri(home.mlflow_dir))
    (run,) = client.search_runs(
        [client.get_experiment_by_name(LORA_CLASSIFIER.name).experiment_id],
        filter_string=f"tags.dagster_run_id = '{result.run_id}'",
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/adapter_model.safetensors", "model/adapter_config.json"} <= artifacts
    assert run.data.params["base_model"] == "tiny-vit"

    # Other weights in the same folder: a new snapshot hash, and the next adapter records it.
    shutil.rmtree(folder)
    from ml_assets.train.base_models import init_base_model

    init_base_model(folder, "vit", tiny=True, seed=1)
    changed = snapshot(instance, home, folder)
    assert changed["tiny-vit_hash"] != base["tiny-vit_hash"]
    assert train(instance, home, key).success
    assert read_meta(model_dir)["base_model"]["hash"] == changed["tiny-vit_hash"]


def test_training_names_a_base_model_that_was_never_snapshotted(ingested):
    instance, home, key, _ = ingested
    result = train_fold_assets(
        instance, home, key, LORA_CLASSIFIER, SETTINGS, evaluate=False, raise_on_error=False
    )
    assert not result.success
    message = result.failure_data_for_node(LORA_CLASSIFIER.name).error.cause.message
    assert "no base model named 'tiny-vit'" in message
