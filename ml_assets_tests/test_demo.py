"""The main job end to end on a tiny sample: real training, 2 folds, 1 epoch."""

import dagster as dg
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner
from dev_server import dagster_dev, graphql
from servers import free_port

from ml_assets.cli import main
from ml_assets.local.demo import report_table, run_demo


@pytest.mark.slow
def test_demo_materializes_everything_and_reports(home, tree_digest):
    lines = []
    results = run_demo(images=16, folds=2, epochs=1, echo=lines.append)
    assert list(results) == ["shapes"]  # the sample data lands as a dataset of its own
    reports = results["shapes"]
    assert set(reports) == {"image_classifier", "yolo_detector"}
    for fold in (0, 1):  # each epoch's progress line reaches the terminal as it happens
        assert any(
            line.startswith(
                f"  image_classifier {reports['image_classifier']['version']} fold {fold} epoch 1/1: train_loss "
            )
            for line in lines
        ), lines
    report = reports["image_classifier"]
    version = report["version"]
    assert len(version) == 12 and [r["fold"] for r in report["folds"]] == [0, 1]
    for record in report["folds"]:
        assert 0 <= record["metrics"]["macro_f1"] <= 1 and record["metrics"]["samples"] > 0
        fold = f"fold-{record['fold']}"
        assert (
            home / "models" / "image_classifier" / version / fold / "model.safetensors"
        ).is_file()
        evaluation = home / "evaluations" / "image_classifier" / version / fold
        assert orjson.loads((evaluation / "metrics.json").read_bytes())["model"].endswith(fold)
    confusion = home / "reports" / "image_classifier" / version / "confusion_matrix.png"
    assert confusion.read_bytes().startswith(b"\x89PNG")
    table = report_table(report)
    assert list(table.index) == ["fold 0", "fold 1", "mean", "std"]
    assert table.loc["mean", "accuracy"] == pytest.approx(
        (table.loc["fold 0", "accuracy"] + table.loc["fold 1", "accuracy"]) / 2
    )
    detector = reports["yolo_detector"]
    assert detector["version"] == version and detector["primary_metric"] == "AP"
    assert 0 <= detector["mean"]["AP"] <= 1
    assert (home / "models" / "yolo_detector" / version / "fold-1" / "best.pt").is_file()
    landing = tree_digest(home / "landing")

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {"ingest_job", "training_job", "report_job", "quality_job"}
    # The version's quality: its diff heads the report, each kind's label issues are counted.
    assert report["data_change"] == "first version of this dataset"
    count, issues = report["label_issues"]
    assert count == len(pd.read_parquet(issues)) and "image_classifier_label_issues" in issues
    assert detector["label_issues"][1].endswith("label_issues.parquet")
    assert all(r.tags["ml_assets/trigger"] == "demo" for r in runs)
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey("classifier_evaluation"))
    events = instance.fetch_materializations(flt, limit=10).records
    assert len(events) == 2
    metadata = events[0].asset_materialization.metadata
    assert isinstance(metadata["macro_f1"].value, float)
    assert metadata["confusion_matrix"].value.startswith(
        "![confusion_matrix](data:image/png;base64,"
    )
    classifier = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_classifier")), limit=1
    )
    trained = classifier.records[0].asset_materialization.metadata
    assert trained["epochs_run"].value == 1 and trained["mlflow_run"].value.startswith(
        "http://127.0.0.1:5000/#/experiments/"
    )
    assert (home / "mlflow" / "mlflow.db").is_file()

    # Running it again reuses the landed data and the same version.
    result = CliRunner().invoke(
        main, ["demo", "--images", "16", "--folds", "2", "--epochs", "1", "--models", "classifier"]
    )
    assert result.exit_code == 0, result.output
    assert f"version {version}" in result.output and "already holds data" in result.output
    assert "fold 1" in result.output and "promotion gate:" in result.output
    assert "data: first version of this dataset" in result.output
    assert "label issues: " in result.output
    assert "yolo_detector" not in result.output
    assert tree_digest(home / "landing") == landing

    total = sum(r["metrics"]["samples"] for r in report["folds"])
    expected = {"image_classifier": f"samples: {total}", "yolo_detector": " AP50: "}
    for kind, line in expected.items():
        model = home / "models" / kind / version / "fold-0"
        scored = CliRunner().invoke(
            main, ["evaluate", str(model), str(home / "landing" / "shapes"), "--device", "cpu"]
        )
        assert scored.exit_code == 0, scored.output
        assert scored.output.startswith(f"{kind} on ") and line in scored.output


@pytest.mark.slow
def test_the_demo_models_learn(home):
    """Bigger than the smoke test above: the classifier scores well above the majority-class
    baseline and the detector's validation loss falls."""
    import pandas as pd

    reports = run_demo(images=240, folds=2, echo=lambda _: None)["shapes"]  # demo epochs
    classifier = reports["image_classifier"]
    assert classifier["mean"]["macro_f1"] > classifier["baseline"] + 0.3
    assert classifier["promotable"]
    version = classifier["version"]
    for fold in (0, 1):
        history = pd.read_csv(
            home / "models" / "yolo_detector" / version / f"fold-{fold}" / "results.csv"
        )
        history.columns = [c.strip() for c in history.columns]
        loss = history["val/box_loss"]
        assert loss.iloc[-1] < loss.iloc[0], history


@pytest.mark.slow
def test_ui_shows_the_demo_runs_and_metadata(home):
    report = run_demo(images=12, folds=2, epochs=1, echo=lambda _: None)["shapes"]
    report = report["image_classifier"]
    port = free_port()
    with dagster_dev(home, port):
        runs = graphql(port, "{ runsOrError { ... on Runs { results { jobName status } } } }")
        jobs = [r["jobName"] for r in runs["runsOrError"]["results"]]
        for job, count in {"ingest_job": 1, "training_job": 2, "report_job": 1}.items():
            assert jobs.count(job) >= count, jobs
        query = (
            '{ assetNodeOrError(assetKey: {path: ["classifier_report"]}) { ... on AssetNode { '
            f'assetMaterializations(partitions: ["{report["version"]}"]) {{ metadataEntries {{ label }} }} }} }} }}'
        )
        node = graphql(port, query)["assetNodeOrError"]
        labels = {e["label"] for e in node["assetMaterializations"][0]["metadataEntries"]}
        assert {"mean_macro_f1", "std_macro_f1", "per_fold", "confusion_matrix"} <= labels


@pytest.mark.slow
def test_the_segmenter_learns_its_masks_with_the_demo_settings(home):
    """yolo_segmenter from scratch on 600 sample images, 2 folds, the demo's 12 epochs at 96 px:
    COCO mask AP well above the baseline of a model that predicts nothing (0); about 0.11 with
    400 training images, 3 folds."""
    report = run_demo(images=600, folds=2, models=("yolo_segmenter",), echo=lambda _: None)
    segmenter = report["shapes"]["yolo_segmenter"]
    assert segmenter["primary_metric"] == "mask_AP" and segmenter["baseline"] == 0
    assert segmenter["mean"]["mask_AP"] > 0.02, segmenter["mean"]
    assert segmenter["mean"]["AP"] > 0.02  # its boxes too
