import numpy as np
import pytest

from ml_assets.evaluate.classification import classification_metrics
from ml_assets.evaluate.plots import confusion_png, markdown_image
from ml_assets.train.evaluation import summarize_folds
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER


def test_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1_a, f1_b = 2 * (3 / 4 * 3 / 4) / (3 / 4 + 3 / 4), 2 * (1 / 2 * 1 / 2) / 1
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 1) / 3)
    assert m["confusion"].tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert m["per_class"].loc["c", "support"] == 2


def test_absent_classes_count_as_zero_and_empty_input_is_refused():
    m = classification_metrics(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert m["confusion"].shape == (2, 2)
    assert m["macro_f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(np.array([]), np.array([]), ["a"])


def test_fold_summary_is_mean_and_sample_std():
    records = [
        {"fold": 0, "metrics": {"accuracy": 0.5, "macro_f1": 0.2}, "extra": {"confusion": [[1]]}},
        {"fold": 1, "metrics": {"accuracy": 0.7, "macro_f1": 0.6}, "extra": {"confusion": [[1]]}},
    ]
    summary = summarize_folds(IMAGE_CLASSIFIER, "v", records)
    assert summary["mean"]["accuracy"] == pytest.approx(0.6)
    assert summary["std"]["macro_f1"] == pytest.approx(np.std([0.2, 0.6], ddof=1))
    one = summarize_folds(IMAGE_CLASSIFIER, "v", records[:1])
    assert one["std"]["accuracy"] == 0 and one["primary_metric"] == "macro_f1"


def test_confusion_png_is_an_embeddable_png():
    png = confusion_png(np.array([[3, 1], [0, 2]]), ["a", "b"], "t")
    assert png.startswith(b"\x89PNG")
    assert markdown_image(png, "cm").startswith("![cm](data:image/png;base64,iVBOR")
