"""Scores of an instance segmenter on held-out images: COCO mask metrics beside the box ones.

``segmentation_scores(ds, image_ids, detections)`` scores the boxes as
:func:`ml_assets.evaluate.detection.detection_scores` does and the masks with COCO's ``segm``
evaluation (faster-coco-eval, equal to pycocotools' ``COCOeval(iouType="segm")``): each
prediction's mask is a COCO RLE (``{"size": [height, width], "counts": str}``) in the pixels of
its original image; ground-truth masks are the version's polygons and RLE masks. An object
labelled with a box but no mask is a crowd region for the mask metrics: a prediction over it is
neither a hit nor a false positive, and it counts as no instance to find.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ml_assets.data.tables import Dataset
from ml_assets.evaluate.coco import CocoMetrics, quiet, summarized
from ml_assets.evaluate.detection import (
    DETECTION_COLUMNS,
    coco_ground_truth,
    detection_scores,
    precision_recall_png,
)
from ml_assets.evaluate.scores import Scores


def mask_metrics(ground_truth: dict, results: list[dict]) -> CocoMetrics:
    """COCO mask metrics of ``results`` (``image_id``, ``category_id``, ``segmentation``,
    ``score``) against ``ground_truth`` (a COCO dict whose annotations hold ``segmentation``),
    completed as pycocotools' ``loadRes`` completes them (areas and boxes from the masks).
    Neither argument is changed (the engine rewrites the records it is given)."""
    import copy

    from faster_coco_eval import COCO, COCOeval_faster

    truth = COCO()
    truth.dataset = copy.deepcopy(ground_truth)
    truth.createIndex()
    found = truth.loadRes(copy.deepcopy(list(results))) if results else COCO()
    if not results:
        found.dataset = {**truth.dataset, "annotations": []}
        found.createIndex()
    engine = COCOeval_faster(truth, found, "segm", print_function=quiet)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    return summarized(engine, names, ground_truth["annotations"], results)


def segmentation_scores(ds: Dataset, image_ids: Sequence[int], detections: pd.DataFrame) -> Scores:
    """Box and mask metrics of ``detections`` (the detection columns and ``segmentation``, a COCO RLE) on ``image_ids``.

    ``metrics``: the box numbers of :func:`detection_scores` and the 12 mask numbers as
    ``mask_AP``, ``mask_AP50`` ... ``mask_AR_large``, and ``mask_instances`` (objects with a
    mask). ``per_class`` adds ``mask_AP`` and ``mask_AP50``; ``plots`` add ``mask_pr_curves``.
    """
    image_ids = list(dict.fromkeys(int(i) for i in image_ids))
    scores = detection_scores(ds, image_ids, detections[DETECTION_COLUMNS])
    truth = coco_ground_truth(ds, image_ids, masks=True)
    results = [
        {"image_id": int(i), "category_id": int(c), "segmentation": dict(s), "score": float(v)}
        for i, c, s, v in zip(
            detections["image_id"],
            detections["category_id"],
            detections["segmentation"],
            detections["score"],
            strict=True,
        )
    ]
    masks = mask_metrics(truth, results)
    scores.metrics |= {f"mask_{name}": value for name, value in masks.stats.items()}
    scores.metrics["mask_instances"] = float(
        sum(1 for a in truth["annotations"] if not a["iscrowd"])
    )
    scores.per_class = scores.per_class.join(
        pd.DataFrame(
            {
                "mask_AP": [c.ap for c in masks.classes],
                "mask_AP50": [c.ap50 for c in masks.classes],
            },
            index=pd.Index([c.name for c in masks.classes], name="class"),
        )
    )
    scores.predictions = detections
    scores.plots["mask_pr_curves"] = precision_recall_png(masks.classes)
    return scores
