"""COCO ground truth and results for the evaluator tests, and pycocotools' numbers for them."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

from ml_assets.evaluate.coco import CocoMetrics, coco_metrics


def coco_ground_truth(
    boxes: list[tuple[int, int, list[float]]],
    images: int = 1,
    categories: int = 1,
    crowd: set[int] = frozenset(),
) -> dict[str, Any]:
    """Ground truth with images 1..``images``, categories 1..``categories`` named c1, c2, ... and
    one annotation per (image_id, category_id, [x, y, w, h]); indexes in ``crowd`` are crowds."""
    return {
        "images": [{"id": i, "width": 640, "height": 480} for i in range(1, images + 1)],
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, categories + 1)],
        "annotations": [
            {
                "id": n + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": list(box),
                "area": box[2] * box[3],
                "iscrowd": int(n in crowd),
            }
            for n, (image_id, category_id, box) in enumerate(boxes)
        ],
    }


def detection(image_id: int, category_id: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def random_case(rng: np.random.Generator) -> tuple[dict, list]:
    """Random ground truth and results with everything the COCO protocol treats specially: crowd
    regions (and "ignore" flags, which pycocotools overrides), images without boxes, a category without ground truth, boxes of every area range,
    often more than 100 detections on an image, often tied scores."""
    images, categories = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    gt = coco_ground_truth([], images=images + 1, categories=categories + 1)  # last ones empty
    for n in range(int(rng.integers(0, 30))):
        w, h = rng.uniform(1, 160, 2)
        x, y = rng.uniform(0, 300, 2)
        gt["annotations"].append(
            {
                "id": n + 1,
                "image_id": int(rng.integers(1, images + 1)),
                "category_id": int(rng.integers(1, categories + 1)),
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h * rng.uniform(0.6, 1.0)),  # a polygon's area, not the box's
                "iscrowd": int(rng.random() < 0.15),
                "ignore": int(rng.random() < 0.1),  # pycocotools overrides it with iscrowd
            }
        )
    tied = rng.random() < 0.5
    results = []
    for _ in range(int(rng.integers(1, 260))):
        if gt["annotations"] and rng.random() < 0.6:
            near = gt["annotations"][int(rng.integers(len(gt["annotations"])))]
            box = [v + rng.normal(0, 0.1 * max(near["bbox"][2:])) for v in near["bbox"]]
            box[2:] = [abs(box[2]), abs(box[3])]
            image_id, category_id = near["image_id"], near["category_id"]
            if rng.random() < 0.15:
                category_id = int(rng.integers(1, categories + 2))
        else:
            w, h = rng.uniform(1, 160, 2)
            box = [*rng.uniform(0, 300, 2), w, h]
            image_id = int(rng.integers(1, images + 2))
            category_id = int(rng.integers(1, categories + 2))
        score = float(rng.integers(0, 4)) / 4 if tied else float(rng.random())
        results.append(detection(image_id, category_id, [float(v) for v in box], score))
    return gt, results


def pycocotools_eval(gt: dict, results: list) -> Any:
    """pycocotools' COCOeval after evaluate, accumulate and summarize, on copies of the input.
    Its ``loadRes`` fails on an empty list, so no results become an empty results COCO."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = copy.deepcopy(gt)
        truth.createIndex()
        if results:
            found = truth.loadRes(copy.deepcopy(results))
        else:
            found = COCO()
            found.dataset = {**copy.deepcopy(gt), "annotations": []}
            found.createIndex()
        evaluator = COCOeval(truth, found, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_matches_pycocotools(gt: dict, results: list, tolerance: float = 1e-6) -> CocoMetrics:
    """Ours equals pycocotools: the 12 stats, per-class AP and AP50 (the mean of each class's
    precision, -1 entries left out) and the precision-recall curve at IoU .5."""
    ours = coco_metrics(gt, results)
    ref = pycocotools_eval(gt, results)
    assert np.abs(np.array(ours.stats_list) - ref.stats).max() <= tolerance, (
        ours.stats_list,
        ref.stats,
    )
    precision = ref.eval["precision"]
    assert [c.category_id for c in ours.classes] == list(ref.params.catIds)
    for k, c in enumerate(ours.classes):
        curve = precision[:, :, k, 0, -1]
        if (curve > -1).any():
            assert abs(c.ap - curve[curve > -1].mean()) <= tolerance
            assert abs(c.ap50 - curve[0].mean()) <= tolerance
        else:
            assert np.isnan(c.ap) and np.isnan(c.ap50)
        np.testing.assert_allclose(c.precision, curve[0], atol=tolerance, rtol=0)
        np.testing.assert_allclose(c.scores, ref.eval["scores"][0, :, k, 0, -1], atol=tolerance)
    return ours
