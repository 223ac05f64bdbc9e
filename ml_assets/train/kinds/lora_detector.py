"""``lora_detector``: a LoRA adapter on Grounding DINO, the box head trained in full.

The kind declares what the pipeline needs; the teachers' trainer, losses and predictions are
the shared machinery of :mod:`ml_assets.train.lora_teachers`.
"""

from __future__ import annotations

import numpy as np

from ml_assets.data.tables import class_list
from ml_assets.evaluate.scores import Scores
from ml_assets.train.classifier import check_known
from ml_assets.train.kinds import Learns
from ml_assets.train.lora import read_meta
from ml_assets.train.lora_teachers import (
    LORA_DETECTOR_NAME,
    LoraDetectorConfig,
    LoraTeacherKind,
    Teacher,
    TeacherImages,
    collate,
    detect,
    detector_loss,
    detector_outputs,
    detector_records,
    fit_teacher,
    load_teacher,
)


class LoraDetector(LoraTeacherKind):
    """Grounding DINO with a LoRA adapter, prompted with the class names."""

    name = LORA_DETECTOR_NAME
    config_class = LoraDetectorConfig
    learns = Learns("boxes")
    held_out = "boxes"
    headline = ("AP", "AP50", "AP75", "AR100", "instances")
    primary_metric = "AP"
    promotion_floor = 0.1
    description = (
        "A LoRA adapter (PEFT) on Grounding DINO (the base_model named in its config), prompted "
        "with the class names and fine-tuned on the boxes of every fold but this one; scored "
        "with COCO's metrics. Only the adapter and the box head are stored."
    )

    def fit(self, ds, train_ids, val_ids, config, device, run_dir, on_epoch=None, inputs=None):
        records = detector_records(ds, train_ids, class_list(ds))
        fit = fit_teacher(
            self, ds, config, device, run_dir, on_epoch, inputs, records, detector_loss
        )
        fit.summary["train_objects"] = int(sum(len(r["labels"]) for r in records))
        return fit

    def score(self, model_dir, ds, image_ids, device, inputs=None) -> Scores:
        """COCO metrics (AP, AP50 ... AR_large) of the detections on ``image_ids``; the base
        model is the one the adapter names, whatever ``inputs`` say."""
        from ml_assets.evaluate.detection import detection_scores

        teacher = load_teacher(model_dir, device)
        check_known(ds, teacher.classes, model_dir)
        config = LoraDetectorConfig(**read_meta(model_dir)["config"])
        detections = detect(teacher, ds, image_ids, config.max_detections)
        scores = detection_scores(ds, image_ids, detections)
        scores.extra["base_model_hash"] = teacher.base_hash
        return scores

    def baseline(self, folds: list[dict]) -> float:
        """AP of a detector that finds nothing: 0."""
        return 0.0

    def outputs(self, model: Teacher, ds, image_ids, device) -> np.ndarray:
        """Class scores and boxes of every query on the first images, (n, queries, classes+4)."""
        data = TeacherImages(ds, [{"image_id": int(i)} for i in image_ids], model)
        if not len(data):
            return np.zeros((0,), np.float32)
        pixels, _, _ = collate([data[i] for i in range(len(data))])
        scores, boxes = detector_outputs(model, pixels)
        return np.concatenate([scores.cpu().numpy(), boxes.cpu().numpy()], axis=-1)


LORA_DETECTOR = LoraDetector()
