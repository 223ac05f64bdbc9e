"""``yolo_detector``: ultralytics YOLO object detection, scored with exact COCO box metrics.

One :class:`~ml_assets.train.yolo.YoloKind` (the YOLO plumbing, parameterized by task) with
what this kind declares.
"""

from ml_assets.train.kinds import Learns
from ml_assets.train.yolo import YoloConfig, YoloKind

YOLO_DETECTOR = YoloKind(
    name="yolo_detector",
    task="detect",
    stem="detector",
    config_class=YoloConfig,
    primary_metric="AP",  # COCO mAP@[.5:.95], exact (ml_assets.evaluate.coco)
    learns=Learns("boxes"),
    headline=("AP", "AP50", "AP75", "AR100", "ultralytics_map50_95", "instances"),
    description="An ultralytics YOLO detector, trained on every fold but this one.",
)
