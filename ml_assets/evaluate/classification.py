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


def majority_baseline_macro_f1(confusion: np.ndarray) -> float:
    """Macro F1 of always answering the most common true class of ``confusion``: that class
    scores 2p / (1 + p) for its share p, every other class 0."""
    support = np.asarray(confusion).sum(axis=1)
    share = support.max() / support.sum()
    return float(2 * share / (1 + share) / len(support))
