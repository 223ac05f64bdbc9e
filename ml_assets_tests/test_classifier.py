import numpy as np
import pytest

from ml_assets.data.coco import read_coco
from ml_assets.train.classifier import (
    ClassifierConfig,
    extract_crops,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from ml_assets.train.device import select_device


@pytest.fixture(scope="module")
def dataset(tiny_sample):
    return read_coco(tiny_sample)


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


def test_training_learns_and_a_saved_model_predicts_the_same(dataset, tmp_path):
    device = select_device("cpu")
    ids = sorted(dataset.categories["category_id"])
    names = dataset.categories.sort_values("category_id")["name"].tolist()
    crops = extract_crops(dataset, dataset.images["image_id"], ids, size=32)
    config = ClassifierConfig(model_name="resnet10t", img_size=32, epochs=2, batch_size=8)
    model, history = train_classifier(crops, names, config, device)
    assert history["epoch"].tolist() == [1, 2]
    assert np.isfinite(history["train_loss"]).all()
    probabilities = predict(model, crops.images, device)
    assert probabilities.shape == (len(crops.labels), len(names))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)

    classes = [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]
    run_dir = save_classifier(model, tmp_path / "run", config, classes, {"fold": 0})
    reloaded, meta = load_classifier(run_dir, device)
    assert meta["classes"] == classes and meta["fold"] == 0 and meta["config"]["img_size"] == 32
    np.testing.assert_allclose(predict(reloaded, crops.images, device), probabilities, atol=1e-6)


def test_training_without_crops_and_loading_a_missing_model_fail_clearly(dataset, tmp_path):
    empty = extract_crops(dataset, [], [1], size=16)
    with pytest.raises(ValueError, match="no training crops"):
        train_classifier(empty, ["a"], ClassifierConfig(epochs=1), select_device("cpu"))
    with pytest.raises(FileNotFoundError, match="missing classifier.json"):
        load_classifier(tmp_path, select_device("cpu"))


def test_device_selection():
    import torch

    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device("cuda")


def test_training_learns_a_separable_task():
    """Red crops against blue ones: three short epochs must separate them."""
    from ml_assets.train.classifier import Crops

    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = np.zeros((64, 16, 16, 3), np.uint8)
    images[labels == 0, :, :, 0] = 220
    images[labels == 1, :, :, 2] = 220
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    crops = Crops(images, labels.astype(np.int64), np.arange(64))
    config = ClassifierConfig(img_size=16, epochs=3, batch_size=16)
    model, history = train_classifier(crops, ["red", "blue"], config, select_device("cpu"))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    predicted = predict(model, images, select_device("cpu")).argmax(axis=1)
    assert (predicted == labels).mean() > 0.9
