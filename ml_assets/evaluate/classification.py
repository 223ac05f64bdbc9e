"""Classification metrics and their summaries across folds."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

CALIBRATION_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017)."""
TOP_K = 5
"""Top-k accuracy is reported for k = 1 .. min(TOP_K, number of classes)."""


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: list[str],
    probabilities: np.ndarray | None = None,
) -> dict:
    """Accuracy, balanced accuracy, macro and weighted F1, per-class scores and the confusion
    matrix of predicted class indices ``y_pred`` against true ones ``y_true``.

    With ``probabilities`` (N, K), rows summing to 1, also top-k accuracy for k = 1 ..
    min(5, K) (``top1_accuracy`` ... ``top5_accuracy``), the expected calibration error
    (``ece``, see :func:`calibration`) and its reliability table (``reliability``).
    """
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
    with warnings.catch_warnings():  # a held-out fold lacking some predicted class is normal
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    found = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "samples": len(y_true),
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
    }
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (len(y_true), len(class_names)):
            raise ValueError(
                f"probabilities have shape {probabilities.shape}, expected "
                f"({len(y_true)}, {len(class_names)}): one row per sample, one column per class"
            )
        for k, value in top_k_accuracy(y_true, probabilities).items():
            found[f"top{k}_accuracy"] = value
        found["ece"], found["reliability"] = calibration(y_true, probabilities)
    return found


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray) -> dict[int, float]:
    """{k: share of samples whose true class is among the k most probable} for k = 1 ..
    min(5, K). A true class tied with others counts as ranked before them."""
    y_true = np.asarray(y_true, dtype=np.int64)
    truth = probabilities[np.arange(len(y_true)), y_true]
    rank = (probabilities > truth[:, None]).sum(axis=1)  # classes strictly more probable
    return {k: float((rank < k).mean()) for k in range(1, min(TOP_K, probabilities.shape[1]) + 1)}


def calibration(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and the reliability table it comes from.

    The standard definition (Guo et al., "On Calibration of Modern Neural Networks", 2017): a
    sample's confidence is its largest probability and it is correct when that class is the true
    one; samples fall into ``bins`` (15) equal-width confidence bins (lo, hi] over [0, 1];
    ECE = sum over bins of (samples in bin / all samples) * |accuracy(bin) - mean
    confidence(bin)|. The table has one row per bin: ``lower``, ``upper``, ``count``,
    ``accuracy`` and ``confidence`` (NaN for an empty bin).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds edges[b] < confidence <= edges[b + 1]; a confidence of 0 joins the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
    gaps = np.where(count > 0, np.abs(accuracy - mean_confidence), 0.0)
    ece = float((count / len(y_true) * gaps).sum())
    table = pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "accuracy": accuracy,
            "confidence": mean_confidence,
        }
    )
    return ece, table


def majority_baseline_macro_f1(confusion: np.ndarray) -> float:
    """Macro F1 of always answering the most common true class of ``confusion``: that class
    scores 2p / (1 + p) for its share p, every other class 0."""
    support = np.asarray(confusion).sum(axis=1)
    share = support.max() / support.sum()
    return float(2 * share / (1 + share) / len(support))
