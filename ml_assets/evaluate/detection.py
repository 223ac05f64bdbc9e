"""Scores of a detector on held-out images, the same for every detector kind.

``detection_scores(ds, image_ids, detections)`` turns the held-out images' ground truth into a
COCO dict (crowd flags kept, so crowd regions are scored the COCO way) and the detections into
COCO results, and scores them with :func:`ml_assets.evaluate.coco.coco_metrics` (equal to
pycocotools' ``COCOeval``). Besides the 12 COCO numbers it reports VOC-style AP50 per class
(:func:`voc_ap50`), the precision-recall curves at IoU .5 and a few images with their true and
predicted boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ml_assets.data.tables import Dataset, class_list
from ml_assets.evaluate.coco import (
    RECALL_THRESHOLDS,
    coco_metrics,
    detections_from_arrays,
)
from ml_assets.evaluate.scores import Scores

DETECTION_COLUMNS = ["image_id", "category_id", "x", "y", "w", "h", "score"]
"""A detections table: one row per box, in absolute pixels of the original image."""
SAMPLE_IMAGES = 4
"""Images drawn with their boxes in the ``samples`` plot."""
DRAW_SCORE = 0.25
"""Least score of a predicted box drawn in the ``samples`` plot."""
VOC_IOU = 0.5


def detection_scores(
    ds: Dataset,
    image_ids: Sequence[int],
    detections: pd.DataFrame,
) -> Scores:
    """COCO metrics of ``detections`` (columns :data:`DETECTION_COLUMNS`) on ``image_ids``.

    ``metrics``: the 12 numbers of ``COCOeval.summarize()`` under ``ml_assets.evaluate.coco.STAT_NAMES``
    (``AP``, ``AP50``, ``AP75``, ``AP_small`` ... ``AR100`` ... ``AR_large``; -1 where
    pycocotools gives -1, an area range without ground truth), ``VOC_AP50`` (the mean over
    classes with ground truth of :func:`voc_ap50`), and the counts ``images``, ``instances``
    (non-crowd ground-truth boxes) and ``detections``.
    ``per_class`` (index: class name): ``AP``, ``AP50``, ``VOC_AP50`` (NaN for a class without
    ground truth in these images), ``ground_truth`` and ``detections``.
    ``predictions``: the detections as given. ``plots``: ``pr_curves`` (precision
    against recall at IoU .5 per class, COCO's interpolated curve) and ``samples`` (a few images
    with true and predicted boxes). ``extra``: ``classes`` (id and name in model order) and
    ``coco_stats`` (the 12 numbers as a list, pycocotools' order).
    ``ml_assets.evaluate.report.write_detections`` writes them as a COCO results file.
    """
    image_ids = list(dict.fromkeys(int(i) for i in image_ids))
    detections = _checked(detections)
    ground_truth = coco_ground_truth(ds, image_ids)
    records = detections_from_arrays(
        detections["image_id"],
        detections["category_id"],
        detections[["x", "y", "w", "h"]].to_numpy(),
        detections["score"],
    )
    found = coco_metrics(ground_truth, records)
    truth = ds.annotations[ds.annotations["image_id"].isin(image_ids)]
    voc = voc_ap50(truth, detections)
    per_class = pd.DataFrame(
        {
            "AP": [c.ap for c in found.classes],
            "AP50": [c.ap50 for c in found.classes],
            "VOC_AP50": [voc.get(c.category_id, np.nan) for c in found.classes],
            "ground_truth": [c.ground_truth for c in found.classes],
            "detections": [c.detections for c in found.classes],
        },
        index=pd.Index([c.name for c in found.classes], name="class"),
    )
    metrics = {
        **found.stats,
        "VOC_AP50": _mean(per_class["VOC_AP50"]),
        "images": float(len(image_ids)),
        "instances": float((truth["iscrowd"] == 0).sum()),
        "detections": float(len(detections)),
    }
    return Scores(
        metrics=metrics,
        per_class=per_class,
        predictions=detections,
        extra={"classes": class_list(ds), "coco_stats": found.stats_list},
        plots={
            "pr_curves": precision_recall_png(found.classes),
            "samples": samples_png(ds, image_ids, detections),
        },
    )


def coco_ground_truth(ds: Dataset, image_ids: Sequence[int], masks: bool = False) -> dict:
    """The COCO ground-truth dict of ``image_ids``: their images, their annotations (boxes,
    areas and crowd flags as in the tables) and every category of ``ds``. With ``masks`` each
    annotation carries its ``segmentation``; one without (a box only) becomes a crowd region
    covering its box, which a mask evaluation neither rewards nor penalizes."""
    wanted = set(int(i) for i in image_ids)
    images = ds.images.drop_duplicates("image_id")
    images = images[images["image_id"].isin(wanted)]
    missing = sorted(wanted - set(images["image_id"].tolist()))
    if missing:
        raise ValueError(f"image ids not in the dataset: {missing[:10]}")
    annotations = ds.annotations[ds.annotations["image_id"].isin(wanted)]
    boxes = annotations[["x", "y", "w", "h"]].to_numpy(dtype=np.float64).tolist()
    found = {
        "images": [
            {"id": int(i), "file_name": str(f), "width": int(w), "height": int(h)}
            for i, f, w, h in zip(
                images["image_id"],
                images["file_name"],
                images["width"],
                images["height"],
                strict=True,
            )
        ],
        "annotations": [
            {
                "id": int(a),
                "image_id": int(i),
                "category_id": int(c),
                "bbox": b,
                "area": float(s),
                "iscrowd": int(k),
            }
            for a, i, c, b, s, k in zip(
                annotations["annotation_id"],
                annotations["image_id"],
                annotations["category_id"],
                boxes,
                annotations["area"],
                annotations["iscrowd"],
                strict=True,
            )
        ],
        "categories": class_list(ds),
    }
    if masks:
        found["annotations"] = [
            with_mask(n, record, segmentation)
            for n, (record, segmentation) in enumerate(
                zip(found["annotations"], annotations["segmentation"], strict=True), start=1
            )
        ]
    return found


def with_mask(n: int, record: dict, segmentation) -> dict:
    """A ground-truth record numbered ``n`` (COCO's matching treats id 0 as no match) with its
    mask, or, for a box without one, a crowd region covering the box."""
    if isinstance(segmentation, list | dict) and segmentation:
        return record | {"id": n, "segmentation": segmentation}
    x, y, w, h = record["bbox"]
    box = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return record | {"id": n, "segmentation": box, "iscrowd": 1}


def voc_ap50(truth: pd.DataFrame, detections: pd.DataFrame) -> dict[int, float]:
    """VOC-style AP at IoU 0.5 per category id of ``truth`` (NaN without non-crowd boxes).

    The PASCAL VOC devkit's rule (VOC2010 onwards): detections of a class in decreasing score
    order (ties keep their order); each takes the box of its image and class it overlaps most;
    with IoU > 0.5 it is a true positive if that box is unmatched, a false positive if already
    matched, and ignored if the box is a crowd region (VOC's "difficult"); otherwise a false
    positive. AP is the area under the precision envelope over all recall points (no 11- or
    101-point sampling). Boxes are continuous (no VOC "+1" pixel).
    """
    found = {}
    for category_id, boxes in truth.groupby("category_id", sort=True):
        positives = int((boxes["iscrowd"] == 0).sum())
        if positives == 0:
            found[int(category_id)] = float("nan")
            continue
        mine = detections[detections["category_id"] == category_id]
        order = np.argsort(-mine["score"].to_numpy(), kind="stable")
        found[int(category_id)] = _voc_ap(boxes, mine.iloc[order], positives)
    return found


def _voc_ap(truth: pd.DataFrame, detections: pd.DataFrame, positives: int) -> float:
    by_image = {
        int(i): (g[["x", "y", "w", "h"]].to_numpy(), g["iscrowd"].to_numpy() == 1)
        for i, g in truth.groupby("image_id")
    }
    matched = {i: np.zeros(len(b), dtype=bool) for i, (b, _) in by_image.items()}
    outcome = np.zeros(len(detections))  # 1 true positive, -1 false positive, 0 ignored
    boxes = detections[["x", "y", "w", "h"]].to_numpy()
    for n, image_id in enumerate(detections["image_id"].to_numpy()):
        if int(image_id) not in by_image:
            outcome[n] = -1
            continue
        gt, crowd = by_image[int(image_id)]
        overlap = iou(boxes[n], gt)
        best = int(overlap.argmax())
        if overlap[best] <= VOC_IOU:
            outcome[n] = -1
        elif crowd[best]:
            outcome[n] = 0
        elif matched[int(image_id)][best]:
            outcome[n] = -1
        else:
            matched[int(image_id)][best] = True
            outcome[n] = 1
    tp = np.cumsum(outcome == 1)
    fp = np.cumsum(outcome == -1)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x, y, w, h box with each of ``boxes``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def samples_png(
    ds: Dataset,
    image_ids: Sequence[int],
    detections: pd.DataFrame,
    count: int = SAMPLE_IMAGES,
    min_score: float = DRAW_SCORE,
) -> bytes:
    """The first ``count`` of ``image_ids`` that hold ground truth (else the first ones), with
    their true boxes and the predicted ones scoring at least ``min_score``, labelled."""
    from PIL import Image

    from ml_assets.evaluate.plots import boxes_png

    names = ds.category_names
    truth = ds.annotations[ds.annotations["image_id"].isin(image_ids)]
    have = set(truth["image_id"].tolist())
    with_truth = [i for i in image_ids if i in have]
    chosen = (with_truth or list(image_ids))[:count]
    files = ds.images.drop_duplicates("image_id").set_index("image_id")["file_name"]
    shown = detections[detections["score"] >= min_score]
    samples = []
    for image_id in chosen:
        path = ds.image_path(files[image_id])
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as err:
            raise ValueError(f"{path}: cannot read image {image_id}: {err}") from err
        mine = truth[truth["image_id"] == image_id]
        theirs = shown[shown["image_id"] == image_id]
        samples.append(
            {
                "image": pixels,
                "title": f"image {image_id}",
                "truth": [
                    (r.x, r.y, r.w, r.h, names.get(r.category_id, "")) for r in mine.itertuples()
                ],
                "predicted": [
                    (r.x, r.y, r.w, r.h, f"{names.get(r.category_id, r.category_id)} {r.score:.2f}")
                    for r in theirs.itertuples()
                ],
            }
        )
    return boxes_png(samples, f"held-out images, predictions with score >= {min_score:g}")


def precision_recall_png(classes) -> bytes:
    """Each class's precision against recall at IoU .5 (COCO's interpolated curve), for the
    classes with ground truth (``ClassMetrics`` of boxes or masks)."""
    from ml_assets.evaluate.plots import pr_curves_png

    curves = {
        f"{c.name} (AP50 {c.ap50:.3f})": (RECALL_THRESHOLDS, c.precision)
        for c in classes
        if c.ground_truth > 0
    }
    return pr_curves_png(curves, "precision-recall at IoU 0.5 (COCO interpolation)")


def _checked(detections: pd.DataFrame) -> pd.DataFrame:
    """The detections with exactly :data:`DETECTION_COLUMNS`, ids as integers; a clear error
    for a table without them. Values are checked by ``coco_metrics``."""
    missing = [c for c in DETECTION_COLUMNS if c not in detections.columns]
    if missing:
        raise ValueError(f"the detections table lacks the column(s) {', '.join(missing)}")
    table = detections[DETECTION_COLUMNS].reset_index(drop=True)
    return table.astype({"image_id": "int64", "category_id": "int64", "score": "float64"})


def _mean(values: pd.Series) -> float:
    valid = values.dropna()
    return float(valid.mean()) if len(valid) else float("nan")
