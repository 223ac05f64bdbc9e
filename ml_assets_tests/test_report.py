"""classifier_report and its promotion gate, on evaluations written by hand."""

import hashlib

import dagster as dg
import numpy as np
import orjson
import pandas as pd
import pytest
from pipelines import LOCATION_SETTINGS

from ml_assets.data.atomic import write_bytes
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking
from ml_assets.evaluate.classification import classification_metrics, majority_baseline_macro_f1
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER

VERSION = "abcdef123456"
CLASSIFIER = build_pipeline(IMAGE_CLASSIFIER, LOCATION_SETTINGS)


def write_evaluations(
    home: MLAssetsHome,
    predictions: list[tuple[list[int], list[int]]],
    stale: bool = False,
    version: str = VERSION,
):
    folds = pd.DataFrame({"image_id": range(len(predictions)), "fold": range(len(predictions))})
    data = folds.to_parquet(index=False)
    write_bytes(home.folds_path(version), data)
    digest = hashlib.sha256(data).hexdigest()[:12]
    for fold, (truth, guess) in enumerate(predictions):
        m = classification_metrics(np.array(truth), np.array(guess), ["a", "b"])
        record = {
            "fold": fold,
            "metrics": {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "samples")},
            "extra": {"classes": ["a", "b"], "confusion": m["confusion"].tolist()},
            "per_class": m["per_class"].reset_index().to_dict("records"),
            "folds_digest": "0" * 12 if stale and fold == 1 else digest,
        }
        path = home.evaluation_dir("image_classifier", version, fold) / "metrics.json"
        write_bytes(path, orjson.dumps(record))


def report(home: MLAssetsHome, instance, version: str = VERSION):
    instance.add_dynamic_partitions(dataset_versions.name, [version])
    return dg.materialize(
        [CLASSIFIER.report, CLASSIFIER.gate],
        partition_key=version,
        resources={"home": home, "mlflow_tracking": MLflowTracking(enabled=False)},
        instance=instance,
        raise_on_error=False,
    )


def test_majority_baseline():
    # 3 of 4 samples are class 0: always answering 0 scores F1 2*0.75/1.75 on it, 0 on class 1.
    assert majority_baseline_macro_f1(np.array([[3, 0], [1, 0]])) == pytest.approx(6 / 7 / 2)


def test_a_good_model_passes_the_gate_and_is_summarized(tmp_path):
    home = MLAssetsHome(root=str(tmp_path))
    write_evaluations(home, [([0, 0, 1, 1], [0, 0, 1, 1]), ([0, 1, 1, 1], [0, 1, 1, 0])])
    with dg.instance_for_test() as instance:
        result = report(home, instance)
        assert result.success
        (gate,) = result.get_asset_check_evaluations()
        assert gate.passed
        metadata = result.asset_materializations_for_node("classifier_report")[0].metadata
        assert metadata["mean_accuracy"].value == pytest.approx((1 + 0.75) / 2)
        assert metadata["folds"].value == 2 and metadata["confusion_matrix"].value.startswith(
            "![confusion_matrix](data:image/png;base64,"
        )
    saved = orjson.loads(
        (home.report_dir("image_classifier", VERSION) / "report.json").read_bytes()
    )
    assert saved["mean"]["macro_f1"] == pytest.approx(
        gate.metadata["mean_macro_f1"].value, abs=1e-4
    )


def test_a_model_no_better_than_the_majority_class_fails_the_gate(tmp_path):
    home = MLAssetsHome(root=str(tmp_path))
    write_evaluations(home, [([0, 0, 0, 1], [0, 0, 0, 0]), ([0, 0, 0, 1], [0, 0, 0, 0])])
    with dg.instance_for_test() as instance:
        result = report(home, instance)
        (gate,) = result.get_asset_check_evaluations()
        assert not gate.passed and not result.success
        assert gate.metadata["mean_macro_f1"].value == pytest.approx(
            gate.metadata["baseline"].value
        )


def test_the_report_refuses_folds_from_another_assignment(tmp_path):
    home = MLAssetsHome(root=str(tmp_path))
    write_evaluations(home, [([0, 1], [0, 1]), ([0, 1], [0, 1])], stale=True)
    with dg.instance_for_test() as instance:
        result = report(home, instance)
        assert not result.success
        failure = result.failure_data_for_node("classifier_report")
        assert "fold 1 was evaluated on another fold assignment" in failure.error.cause.message


def test_a_report_shows_classes_and_what_changed_since_the_previous_version(tmp_path):
    home = MLAssetsHome(root=str(tmp_path))
    newer = "fedcba654321"
    # Version 1 gets class b wrong half the time; version 2 gets it right.
    write_evaluations(home, [([0, 0, 1, 1], [0, 0, 1, 0]), ([0, 0, 1, 1], [0, 0, 0, 1])])
    write_evaluations(
        home, [([0, 0, 1, 1], [0, 0, 1, 1]), ([0, 0, 1, 1], [0, 0, 1, 1])], version=newer
    )
    with dg.instance_for_test() as instance:
        first = report(home, instance)
        assert (
            "previous_version"
            not in first.asset_materializations_for_node("classifier_report")[0].metadata
        )
        second = report(home, instance, newer)
        metadata = second.asset_materializations_for_node("classifier_report")[0].metadata
        assert metadata["previous_version"].value == VERSION
        # Both folds of version 1 score macro F1 11/15 (F1 4/5 and 2/3); version 2 scores 1.
        assert metadata["change_macro_f1"].value == pytest.approx(4 / 15, abs=1e-4)
        assert metadata["better_classes"].value == "a, b"
        assert metadata["worse_classes"].value == "none"
        assert "| b " in metadata["per_class"].value
    folder = home.report_dir("image_classifier", newer)
    saved = orjson.loads((folder / "report.json").read_bytes())
    assert saved["change"]["previous_version"] == VERSION
    assert {row["class"] for row in saved["per_class"]} == {"a", "b"}
    html = (folder / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "<table>" in html
    assert '<img src="data:image/png;base64,' in html and "Since version" in html
    assert "![confusion_matrix](confusion_matrix.png)" in (folder / "report.md").read_text()
