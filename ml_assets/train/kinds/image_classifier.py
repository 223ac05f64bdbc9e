"""``image_classifier``: a timm classifier of object crops (whole images for image-folder data).

The kind declares what the pipeline needs; the training loop, crops, checkpoints and scoring it
uses are the shared classification machinery of :mod:`ml_assets.train.classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ml_assets.data.shards import FOLDER as SHARDS_FOLDER
from ml_assets.data.tables import Dataset, class_list
from ml_assets.evaluate.scores import Scores
from ml_assets.train.classifier import (
    ClassificationKind,
    ClassifierConfig,
    classify_images,
    fit_summary,
    load_classifier,
    save_classifier,
    score_crops,
    train_classifier,
    training_inputs,
    watched_ids,
)
from ml_assets.train.export import export_classifier
from ml_assets.train.kinds import EpochCallback, FitResult, Input, Learns


def streams_shards(config: ClassifierConfig) -> bool:
    """Whether training streams the version's WebDataset shards (``source: shards``)."""
    return config.source == "shards"


class ImageClassifier(ClassificationKind):
    """The timm classifier as a model kind (see ``ml_assets.train.kinds``)."""

    name = "image_classifier"
    stem = "classifier"  # classifier_evaluation, classifier_report, classifier_promotable
    config_class = ClassifierConfig
    primary_metric = "macro_f1"
    promotion_floor = 0.5
    # The version's WebDataset shards, read when the config streams them (source: shards).
    inputs = (Input("webdataset_shards", folder=SHARDS_FOLDER, used=streams_shards),)
    version = "1"
    demo = {"epochs": 12}
    smoke = {"epochs": 2, "img_size": 32, "batch_size": 8}
    headline = ("accuracy", "macro_f1", "weighted_f1", "ece", "macro_f1_tta", "samples")
    export_tolerance = 1e-4  # logits, order 1-10
    learns = Learns("labels")  # object crops, or whole images of an image folder
    distributed = "torchrun"  # fit_loop trains with DDP when torchrun started it
    tags = frozenset({"pytorch", "mlflow"})
    description = (
        "A timm classifier of object crops (whole images for image-folder data), trained on "
        "every fold but this one."
    )

    def fit(
        self,
        ds: Dataset,
        train_ids: Sequence[int],
        val_ids: Sequence[int],
        config: ClassifierConfig,
        device,
        run_dir: Path,
        on_epoch: EpochCallback | None = None,
        inputs: dict[str, Path] | None = None,
    ) -> FitResult:
        classes = class_list(ds)
        ids = [c["id"] for c in classes]
        train_ids, val_ids = watched_ids(train_ids, val_ids, config)
        crops, validation = training_inputs(ds, train_ids, val_ids, ids, config, inputs)
        model, history, resumed_from = train_classifier(
            crops, len(classes), config, device, run_dir, on_epoch, validation, inputs
        )
        summary = fit_summary(history, len(crops.labels))
        meta = {"config": config, "classes": classes}
        return FitResult(model, history, resumed_from, summary, meta)

    def save(self, fit: FitResult, folder: Path) -> dict:
        save_classifier(fit.model, folder, fit.meta["config"], fit.meta["classes"])
        return {}

    def score(
        self,
        model_dir: Path,
        ds: Dataset,
        image_ids: Sequence[int],
        device,
        inputs: dict[str, Path] | None = None,
    ) -> Scores:
        model, meta = load_classifier(model_dir, device)
        tta = ClassifierConfig(**meta["config"]).tta
        return score_crops(model, meta["classes"], ds, image_ids, device, model_dir, tta)

    def predict(self, model_dir: Path, images: Sequence[Path], device) -> pd.DataFrame:
        """Class probabilities of whole images (with flip TTA when the config asks for it)."""
        model, meta = load_classifier(model_dir, device)
        tta = ClassifierConfig(**meta["config"]).tta
        return classify_images(model, meta["classes"], images, device, tta)

    def export(self, model_dir: Path, out_dir: Path) -> Path:
        return export_classifier(self, model_dir, out_dir)

    def load(self, model_dir: Path, device):
        return load_classifier(model_dir, device)[0]


IMAGE_CLASSIFIER = ImageClassifier()
