"""``yolo_segmenter``: ultralytics YOLO instance segmentation, scored with exact COCO mask
metrics (and box metrics beside them).

One :class:`~ml_assets.train.yolo.YoloKind` (the YOLO plumbing, parameterized by task) with its
own configuration (a segmentation model) and what this kind declares.
"""

from pydantic import Field

from ml_assets.train.kinds import Learns
from ml_assets.train.yolo import YoloConfig, YoloKind


class YoloSegmenterConfig(YoloConfig):
    """Hyperparameters of ``yolo_segmenter``: the detector's, with a segmentation model."""

    model: str = Field(
        default="yolov8n-seg.yaml",
        description=(
            "A segmentation model yaml built from scratch (yolov8n-seg.yaml, yolo11n-seg.yaml, or "
            "a local yaml file), a local -seg .pt file or pulled -seg weights to fine-tune (ml-assets "
            "weights pull yolo11n-seg.pt); nothing is ever downloaded"
        ),
    )


YOLO_SEGMENTER = YoloKind(
    name="yolo_segmenter",
    task="segment",
    stem="segmenter",
    config_class=YoloSegmenterConfig,
    primary_metric="mask_AP",  # COCO mask mAP@[.5:.95], exact (faster-coco-eval, segm)
    learns=Learns("masks"),
    headline=("mask_AP", "mask_AP50", "AP", "AP50", "ultralytics_mask_map50_95", "instances"),
    description="An ultralytics YOLO instance segmenter (masks from the version's polygons and "
    "RLE masks), trained on every fold but this one.",
)
