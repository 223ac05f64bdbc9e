"""Classification metrics and their summaries across folds."""

from __future__ import annotations

import numpy as np
import pandas as pd


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class scores and the confusion matrix."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(class_names, name="class"),
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "samples": len(y_true),
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
    }


SUMMARY_METRICS = ["accuracy", "balanced_accuracy", "macro_f1"]


def summarize_folds(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1) of each metric across the rows (folds)."""
    stats = per_fold[SUMMARY_METRICS].agg(["mean", "std"]).T
    stats["std"] = stats["std"].fillna(0.0)
    stats.index.name = "metric"
    return stats


def majority_baseline_macro_f1(confusion: np.ndarray) -> float:
    """Macro F1 of always answering the most common true class of ``confusion``: that class
    scores 2p / (1 + p) for its share p, every other class 0."""
    support = np.asarray(confusion).sum(axis=1)
    share = support.max() / support.sum()
    return float(2 * share / (1 + share) / len(support))


def score_classifier(run_dir, ds, image_ids, device) -> tuple[dict, pd.DataFrame]:
    """Score the classifier saved in ``run_dir`` on the object crops of ``image_ids`` in ``ds``.

    Returns the metrics of :func:`classification_metrics` (plus ``meta``, the saved run's
    metadata) and one row per crop: annotation id, true and predicted class, confidence.
    """
    from ml_assets.train.classifier import extract_crops, load_classifier, predict

    model, meta = load_classifier(run_dir, device)
    names = [c["name"] for c in meta["classes"]]
    known = {c["id"] for c in meta["classes"]}
    unknown = set(ds.annotations["category_id"]) - known
    if unknown:
        raise ValueError(f"{run_dir}: the model does not know category ids {sorted(unknown)}")
    crops = extract_crops(
        ds, image_ids, [c["id"] for c in meta["classes"]], size=meta["config"]["img_size"]
    )
    probabilities = predict(model, crops.images, device)
    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
    metrics = classification_metrics(crops.labels, predicted, names) | {"meta": meta}
    predictions = pd.DataFrame(
        {
            "annotation_id": crops.annotation_ids,
            "true": np.asarray(names)[crops.labels],
            "predicted": np.asarray(names)[predicted],
            "confidence": probabilities.max(axis=1) if len(probabilities) else np.zeros(0),
        }
    )
    return metrics, predictions
