"""Every model kind the code location trains, by name: the one place a new kind is registered
(a kind is one file in ``train/kinds/``, declaring what the pipeline needs)."""

from __future__ import annotations

from pathlib import Path

from ml_assets.train.kinds import ModelKind
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.kinds.lora_classifier import LORA_CLASSIFIER
from ml_assets.train.kinds.lora_detector import LORA_DETECTOR
from ml_assets.train.kinds.lora_segmenter import LORA_SEGMENTER
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.kinds.yolo_segmenter import YOLO_SEGMENTER

KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        IMAGE_CLASSIFIER,
        YOLO_DETECTOR,
        YOLO_SEGMENTER,
        LORA_CLASSIFIER,
        LORA_DETECTOR,
        LORA_SEGMENTER,
    )
}
# Short names the demo and the CLI accept.
ALIASES = {
    "classifier": "image_classifier",
    "yolo": "yolo_detector",
    "segmenter": "yolo_segmenter",
    "lora": "lora_classifier",
}


def kind(name: str) -> ModelKind:
    """The kind called ``name`` (or a short alias); a clear error listing the known ones."""
    full = ALIASES.get(name, name)
    if full not in KINDS:
        known = ", ".join(sorted(set(KINDS) | {a for a, k in ALIASES.items() if k in KINDS}))
        raise ValueError(f"unknown model kind {name!r}; known: {known}")
    return KINDS[full]


def model_card(model_dir: Path) -> tuple[ModelKind, dict]:
    """The kind that trained the model at ``model_dir`` and its card (``model.json``: kind,
    classes, config, lineage), so any model folder can be loaded without being told its kind."""
    from ml_assets.train.runs import read_lineage

    card = read_lineage(model_dir)
    if "kind" not in card:
        raise ValueError(f"{model_dir}: the model card names no kind")
    return kind(card["kind"]), card
