"""Promotion: the final model, the gate against the champion, and the MLflow alias."""

import shutil

import dagster as dg
import mlflow
import orjson
import pytest
from mlflow.tracking import MlflowClient
from pipelines import DATA, LOCATION_SETTINGS, training_resources

from ml_assets.data.atomic import write_bytes
from ml_assets.data.sample import write_sample
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.promotion import build_promotion, predictions
from ml_assets.defs.resources import MLAssetsHome
from ml_assets.evaluate.report import promotion_decision
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.tracking import tracking_uri

PIPELINE = build_pipeline(IMAGE_CLASSIFIER, LOCATION_SETTINGS)
FINAL, PROMOTED, EXPORTED = (
    PROMOTION := build_promotion(IMAGE_CLASSIFIER, PIPELINE.report, LOCATION_SETTINGS.folds)
)[0]
*FINAL_CHECKS, ONNX_CHECK = PROMOTION[1]
TINY = {"epochs": 1, "img_size": 32, "batch_size": 8}


def test_the_rule_passes_a_better_candidate_and_names_every_reason_it_fails():
    report = {"primary_metric": "macro_f1", "mean": {"macro_f1": 0.7}, "baseline": 0.3}
    assert promotion_decision(report, 0.5) == (
        True,
        {"mean_macro_f1": 0.7, "baseline": 0.3, "floor": 0.5},
    )
    champion = {"version": "old", "score": 0.75}
    passed, found = promotion_decision(report, 0.5, champion, tolerance=0.01)
    assert not passed and "worse than the champion's 0.7500 (version old)" in found["reasons"]
    assert promotion_decision(report, 0.5, champion, tolerance=0.1)[0]
    passed, found = promotion_decision(report | {"baseline": 0.8}, 0.9)
    assert not passed
    assert (
        "below the floor" in found["reasons"] and "does not beat the baseline" in found["reasons"]
    )


def cross_validate(instance, home, landing) -> str:
    """Ingest ``landing`` as a version, train and evaluate both folds, report."""
    key = home.store.register(landing)
    instance.add_dynamic_partitions(dataset_versions.name, [key])
    data = DATA
    done = dg.materialize(data, partition_key=key, resources={"home": home}, instance=instance)
    assert done.success
    model, evaluation, report = PIPELINE.assets
    for fold in ("0", "1"):
        assert dg.materialize(
            [model, evaluation],
            partition_key=dg.MultiPartitionKey({"version": key, "fold": fold}),
            resources=training_resources(home),
            instance=instance,
            run_config={"ops": {"image_classifier": {"config": TINY}}},
        ).success
    done = dg.materialize(
        [report], partition_key=key, resources=training_resources(home), instance=instance
    )
    assert done.success
    return key


def pretend_score(home, key: str, score: float) -> None:
    """Set the cross-fold mean the gate reads (tiny 1-epoch models score near chance: this
    test is about the gate and the alias, training quality is tested elsewhere)."""
    path = home.report_dir("image_classifier", key) / "report.json"
    report = orjson.loads(path.read_bytes())
    report["mean"]["macro_f1"], report["baseline"] = score, 0.2
    write_bytes(path, orjson.dumps(report))


def promote(instance, home, key):
    return dg.materialize(
        [FINAL, *FINAL_CHECKS, PROMOTED],
        partition_key=key,
        resources=training_resources(home),
        instance=instance,
        raise_on_error=False,
    )


def champion_alias(home) -> str:
    client = MlflowClient(tracking_uri(home.mlflow_dir))
    return str(client.get_model_version_by_alias("image_classifier", "champion").version)


@pytest.mark.slow
def test_a_worse_candidate_is_blocked_and_the_champion_moves_only_for_a_better_one(
    tmp_path, tiny_sample
):
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny_sample, first)
    write_sample(second, images=12, seed=11, size=48)
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(first))
    try:
        with dg.instance_for_test() as instance:
            old = cross_validate(instance, home, first)
            pretend_score(home, old, 0.8)
            result = promote(instance, home, old)
            assert result.success
            checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
            assert checks["beats_champion"].passed
            assert checks["beats_champion"].metadata["champion_version"].value == "none yet"
            assert (home.model_dir("image_classifier", old, None) / "model.safetensors").is_file()
            promoted = result.asset_materializations_for_node("promoted_image_classifier")
            assert promoted[0].metadata["previous_champion"].value == "none"
            first_alias = champion_alias(home)

            new = cross_validate(instance, home, second)
            pretend_score(home, new, 0.6)
            blocked = promote(instance, home, new)
            gate = {e.check_name: e for e in blocked.get_asset_check_evaluations()}
            assert not gate["beats_champion"].passed
            reasons = gate["beats_champion"].metadata["reasons"].value
            assert f"worse than the champion's 0.8000 (version {old})" in reasons
            assert not blocked.asset_materializations_for_node("promoted_image_classifier")
            champion = orjson.loads(home.champion_path("image_classifier").read_bytes())
            assert champion["version"] == old and champion_alias(home) == first_alias

            pretend_score(home, new, 0.9)
            better = promote(instance, home, new)
            assert better.success
            champion = orjson.loads(home.champion_path("image_classifier").read_bytes())
            assert champion["version"] == new and champion["previous"]["version"] == old
            assert champion_alias(home) != first_alias
            assert champion_alias(home) == champion["mlflow_version"]

            # The champion exports to ONNX that agrees with PyTorch, and predicts in batch.
            exported = dg.materialize(
                [EXPORTED, ONNX_CHECK],
                partition_key=new,
                resources=training_resources(home),
                instance=instance,
            )
            (check,) = exported.get_asset_check_evaluations()
            assert check.passed and check.metadata["max_abs_diff"].value <= 1e-4
            folder = home.exports_dir("image_classifier", new)
            assert {"model.onnx", "classes.json", "preprocessing.json"} <= {
                f.name for f in folder.iterdir()
            }
            predicted = dg.materialize(
                [predictions],
                partition_key=new,
                resources=training_resources(home),
                instance=instance,
                run_config={"ops": {"predictions": {"config": {"kind": "image_classifier"}}}},
            )
            meta = predicted.asset_materializations_for_node("predictions")[0].metadata
            assert meta["images"].value == 12 and meta["champion_version"].value == new
    finally:
        mlflow.end_run()


@pytest.mark.parametrize("reported", [False, True], ids=["launched", "gate-reported-by-hand"])
def test_promoting_by_hand_past_a_failed_gate_is_refused(tmp_path, reported):
    """A launch by hand past a failed gate, and one after the Checks tab's "Report evaluation"
    (on the full webserver) wrote passed=True for the gate: promotion decides from the report
    again and refuses either way (issue 20: the UI may show a gate passed that did not)."""
    home = MLAssetsHome(root=str(tmp_path))
    key = "abcdef123456"
    report = {"primary_metric": "macro_f1", "mean": {"macro_f1": 0.1}, "baseline": 0.3}
    write_bytes(home.report_dir("image_classifier", key) / "report.json", orjson.dumps(report))
    gate = dg.AssetCheckKey(FINAL.key, "beats_champion")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        if reported:  # what the reportAssetCheckEvaluations mutation writes: a runless evaluation
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=gate.asset_key, check_name=gate.name, passed=True, partition=key
                )
            )
            history = instance.event_log_storage.get_asset_check_execution_history(gate, limit=1)
            assert history[0].status.value == "SUCCEEDED"  # the UI shows the gate passed...
        result = dg.materialize(
            [PROMOTED],
            partition_key=key,
            resources=training_resources(home),
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success  # ...and promotion is not fooled
    message = result.failure_data_for_node("promoted_image_classifier").error.message
    assert "is not promoted" in message and "below the floor" in message
    assert not home.champion_path("image_classifier").exists()


def test_the_final_model_needs_the_cross_validated_folds(tmp_path):
    home = MLAssetsHome(root=str(tmp_path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(dataset_versions.name, ["abcdef123456"])
        result = dg.materialize(
            [FINAL],
            partition_key="abcdef123456",
            resources=training_resources(home),
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    assert (
        "no trained model here"
        in result.failure_data_for_node("image_classifier_final").error.cause.message
    )
