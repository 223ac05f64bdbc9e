"""The timm classifier kind: crops, the training recipe, checkpoints and resume, scoring."""

import numpy as np
import pytest
from pipelines import fit_and_save

from ml_assets.data.coco import read_coco
from ml_assets.train.classifier import (
    CHECKPOINT,
    ClassifierConfig,
    Crops,
    class_weights,
    extract_crops,
    focal_loss,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
    watched_ids,
)
from ml_assets.train.device import select_device
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER

CPU = select_device("cpu")


@pytest.fixture(scope="module")
def dataset(tiny_sample):
    return read_coco(tiny_sample)


def separable(n: int = 64, size: int = 16, seed: int = 0) -> Crops:
    """Red inputs against blue ones, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.zeros((n, size, size, 3), np.uint8)
    images[labels == 0, :, :, 0] = 220
    images[labels == 1, :, :, 2] = 220
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    return Crops(images, labels.astype(np.int64), np.arange(n))


def test_crops_cover_every_non_crowd_box_with_its_class(dataset):
    ids = sorted(dataset.categories["category_id"])
    crops = extract_crops(dataset, dataset.images["image_id"], ids, size=24)
    assert crops.images.shape == (len(dataset.annotations), 24, 24, 3)
    assert crops.images.dtype == np.uint8
    expected = dataset.annotations.set_index("annotation_id").loc[
        crops.annotation_ids, "category_id"
    ]
    assert [ids[i] for i in crops.labels] == expected.tolist()
    none = extract_crops(dataset, [], ids, size=24)
    assert none.images.shape == (0, 24, 24, 3)


def test_a_whole_image_box_is_the_whole_image_not_a_padded_crop(dataset):
    whole = dataset.annotations.iloc[:1].copy()
    image = dataset.images.set_index("image_id").loc[whole["image_id"].iloc[0]]
    whole[["x", "y", "w", "h"]] = [0.0, 0.0, float(image["width"]), float(image["height"])]
    ds = type(dataset)(dataset.images, whole, dataset.categories, dataset.root)
    (crop,) = extract_crops(ds, whole["image_id"], sorted(ds.categories["category_id"]), 48).images
    from PIL import Image

    original = np.asarray(Image.open(ds.image_path(image["file_name"])).convert("RGB"))
    assert crop.shape == original.shape and np.array_equal(crop, original)  # 48 px already


@pytest.mark.parametrize(
    "recipe",
    [
        {},
        {"loss": "focal", "augment": "randaugment", "schedule": "plateau", "optimizer": "sgd"},
        {
            "loss": "weighted_cross_entropy",
            "mixup_alpha": 0.4,
            "cutmix_alpha": 1.0,
            "schedule": "step",
            "grad_clip": 1.0,
            "accumulation_steps": 2,
        },
    ],
    ids=["default", "focal-randaugment-plateau-sgd", "weighted-mixup-cutmix-step-clip-accum"],
)
def test_every_recipe_learns_a_separable_task(recipe, tmp_path):
    """Red crops against blue ones: a few short epochs must separate them, whatever the recipe."""
    crops = separable()
    config = ClassifierConfig(img_size=16, epochs=4, batch_size=16, lr=3e-3, **recipe)
    model, history, resumed = train_classifier(crops, 2, config, CPU, tmp_path)
    assert resumed is None and history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    predicted = predict(model, crops.images, CPU).argmax(axis=1)
    assert (predicted == crops.labels).mean() > 0.9


def test_an_interrupted_run_resumes_at_the_next_epoch_and_ends_where_an_unbroken_one_does(
    tmp_path,
):
    crops, validation = separable(48), separable(16, seed=1)
    config = ClassifierConfig(img_size=16, epochs=3, batch_size=16)
    whole, history, _ = train_classifier(crops, 2, config, CPU, tmp_path / "a", None, validation)

    def crash_after_first(epoch, epochs, row):
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_classifier(crops, 2, config, CPU, tmp_path / "b", crash_after_first, validation)
    seen = []
    resumed, again, start = train_classifier(
        crops, 2, config, CPU, tmp_path / "b", lambda e, n, row: seen.append(e), validation
    )
    assert start == 2 and seen == [2, 3] and again["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(again["train_loss"], history["train_loss"], rtol=1e-4)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    crops = separable(32)
    # Validation labels that contradict training: the first epochs are the best it gets.
    flipped = Crops(crops.images, 1 - crops.labels, crops.annotation_ids)
    config = ClassifierConfig(img_size=16, epochs=12, batch_size=16, early_stopping_patience=2)
    _, history, _ = train_classifier(crops, 2, config, CPU, tmp_path, None, flipped)
    assert len(history) < 12
    best = history["val_macro_f1"].idxmax()
    assert len(history) - 1 - best == 2  # stopped two epochs after the best one


def test_the_scored_fold_is_watched_never_chosen_by(tmp_path):
    """With nothing chosen by a score, the model is the last epoch's, whatever the held-out
    fold says (keeping its best epoch made each fold's score the best of twelve looks at it);
    early stopping and the plateau schedule choose on a tenth of the training images instead."""
    import torch

    crops = separable(32)
    flipped = Crops(crops.images, 1 - crops.labels, crops.annotation_ids)
    config = ClassifierConfig(img_size=16, epochs=3, batch_size=16)
    model, history, _ = train_classifier(crops, 2, config, CPU, tmp_path / "a", None, flipped)
    assert "val_macro_f1" in history  # watched: the progress line shows it
    last = torch.load(tmp_path / "a" / CHECKPOINT, map_location="cpu", weights_only=False)
    assert last["state"]["epoch"] == 3 and last["state"]["best_state"] is None
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, last["model"][name])  # the last epoch's weights

    train, held_out = list(range(100)), list(range(100, 140))
    assert watched_ids(train, held_out, config) == (train, held_out)
    for choosing in ({"early_stopping_patience": 2}, {"schedule": "plateau"}):
        fitted, aside = watched_ids(train, held_out, config.model_copy(update=choosing))
        assert len(aside) == 10 and sorted(fitted + aside) == train  # never the held-out fold


def test_loss_building_blocks():
    import torch

    labels = np.array([0, 0, 0, 1])
    weights = class_weights(labels, 3)
    assert weights[0] < weights[1] and weights[2] == 1
    assert (weights[labels]).sum() == pytest.approx(len(labels))  # balanced: same total weight
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([0, 1])
    plain = torch.nn.functional.cross_entropy(logits, targets)
    # gamma 0 and alpha 1: focal loss is cross-entropy; gamma > 0 down-weights easy samples.
    assert focal_loss(logits, targets, 0.0, 1.0) == pytest.approx(plain.item(), rel=1e-6)
    assert focal_loss(logits, targets, 2.0, 1.0) < plain


def test_the_kind_fits_scores_and_reloads(dataset, tmp_path):
    ids = dataset.images["image_id"].tolist()
    config = ClassifierConfig(img_size=32, epochs=2, batch_size=8)
    fit, model_dir = fit_and_save(
        IMAGE_CLASSIFIER, dataset, ids[:8], ids[8:], config, CPU, tmp_path
    )
    assert fit.history["epoch"].tolist() == [1, 2] and fit.resumed_from is None
    assert fit.summary["train_samples"] > 0 and "best_val_macro_f1" in fit.summary
    reloaded = IMAGE_CLASSIFIER.load(model_dir, CPU)
    np.testing.assert_allclose(
        IMAGE_CLASSIFIER.outputs(reloaded, dataset, ids[8:], CPU),
        IMAGE_CLASSIFIER.outputs(fit.model, dataset, ids[8:], CPU),
        atol=1e-5,
    )
    scores = IMAGE_CLASSIFIER.score(model_dir, dataset, ids[8:], CPU)
    assert {"accuracy", "balanced_accuracy", "macro_f1", "macro_f1_tta"} <= set(scores.metrics)
    assert scores.metrics["samples"] == len(scores.predictions) > 0
    assert {"weighted_f1", "top1_accuracy", "top4_accuracy", "ece", "ece_tta"} <= set(
        scores.metrics
    )
    assert scores.metrics["top1_accuracy"] == scores.metrics["accuracy"]
    assert scores.metrics["top4_accuracy"] == 1.0  # four classes
    assert scores.plots["confusion_matrix"].startswith(b"\x89PNG")
    assert scores.plots["reliability"].startswith(b"\x89PNG")
    baseline = IMAGE_CLASSIFIER.baseline([{"extra": scores.extra}])
    assert 0 < baseline < 1


def test_a_local_checkpoint_starts_training_and_a_missing_one_is_refused(tmp_path):
    import torch

    crops = separable(32)
    source = ClassifierConfig(img_size=16, epochs=1, batch_size=16)
    model, _, _ = train_classifier(crops, 2, source, CPU)
    weights = tmp_path / "start.pth"
    torch.save(model.state_dict(), weights)
    # Three classes now: the head is replaced, the body starts from the file.
    tuned = source.model_copy(update={"checkpoint": str(weights)})
    three = Crops(crops.images, crops.labels % 3, crops.annotation_ids)
    started, _, _ = train_classifier(three, 3, tuned.model_copy(update={"epochs": 1}), CPU)
    assert started.get_classifier().out_features == 3
    missing = source.model_copy(update={"checkpoint": str(tmp_path / "nope.pth")})
    with pytest.raises(FileNotFoundError, match="only local files"):
        train_classifier(crops, 2, missing, CPU)


def test_training_without_crops_and_loading_a_missing_model_fail_clearly(dataset, tmp_path):
    empty = extract_crops(dataset, [], [1], size=16)
    with pytest.raises(ValueError, match="no training samples"):
        train_classifier(empty, 1, ClassifierConfig(epochs=1), CPU)
    with pytest.raises(FileNotFoundError, match="missing classifier.json"):
        load_classifier(tmp_path, CPU)


def test_a_saved_model_predicts_the_same(tmp_path):
    crops = separable(32)
    config = ClassifierConfig(img_size=16, epochs=1, batch_size=16)
    model, _, _ = train_classifier(crops, 2, config, CPU)
    classes = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    folder = save_classifier(model, tmp_path / "model", config, classes)
    reloaded, meta = load_classifier(folder, CPU)
    assert meta["classes"] == classes and meta["config"]["img_size"] == 16
    np.testing.assert_allclose(
        predict(reloaded, crops.images, CPU), predict(model, crops.images, CPU), atol=1e-6
    )
    flipped = predict(model, crops.images, CPU, tta=True)
    np.testing.assert_allclose(flipped.sum(axis=1), 1, rtol=1e-5)


def test_device_selection():
    import torch

    assert select_device("cpu").type == "cpu"
    mps = torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device("cuda")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device("cuda:1")
