"""The report's metadata leads with the decision: the gate's verdict, the primary metric with
its spread, the baseline and the floor; then the per-class table and the plots every kind has
(built over all folds from the evaluations' own records); then everything else, with COCO's
undefined values in words."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from PIL import Image

from ml_assets.data.folds import assign_folds, held_out_ids
from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.evaluate import detection
from ml_assets.evaluate.classification import (
    calibration,
    classification_metrics,
    majority_baseline_macro_f1,
)
from ml_assets.evaluate.detection import DETECTION_COLUMNS, detection_scores
from ml_assets.evaluate.report import (
    UNDEFINED,
    Link,
    Markdown,
    cross_fold_values,
    decision_line,
    evaluation_view,
    pooled_reliability,
    promotion_decision,
    read_fold_predictions,
    read_report,
    report_markdown,
    report_plots,
    report_view,
    summarize,
    summed_confusion,
    trained_view,
    write_report,
)
from ml_assets.evaluate.scores import Scores
from ml_assets.train.evaluation import evaluate_fold, summarize_folds

PNG = b"\x89PNG\r\n\x1a\n"
DIGEST = "0123456789ab"
CLASSES = ["cat", "dog", "fox"]


class StubClassifier:
    """A classifier kind whose score is fixed probabilities per fold (no model to train)."""

    name = "stub_classifier"
    primary_metric = "macro_f1"

    def __init__(self, folds: dict[int, tuple[np.ndarray, np.ndarray]]):
        self.folds = folds

    def score(self, model_dir, ds, image_ids, device, inputs=None) -> Scores:
        truth, probabilities = self.folds[int(Path(model_dir).name)]
        predicted = probabilities.argmax(axis=1)
        found = classification_metrics(truth, predicted, CLASSES, probabilities)
        return Scores(
            metrics={k: v for k, v in found.items() if isinstance(v, int | float)},
            per_class=found["per_class"],
            predictions=pd.DataFrame(
                {
                    "true": np.asarray(CLASSES)[truth],
                    "predicted": np.asarray(CLASSES)[predicted],
                    "confidence": probabilities.max(axis=1),
                }
            ),
            extra={"classes": CLASSES, "confusion": found["confusion"].tolist()},
        )

    def baseline(self, folds: list[dict]) -> float:
        return majority_baseline_macro_f1(np.sum([f["extra"]["confusion"] for f in folds], 0))


class StubDetector:
    """A detector kind whose score is fixed detections, scored the way every detector is."""

    name = "stub_detector"
    primary_metric = "AP"

    def __init__(self, detections: pd.DataFrame):
        self.detections = detections

    def score(self, model_dir, ds, image_ids, device, inputs=None) -> Scores:
        mine = self.detections[self.detections["image_id"].isin(image_ids)]
        return detection_scores(ds, image_ids, mine)

    def baseline(self, folds: list[dict]) -> float:
        return 0.0


def evaluate_folds(kind, tmp: Path, ds, assignment) -> tuple[list[dict], dict[int, Path]]:
    """Every fold evaluated through ``evaluate_fold``, as the evaluation asset does it."""
    records, folders = [], {}
    for fold in sorted(set(assignment["fold"]) - {-1}):
        model_dir = tmp / "models" / str(fold)
        model_dir.mkdir(parents=True)
        lineage = {"version": "v1", "fold": fold, "folds_digest": DIGEST}
        (model_dir / "model.json").write_bytes(orjson.dumps(lineage))
        folders[fold] = tmp / "evaluations" / f"fold-{fold}"
        ids = held_out_ids(assignment, fold)
        record, _ = evaluate_fold(kind, model_dir, ds, ids, "cpu", DIGEST, folders[fold])
        records.append(record)
    return records, folders


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    rng = np.random.default_rng(4)
    folds = {}
    for fold in range(3):
        truth = rng.integers(0, 3, 40)
        logits = rng.normal(size=(40, 3)) + 2.5 * np.eye(3)[truth]
        folds[fold] = (truth, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    assignment = pd.DataFrame({"image_id": range(3), "fold": range(3)})
    kind = StubClassifier(folds)
    records, folders = evaluate_folds(kind, tmp_path_factory.mktemp("cls"), None, assignment)
    return kind, folds, records, folders, assignment


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """24 images of 64 pixels (no object is large: COCO's AP_large is -1 on every fold); the
    detections are the true boxes nudged by a pixel, one in three given the wrong class, plus a
    false positive per image."""
    tmp = tmp_path_factory.mktemp("det")
    ds = read_dataset(write_sample(tmp / "shapes", 24, seed=5, size=64))
    rows = []
    for n, r in enumerate(ds.annotations.itertuples()):
        category = r.category_id if n % 3 else ds.categories["category_id"].iloc[0]
        rows.append((r.image_id, category, r.x + 1, r.y, r.w, r.h, 0.9 - 0.01 * (n % 7)))
    for image_id in ds.images["image_id"]:
        rows.append((image_id, int(ds.categories["category_id"].iloc[-1]), 2, 2, 9, 9, 0.3))
    detections = pd.DataFrame(rows, columns=DETECTION_COLUMNS)
    assignment = assign_folds(ds, k=2, seed=0)
    kind = StubDetector(detections)
    records, folders = evaluate_folds(kind, tmp, ds, assignment)
    return kind, ds, detections, records, folders, assignment


def test_the_classifier_report_leads_with_the_decision(classifier):
    kind, _, records, folders, _ = classifier
    summary = summarize_folds(kind, "v1", records)
    plots = report_plots(records, folders)
    assert list(plots) == ["confusion_matrix", "reliability"]
    assert all(png.startswith(PNG) for png in plots.values())
    links = {"report_html": "http://mlflow.example/#/x", "path": Path("/r")}
    view = report_view(summary, plots, floor=0.5, links=links)

    assert list(view)[:12] == [
        "decision",
        "mean_macro_f1",
        "std_macro_f1",
        "baseline",
        "floor",
        "per_class",
        "confusion_matrix",
        "reliability",
        "folds",
        "per_fold",
        "report_html",
        "path",
    ]
    rest = list(view)[12:]
    assert rest[:2] == ["mean_accuracy", "std_accuracy"]  # each metric's mean beside its std
    every = {f"{stat}_{m}" for m in summary["mean"] for stat in ("mean", "std")}
    assert set(rest) == every - {"mean_macro_f1", "std_macro_f1"}
    mean, std = summary["mean"]["macro_f1"], summary["std"]["macro_f1"]
    assert view["decision"] == (
        f"promotable: macro_f1 {mean:.3f} ± {std:.3f} over 3 folds; floor 0.50, "
        f"baseline {summary['baseline']:.3f}"
    )
    assert view["mean_macro_f1"] == round(mean, 4) and isinstance(view["std_macro_f1"], float)
    assert view["floor"] == 0.5 and view["folds"] == 3
    assert isinstance(view["per_class"], Markdown) and "| cat " in view["per_class"]
    assert view["confusion_matrix"].startswith("![confusion_matrix](data:image/png;base64,")
    assert isinstance(view["report_html"], Link) and isinstance(view["path"], Path)

    # With a version_diff line, what changed in the data comes right after the decision.
    changed = summary | {"data_change": "3 relabelled since ab12cd34ef56"}
    assert list(report_view(changed, plots, floor=0.5))[:2] == ["decision", "data_change"]
    lines = report_markdown(changed, decision="promotable").splitlines()
    assert lines[2:5] == ["**promotable**", "", "Data: 3 relabelled since ab12cd34ef56"]

    refused = report_view(summary, plots, floor=0.99)["decision"]
    assert refused.startswith(f"not promotable: mean macro_f1 {mean:.4f} is below the floor")
    assert refused.endswith(f"over 3 folds; floor 0.99, baseline {summary['baseline']:.3f})")


def test_the_decision_is_the_gates_rule(classifier):
    kind, _, records, _, _ = classifier
    summary = summarize_folds(kind, "v1", records)
    for floor in (0.1, 0.5, 0.99):
        assert decision_line(summary, floor)[0] == promotion_decision(summary, floor)[0]


def test_the_confusion_matrix_and_reliability_cover_every_fold(classifier):
    _, folds, records, folders, _ = classifier
    truth = np.concatenate([t for t, _ in folds.values()])
    probabilities = np.concatenate([p for _, p in folds.values()])
    pooled = pooled_reliability(read_fold_predictions(folders))
    pd.testing.assert_frame_equal(pooled, calibration(truth, probabilities)[1])
    found = classification_metrics(truth, probabilities.argmax(axis=1), CLASSES)
    np.testing.assert_array_equal(summed_confusion(records), found["confusion"])


def test_the_detector_report_has_pr_curves_and_sample_detections_of_all_folds(
    detector, monkeypatch
):
    kind, ds, detections, records, folders, assignment = detector
    scored = []

    def spy(ds, image_ids, found):
        scored.append((list(image_ids), found))
        return detection_scores(ds, image_ids, found)

    monkeypatch.setattr(detection, "detection_scores", spy)
    plots = report_plots(records, folders, ds, assignment)

    assert list(plots) == ["pr_curves", "sample_detections"]
    (ids, pooled), *_ = scored
    held_out = [i for fold in (0, 1) for i in held_out_ids(assignment, fold)]
    assert ids == held_out and sorted(ids) == sorted(ds.images["image_id"])
    assert len(pooled) == len(detections)  # every fold's detections, scored together
    for png in plots.values():
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and min(image.size) > 200

    summary = summarize_folds(kind, "v1", records)
    view = report_view(summary, plots, floor=0.1)
    assert list(view)[:8] == [
        "decision",
        "mean_AP",
        "std_AP",
        "baseline",
        "floor",
        "per_class",
        "pr_curves",
        "sample_detections",
    ]
    assert view["decision"].startswith("promotable: AP ")
    # no object of these 64-pixel images is large: COCO says -1 on every fold
    assert all(r["metrics"]["AP_large"] == -1 for r in records)
    for name in ("mean_AP_large", "std_AP_large", "mean_AR_large", "std_AR_large"):
        assert view[name] == UNDEFINED
    assert isinstance(view["mean_AP50"], float) and isinstance(view["std_AP50"], float)
    assert "n/a" in view["per_fold"] and "nan" not in view["per_fold"]


def test_an_undefined_value_is_said_never_blank_or_zero():
    records = [
        {"fold": 0, "metrics": {"AP": 0.5, "AP_medium": 0.4, "AP_large": -1.0}},
        {"fold": 1, "metrics": {"AP": 0.7, "AP_medium": -1.0, "AP_large": -1.0}},
    ]
    values = cross_fold_values(summarize("detector", "v", records, "AP", 0.0))
    assert values["mean_AP"] == pytest.approx(0.6) and values["std_AP"] == pytest.approx(0.1414)
    assert values["mean_AP_medium"] == pytest.approx(0.4)
    assert values["std_AP_medium"] == (
        "n/a: defined on 1 of 2 folds (the others have no objects of that size)"
    )
    assert values["mean_AP_large"] == values["std_AP_large"] == UNDEFINED


def test_a_primary_metric_undefined_on_every_fold_is_not_promotable(tmp_path):
    records = [{"fold": f, "metrics": {"AP": -1.0}} for f in range(2)]
    write_report(tmp_path / "r", summarize("detector", "v", records, "AP", 0.0), {})
    saved = read_report(tmp_path / "r")  # JSON keeps the undefined mean as null
    passed, found = promotion_decision(saved, 0.1)
    assert not passed and "undefined on every fold" in found["reasons"]
    view = report_view(saved, {}, 0.1)
    assert view["decision"].startswith("not promotable: mean AP is undefined on every fold")
    assert view["mean_AP"] == view["std_AP"] == UNDEFINED


def test_report_html_leads_with_the_decision_too(classifier, tmp_path):
    kind, _, records, _, _ = classifier
    summary = summarize_folds(kind, "v1", records)
    line = decision_line(summary, 0.5)[1]
    out = write_report(tmp_path / "report", summary, {}, decision=line)
    html = (out / "report.html").read_text()
    assert html.index(line) < html.index("Primary metric") < html.index("Folds")
    assert (out / "report.md").read_text().splitlines()[2] == f"**{line}**"


def test_the_evaluation_leads_with_its_primary_metric(detector):
    kind, ds, detections, _, _, assignment = detector
    scores = kind.score(None, ds, held_out_ids(assignment, 0), "cpu")
    view = evaluation_view("AP", scores, {"path": Path("/e")})
    assert list(view)[:4] == ["AP", "per_class", "pr_curves", "samples"]
    assert list(view)[-1] == "path"
    assert view["AP_large"] == UNDEFINED and isinstance(view["AP50"], float)


def test_segmenter_reports_show_mask_iou_against_the_box_baseline(tmp_path):
    folders = {}
    for fold in range(2):
        folders[fold] = tmp_path / f"fold-{fold}"
        folders[fold].mkdir()
        predictions = pd.DataFrame({"mask_iou": [0.8, 0.9], "box_mask_iou": [0.5, 0.6]})
        predictions.to_parquet(folders[fold] / "predictions.parquet")
    records = [{"fold": f, "metrics": {"mask_iou": 0.85}, "extra": {}} for f in range(2)]
    plots = report_plots(records, folders)
    assert list(plots) == ["mask_iou"] and plots["mask_iou"].startswith(PNG)


def test_the_model_metadata_leads_with_epochs_and_the_primary_metric():
    metadata = {
        "train_images": 10,
        "mlflow_run": "http://x",
        "path": "/m",
        "final_train_loss": 0.2,
        "best_val_macro_f1": 0.9,
        "epochs_run": 3,
        "registered_model": "k version 1",
        "device": "cpu",
    }
    assert list(trained_view(metadata, "macro_f1")) == [
        "epochs_run",
        "best_val_macro_f1",
        "train_images",
        "final_train_loss",
        "device",
        "path",
        "mlflow_run",
        "registered_model",
    ]
    # a metric's name must be whole words of the key: AP is not in adapter_size_mb
    assert list(trained_view({"adapter_size_mb": 1.0, "val_AP": 0.1}, "AP"))[0] == "val_AP"
