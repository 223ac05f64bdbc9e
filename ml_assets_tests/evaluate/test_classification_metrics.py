"""Classification metrics against scikit-learn's numbers and a hand-computed calibration error."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, top_k_accuracy_score

from ml_assets.evaluate.classification import calibration, classification_metrics
from ml_assets.evaluate.plots import reliability_png


def random_case(seed: int, classes: int, samples: int = 200):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, samples)
    logits = rng.normal(size=(samples, classes))
    logits[np.arange(samples), y_true] += 1.0  # better than chance
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probabilities


@pytest.mark.parametrize(("seed", "classes"), [(0, 3), (1, 5), (2, 8), (3, 12)])
def test_top_k_and_weighted_f1_equal_scikit_learn(seed, classes):
    y_true, probabilities = random_case(seed, classes)
    y_pred = probabilities.argmax(axis=1)
    names = [f"c{i}" for i in range(classes)]
    m = classification_metrics(y_true, y_pred, names, probabilities)
    labels = list(range(classes))
    expected = f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    assert m["weighted_f1"] == pytest.approx(expected, abs=1e-12)
    ks = [k for k in range(1, 6) if k <= classes]
    assert [k for k in range(1, 6) if f"top{k}_accuracy" in m] == ks
    for k in ks:
        reference = top_k_accuracy_score(y_true, probabilities, k=k, labels=labels)
        assert m[f"top{k}_accuracy"] == pytest.approx(reference, abs=1e-12)
    assert m["top1_accuracy"] == pytest.approx(m["accuracy"])


def test_two_classes_have_top1_and_top2_only():
    y_true, probabilities = random_case(4, 2)
    m = classification_metrics(y_true, probabilities.argmax(1), ["a", "b"], probabilities)
    assert m["top2_accuracy"] == 1.0 and "top3_accuracy" not in m
    assert m["top1_accuracy"] == pytest.approx(m["accuracy"])


def test_without_probabilities_the_old_outputs_stay():
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"])
    assert "ece" not in m and "top1_accuracy" not in m
    # weighted F1: class a (support 1) F1 2/3, class b (support 2) F1 2/3
    assert m["weighted_f1"] == pytest.approx(2 / 3)


def test_expected_calibration_error_by_hand():
    # 15 bins of width 1/15: 0.5 and 0.52 share bin 8 ((0.4667, 0.5333]), 0.9 is in bin 14
    # ((0.8667, 0.9333]), 1.0 in bin 15 ((0.9333, 1]).
    probabilities = np.array(
        [[0.5, 0.5, 0.0], [0.52, 0.48, 0.0], [0.9, 0.05, 0.05], [0.0, 1.0, 0.0], [0.0, 0.9, 0.1]]
    )
    y_true = np.array([0, 1, 0, 1, 2])
    # bin 8: confidences 0.5, 0.52 (mean 0.51), correct 1 of 2 -> |0.5 - 0.51| = 0.01, weight 2/5
    # bin 14: confidences 0.9, 0.9 (mean 0.9), correct 1 of 2 -> 0.4, weight 2/5
    # bin 15: confidence 1.0, correct -> 0, weight 1/5
    expected = 2 / 5 * 0.01 + 2 / 5 * 0.4 + 0.0
    ece, table = calibration(y_true, probabilities)
    assert ece == pytest.approx(expected, abs=1e-12)
    assert len(table) == 15 and table["count"].sum() == 5
    assert table["count"].tolist()[7] == 2 and table["count"].tolist()[13] == 2
    assert table["count"].tolist()[14] == 1
    m = classification_metrics(y_true, probabilities.argmax(1), ["a", "b", "c"], probabilities)
    assert m["ece"] == pytest.approx(expected, abs=1e-12)


def test_perfectly_calibrated_and_overconfident_models():
    # confidence 0.8 everywhere, right 4 times in 5: calibrated
    probabilities = np.tile([0.8, 0.2], (5, 1))
    assert calibration(np.array([0, 0, 0, 0, 1]), probabilities)[0] == pytest.approx(0.0)
    # always certain, right half the time: ECE 0.5
    certain = np.tile([1.0, 0.0], (4, 1))
    assert calibration(np.array([0, 1, 0, 1]), certain)[0] == pytest.approx(0.5)


def test_probabilities_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="probabilities have shape"):
        classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"], np.ones((2, 3)))


def test_reliability_diagram_is_a_png():
    y_true, probabilities = random_case(5, 4)
    _, table = calibration(y_true, probabilities)
    assert reliability_png(table, "held out").startswith(b"\x89PNG")
