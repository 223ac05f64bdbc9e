"""``lora_classifier``: a LoRA adapter (PEFT) and a new head on a transformers vision backbone.

The kind declares what the pipeline needs; the adapter machinery is :mod:`ml_assets.train.lora`,
the crops, loop and scoring are the shared classification machinery of
:mod:`ml_assets.train.classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ml_assets.data.tables import Dataset, class_list
from ml_assets.evaluate.scores import Scores
from ml_assets.train.base_models import snapshot_hash
from ml_assets.train.classifier import (
    ClassificationKind,
    classify_images,
    extract_crops,
    fit_summary,
    score_crops,
    watched_ids,
)
from ml_assets.train.export import export_lora_classifier
from ml_assets.train.kinds import EpochCallback, FitResult, Input, Learns
from ml_assets.train.lora import (
    LoraClassifierConfig,
    adapter_megabytes,
    build_lora_model,
    load_lora,
    parameter_counts,
    recipe,
    save_adapter,
    train_lora,
)


class LoraClassifier(ClassificationKind):
    """The LoRA classifier as a model kind (see ``ml_assets.train.kinds``)."""

    distributed = "torchrun"  # the classifier's fit_loop trains with DDP under torchrun
    name = "lora_classifier"
    config_class = LoraClassifierConfig
    primary_metric = "macro_f1"
    promotion_floor = 0.5
    inputs = (Input("base_model", reads="weights"),)
    version = "1"
    demo = {"epochs": 8, "lr": 5e-3}
    smoke = {"epochs": 1, "batch_size": 8, "augment": "none"}
    headline = ("accuracy", "macro_f1", "weighted_f1", "ece", "samples")
    export_tolerance = 1e-4  # the merged adapter's logits
    learns = Learns("labels")  # object crops, or whole images of an image folder
    tags = frozenset({"pytorch", "mlflow"})
    description = (
        "A LoRA adapter (PEFT) and a new head on a transformers vision backbone (the base_model "
        "named in its config), classifying object crops (whole images for image-folder data); "
        "trained on every fold but this one. Only the adapter is stored."
    )

    def fit(
        self,
        ds: Dataset,
        train_ids: Sequence[int],
        val_ids: Sequence[int],
        config: LoraClassifierConfig,
        device,
        run_dir: Path,
        on_epoch: EpochCallback | None = None,
        inputs: dict[str, Path] | None = None,
    ) -> FitResult:
        if not inputs or "base_model" not in inputs:
            raise ValueError("lora_classifier needs the base model's snapshot folder in inputs")
        base = Path(inputs["base_model"])
        base_hash = snapshot_hash(base)
        classes = class_list(ds)
        ids = [c["id"] for c in classes]
        model = build_lora_model(base, classes, config)
        size = model.ml_assets_img_size
        train_ids, val_ids = watched_ids(train_ids, val_ids, recipe(config))
        crops = extract_crops(ds, train_ids, ids, size=size)
        validation = extract_crops(ds, val_ids, ids, size=size)
        model, history, resumed_from = train_lora(
            model, crops, len(classes), config, device, run_dir, on_epoch, validation
        )
        counts = parameter_counts(model)
        meta = {
            "kind": self.name,
            "config": config.model_dump(),
            "classes": classes,
            "img_size": size,
            "base_model": {"name": config.base_model, "hash": base_hash, "folder": str(base)},
            **counts,
        }
        summary = fit_summary(history, len(crops.labels)) | {
            **counts,
            "trainable_ratio": counts["trainable_parameters"] / counts["total_parameters"],
            "base_model_hash": base_hash,
        }
        return FitResult(model, history, resumed_from, summary, meta)

    def save(self, fit: FitResult, folder: Path) -> dict:
        return {"adapter_size_mb": adapter_megabytes(save_adapter(fit.model, folder, fit.meta))}

    def score(
        self,
        model_dir: Path,
        ds: Dataset,
        image_ids: Sequence[int],
        device,
        inputs: dict[str, Path] | None = None,
    ) -> Scores:
        """The classifier's scores on ``image_ids``; the base model is the one the adapter names
        (its snapshot and hash in ``lora.json``), whatever ``inputs`` say."""
        model, meta = load_lora(model_dir, device)
        scores = score_crops(model, meta["classes"], ds, image_ids, device, model_dir, tta=False)
        scores.extra["base_model_hash"] = meta["base_model"]["hash"]
        return scores

    def predict(self, model_dir: Path, images: Sequence[Path], device) -> pd.DataFrame:
        """Class probabilities of whole images, as the timm classifier's ``predict``."""
        model, meta = load_lora(model_dir, device)
        return classify_images(model, meta["classes"], images, device, tta=False)

    def export(self, model_dir: Path, out_dir: Path) -> Path:
        return export_lora_classifier(self, model_dir, out_dir)

    def load(self, model_dir: Path, device):
        return load_lora(model_dir, device)[0]


LORA_CLASSIFIER = LoraClassifier()
