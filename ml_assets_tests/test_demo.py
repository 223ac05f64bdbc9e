"""The main job end to end on a tiny sample: real training, 2 folds, 1 epoch."""

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner

from ml_assets.cli import main
from ml_assets.demo import report_table, run_demo


@pytest.mark.slow
def test_demo_materializes_everything_and_reports(home, tree_digest):
    report = run_demo(images=16, folds=2, epochs=1, echo=lambda _: None)
    version = report["version"]
    assert len(version) == 12 and [r["fold"] for r in report["folds"]] == [0, 1]
    for record in report["folds"]:
        assert 0 <= record["macro_f1"] <= 1 and record["samples"] > 0
        assert (
            home
            / "models"
            / "image_classifier"
            / version
            / f"fold-{record['fold']}"
            / "model.safetensors"
        ).is_file()
        evaluation = home / "evaluations" / "image_classifier" / version / f"fold-{record['fold']}"
        assert orjson.loads((evaluation / "metrics.json").read_bytes())["model"].endswith(
            f"fold-{record['fold']}"
        )
    assert (
        (home / "reports" / "image_classifier" / version / "confusion.png")
        .read_bytes()
        .startswith(b"\x89PNG")
    )
    table = report_table(report)
    assert list(table.index) == ["fold 0", "fold 1", "mean", "std"]
    assert table.loc["mean", "accuracy"] == pytest.approx(
        (table.loc["fold 0", "accuracy"] + table.loc["fold 1", "accuracy"]) / 2
    )
    landing = tree_digest(home / "landing")

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {"ingest_job", "training_job", "report_job"}
    assert all(r.tags["ml_assets/trigger"] == "demo" for r in runs)
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey("classifier_evaluation"))
    events = instance.fetch_materializations(flt, limit=10).records
    assert len(events) == 2
    metadata = events[0].asset_materialization.metadata
    assert isinstance(metadata["macro_f1"].value, float)
    assert metadata["confusion_matrix"].value.startswith(
        "![confusion matrix](data:image/png;base64,"
    )
    classifier = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_classifier")), limit=1
    )
    trained = classifier.records[0].asset_materialization.metadata
    assert trained["epochs"].value == 1 and trained["mlflow_run"].value.startswith(
        "http://127.0.0.1:5000/#/experiments/"
    )
    assert (home / "mlflow" / "mlflow.db").is_file()

    # Running it again reuses the landed data and the same version.
    result = CliRunner().invoke(main, ["demo", "--images", "16", "--folds", "2", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert f"version {version}" in result.output and "already holds data" in result.output
    assert "fold 1" in result.output and "promotion gate:" in result.output
    assert tree_digest(home / "landing") == landing
