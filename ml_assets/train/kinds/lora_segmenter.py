"""``lora_segmenter``: a LoRA adapter on SAM, prompted with the version's boxes.

The kind declares what the pipeline needs; the teachers' trainer, losses and predictions are
the shared machinery of :mod:`ml_assets.train.lora_teachers`.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ml_assets.evaluate.scores import Scores
from ml_assets.train.classifier import check_known
from ml_assets.train.kinds import Learns
from ml_assets.train.lora_teachers import (
    BOUNDARY_DILATION,
    LORA_SEGMENTER_NAME,
    LoraSegmenterConfig,
    LoraTeacherKind,
    Teacher,
    TeacherImages,
    boundary_iou,
    box_mask,
    fit_teacher,
    load_teacher,
    mask_iou,
    predict_masks,
    segmenter_loss,
    segmenter_records,
)


class LoraSegmenter(LoraTeacherKind):
    """SAM with a LoRA adapter, predicting each object's mask from its box."""

    name = LORA_SEGMENTER_NAME
    config_class = LoraSegmenterConfig
    learns = Learns("masks", min_classes=1)  # box prompts to masks: one class is enough
    held_out = ""  # a mask IoU per object: no class to doubt
    headline = ("mask_iou", "boundary_iou", "box_mask_iou", "objects")
    primary_metric = "mask_iou"
    promotion_floor = 0.5
    description = (
        "A LoRA adapter (PEFT) on SAM (the base_model named in its config) predicting each "
        "object's mask from its box prompt, fine-tuned on the COCO polygons and RLE of every "
        "fold but this one; scored by mask IoU and boundary IoU against the box-filling mask."
    )

    def fit(self, ds, train_ids, val_ids, config, device, run_dir, on_epoch=None, inputs=None):
        records, left_out = segmenter_records(ds, train_ids)
        step = functools.partial(segmenter_loss, limit=config.max_objects)
        fit = fit_teacher(self, ds, config, device, run_dir, on_epoch, inputs, records, step)
        fit.summary["train_objects"] = int(sum(len(r["boxes"]) for r in records))
        fit.summary |= left_out
        return fit

    def score(self, model_dir, ds, image_ids, device, inputs=None) -> Scores:
        """Mask IoU and boundary IoU per object on ``image_ids`` (objects with a mask), and the
        same for the box-filling baseline mask; the base model is the one the adapter names."""
        teacher = load_teacher(model_dir, device)
        check_known(ds, teacher.classes, model_dir)
        records, left_out = segmenter_records(ds, image_ids)
        images = ds.images.drop_duplicates("image_id").set_index("image_id")
        names = {c["id"]: c["name"] for c in teacher.classes}
        data = TeacherImages(ds, records, teacher)
        rows = []
        for i in range(len(data)):
            pixels, scale, record = data[i]
            height, width = (int(v) for v in images.loc[record["image_id"], ["height", "width"]])
            predicted, _ = predict_masks(teacher, pixels, scale, record, (height, width))
            for k, truth in enumerate(record["masks"]):
                baseline = box_mask(record["boxes"][k], height, width)
                rows.append(
                    {
                        "annotation_id": int(record["annotation_ids"][k]),
                        "image_id": record["image_id"],
                        "class": names[int(record["category_ids"][k])],
                        "mask_iou": mask_iou(predicted[k], truth),
                        "boundary_iou": boundary_iou(predicted[k], truth),
                        "box_mask_iou": mask_iou(baseline, truth),
                        "box_boundary_iou": boundary_iou(baseline, truth),
                        "predicted_area": int(predicted[k].sum()),
                        "true_area": int(truth.sum()),
                    }
                )
        columns = ["mask_iou", "boundary_iou", "box_mask_iou", "box_boundary_iou"]
        predictions = pd.DataFrame(
            rows,
            columns=["annotation_id", "image_id", "class", *columns, "predicted_area", "true_area"],
        )
        per_class = predictions.groupby("class")[columns].mean()
        per_class["objects"] = predictions.groupby("class").size()
        per_class = per_class.reindex(list(names.values()))
        means = {c: float(predictions[c].mean()) if len(predictions) else 0.0 for c in columns}
        metrics = {
            **means,
            "objects": float(len(predictions)),
            "images": float(len(records)),
            **{k: float(v) for k, v in left_out.items()},
        }
        extra = {
            "classes": list(names.values()),
            "objects": len(predictions),
            "box_mask_iou": means["box_mask_iou"],
            "boundary": f"boundary IoU, band {BOUNDARY_DILATION:.0%} of the image diagonal",
            "base_model_hash": teacher.base_hash,
        }
        return Scores(metrics, per_class, predictions, extra)

    def baseline(self, folds: list[dict]) -> float:
        """Mean mask IoU, over every held-out object, of the mask that fills its box prompt."""
        objects = np.asarray([f["extra"]["objects"] for f in folds], float)
        values = np.asarray([f["extra"]["box_mask_iou"] for f in folds], float)
        return float((objects * values).sum() / objects.sum()) if objects.sum() else 0.0

    def outputs(self, model: Teacher, ds, image_ids, device) -> np.ndarray:
        """Low-resolution mask logits of every object with a mask in the first images."""
        records, _ = segmenter_records(ds, image_ids)
        data = TeacherImages(ds, records, model)
        out = []
        for i in range(len(data)):
            pixels, scale, record = data[i]
            size = record["masks"].shape[1:]
            out.append(predict_masks(model, pixels, scale, record, size)[1])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


LORA_SEGMENTER = LoraSegmenter()
