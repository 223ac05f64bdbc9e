"""yolo_segmenter: ultralytics instance segmentation on the version's polygons, scored with the
exact COCO mask metrics, reloaded, exported and predicting masks; on the sample data and on the
real coco8-seg."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pipelines import fit_and_save
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.evaluate.detection import coco_ground_truth
from ml_assets.evaluate.segmentation import mask_metrics
from ml_assets.train.device import select_device
from ml_assets.train.export import check_onnx
from ml_assets.train.kinds import refusal
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.kinds.yolo_segmenter import YOLO_SEGMENTER, YoloSegmenterConfig

CPU = select_device("cpu")
TINY = YoloSegmenterConfig(epochs=2, imgsz=64, batch=8)


def test_a_model_of_another_task_is_refused_before_training(tmp_path):
    ds = read_dataset(write_sample(tmp_path / "shapes", images=8, seed=3, size=64))
    ids = ds.images["image_id"].tolist()
    detection = TINY.model_copy(update={"model": "yolov8n.yaml"})
    with pytest.raises(ValueError, match="yolo_segmenter trains a segment model; .* is a detect"):
        YOLO_SEGMENTER.fit(ds, ids[:6], ids[6:], detection, CPU, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


def test_the_segmenter_trains_reloads_scores_exports_and_predicts_masks(tmp_path):
    ds = read_dataset(write_sample(tmp_path / "shapes", images=24, seed=3, size=64))
    ids = ds.images["image_id"].tolist()
    seen = []
    fit, _ = fit_and_save(
        YOLO_SEGMENTER,
        ds,
        ids[:16],
        ids[16:],
        TINY,
        CPU,
        tmp_path / "run",
        lambda e, n, r: seen.append(r),
    )
    assert len(seen) == 2 and {"seg_loss", "mask_map50_95"} <= set(seen[0])
    model_dir = tmp_path / "run" / "model"
    trained = YOLO_SEGMENTER.outputs(fit.model, ds, ids[16:20], CPU)
    reloaded = YOLO_SEGMENTER.outputs(YOLO_SEGMENTER.load(model_dir, CPU), ds, ids[16:20], CPU)
    assert np.abs(trained - reloaded).max() <= 1e-4 * max(1.0, np.abs(trained).max())

    scores = YOLO_SEGMENTER.score(model_dir, ds, ids[16:], CPU)
    assert scores.metrics["mask_instances"] == scores.metrics["instances"] > 0
    assert 0 <= scores.metrics["mask_AP"] <= 1 and 0 <= scores.metrics["AP"] <= 1
    assert {"mask_AP", "mask_AP50", "AP"} <= set(scores.per_class.columns)
    assert scores.plots["mask_pr_curves"].startswith(b"\x89PNG")
    for mask in scores.predictions["segmentation"].head(20):  # RLE in the image's pixels
        assert list(mask["size"]) == [64, 64] and mask_utils.decode(dict(mask)).shape == (64, 64)

    files = [ds.image_path(f) for f in ds.images["file_name"][:4]]
    predicted = YOLO_SEGMENTER.predict(model_dir, files, CPU, confidence=0.0)
    assert list(predicted.columns)[-1] == "segmentation"
    for mask in predicted["segmentation"]:
        assert list(mask["size"]) == [64, 64]

    out = YOLO_SEGMENTER.export(model_dir, tmp_path / "export")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    parity = check_onnx(YOLO_SEGMENTER, out, images)
    assert parity["passed"] and parity["outputs"] == ["output0", "output1"], parity
    assert json.loads((out / "export.json").read_text())["outputs"] == ["output0", "output1"]


def test_masks_are_needed_and_boxes_are_not_masks(tmp_path, real_data):
    assert refusal(YOLO_SEGMENTER, read_dataset(real_data / "coco8-seg")) is None
    boxes = read_dataset(real_data / "coco8")
    assert refusal(YOLO_SEGMENTER, boxes) == (
        "yolo_segmenter learns from masks (polygons or RLE); this version has no masks "
        "(detect labels)"
    )
    assert refusal(YOLO_DETECTOR, boxes) is None


def test_coco8_seg_trains_and_its_mask_ap_equals_pycocotools(tmp_path, real_data):
    """The real coco8-seg (30 polygons): one epoch, scored on its val images; and our mask
    metrics equal pycocotools' COCOeval(iouType="segm") on the same results file (the val
    images' true masks moved by a few pixels, some with another class, random scores: one
    epoch from scratch finds nothing to compare)."""
    source = shutil.copytree(real_data / "coco8-seg", tmp_path / "coco8-seg")
    ds = read_dataset(source)
    assert ds.annotations["segmentation"].map(bool).sum() == 30
    split = ds.images.set_index("image_id")["split"]
    train, val = list(split.index[split == "train"]), list(split.index[split == "val"])
    config = YoloSegmenterConfig(epochs=1, imgsz=64, batch=4)
    _, model_dir = fit_and_save(YOLO_SEGMENTER, ds, train, val, config, CPU, tmp_path / "run")
    scores = YOLO_SEGMENTER.score(model_dir, ds, val, CPU)
    in_val = ds.annotations["image_id"].isin(val).sum()
    assert scores.metrics["mask_instances"] == in_val and "mask_AP" in scores.metrics

    truth = coco_ground_truth(ds, val, masks=True)
    sizes = {i["id"]: (i["height"], i["width"]) for i in truth["images"]}
    rng = np.random.default_rng(0)
    results = []
    for record in truth["annotations"]:
        height, width = sizes[record["image_id"]]
        moved = [list(np.asarray(p) + rng.normal(0, 4, len(p))) for p in record["segmentation"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(moved, height, width))
        category = record["category_id"] if rng.random() > 0.2 else 0
        results.append(
            {
                "image_id": record["image_id"],
                "category_id": category,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                "score": float(rng.random()),
            }
        )
    ours = mask_metrics(truth, results).stats_list
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    (tmp_path / "results.json").write_text(json.dumps(results))
    gt = COCO(str(tmp_path / "truth.json"))
    evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert ours[0] > 0.3  # most masks found: the comparison covers matches and misses
    assert ours == pytest.approx(list(evaluation.stats[:12]), abs=1e-9)
