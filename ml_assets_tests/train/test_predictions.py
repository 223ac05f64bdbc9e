"""Batch predictions: COCO results that pycocotools loads, class probabilities per image."""

import numpy as np
import orjson
import pandas as pd
import pytest
from pipelines import fit_and_save

from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.data.tables import class_list
from ml_assets.train.classifier import ClassifierConfig
from ml_assets.train.device import select_device
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.predictions import image_files, write_predictions
from ml_assets.train.runs import MODEL_CARD
from ml_assets.train.yolo import YoloConfig

CPU = select_device("cpu")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = write_sample(tmp_path_factory.mktemp("p") / "shapes", images=16, seed=5, size=64)
    return root, read_dataset(root)


def trained(kind, config, ds, folder):
    ids = ds.images["image_id"].tolist()
    _, model_dir = fit_and_save(kind, ds, ids[:12], ids[12:], config, CPU, folder)
    (model_dir / MODEL_CARD).write_bytes(
        orjson.dumps({"kind": kind.name, "classes": class_list(ds)})
    )
    return model_dir


class Detections:
    """A detector kind whose model answers two fixed boxes: what write_predictions makes of
    them is then known exactly (training a detector for one epoch finds nothing to check)."""

    name = "stub_detector"
    predicts = "boxes"

    def predict(self, model_dir, images, device):
        return pd.DataFrame(
            {
                "file": [str(images[0]), str(images[2])],
                "category_id": [2, 4],
                "x": [1.5, 10.0],
                "y": [2.0, 20.0],
                "w": [8.0, 5.5],
                "h": [9.0, 6.0],
                "score": [0.9, 0.4],
            }
        )


def test_detector_predictions_are_coco_results_pycocotools_loads(sample, tmp_path):
    from pycocotools.coco import COCO

    root, ds = sample
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / MODEL_CARD).write_bytes(orjson.dumps({"classes": class_list(ds)}))
    images = image_files(root / "images")
    out = tmp_path / "out"
    ids = list(range(100, 116))
    summary = write_predictions(Detections(), model_dir, images, CPU, out, ids)
    assert orjson.loads((out / "results.json").read_bytes()) == [
        {"image_id": 100, "category_id": 2, "bbox": [1.5, 2.0, 8.0, 9.0], "score": 0.9},
        {"image_id": 102, "category_id": 4, "bbox": [10.0, 20.0, 5.5, 6.0], "score": 0.4},
    ]
    coco = COCO(str(out / "images.json"))
    loaded = coco.loadRes(str(out / "results.json"))
    assert len(loaded.getAnnIds()) == 2 and sorted(coco.getImgIds()) == ids
    assert {i["width"] for i in coco.dataset["images"]} == {64}
    names = ds.category_names
    assert summary["detections"] == 2 and summary["images_with_detections"] == 2
    assert summary["per_class"] == {names[2]: 1, names[4]: 1}


def test_a_trained_detector_predicts_boxes_inside_its_images(sample, tmp_path):
    root, ds = sample
    config = YoloConfig(epochs=1, imgsz=64, batch=8, workers=0)
    model_dir = trained(YOLO_DETECTOR, config, ds, tmp_path / "yolo")
    images = image_files(root / "images")
    found = YOLO_DETECTOR.predict(model_dir, images, CPU, confidence=0.0)
    assert len(found) > 0 and set(found["file"]) <= {str(p) for p in images}
    assert ((found["x"] >= -0.01) & (found["x"] + found["w"] <= 64.01)).all()
    assert set(found["category_id"]) <= set(ds.categories["category_id"])


def test_classifier_predictions_are_probabilities_per_image(sample, tmp_path):
    root, ds = sample
    config = ClassifierConfig(epochs=1, img_size=32, batch_size=8)
    model_dir = trained(IMAGE_CLASSIFIER, config, ds, tmp_path / "cls")
    images = image_files(root)
    out = tmp_path / "out"
    summary = write_predictions(
        IMAGE_CLASSIFIER, model_dir, images, CPU, out, list(range(100, 116))
    )
    frame = pd.read_parquet(out / "predictions.parquet")
    assert frame["image_id"].tolist() == list(range(100, 116))
    probabilities = frame[[c for c in frame if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert sum(summary["per_class"].values()) == 16


def test_no_images_and_an_unreadable_image_are_refused(sample, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        image_files(tmp_path / "missing")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    root, ds = sample
    config = ClassifierConfig(epochs=1, img_size=32, batch_size=8)
    model_dir = trained(IMAGE_CLASSIFIER, config, ds, tmp_path / "cls")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        write_predictions(IMAGE_CLASSIFIER, model_dir, [broken], CPU, tmp_path / "out")
    with pytest.raises(ValueError, match="no images"):
        write_predictions(IMAGE_CLASSIFIER, model_dir, [], CPU, tmp_path / "out")
    no_predict = type("Teacher", (), {"name": "lora_segmenter", "predicts": ""})()
    with pytest.raises(ValueError, match="lora_segmenter has no batch prediction"):
        write_predictions(no_predict, model_dir, [broken], CPU, tmp_path / "out")
    # A kind that declares masks and answers boxes only is refused, never written as boxes.
    masks = type("Masks", (Detections,), {"name": "stub_segmenter", "predicts": "masks"})()
    images = image_files(root / "images")
    with pytest.raises(ValueError, match="stub_segmenter predicts masks, but its predictions"):
        write_predictions(masks, model_dir, images, CPU, tmp_path / "out")
    assert not (tmp_path / "out").exists()
