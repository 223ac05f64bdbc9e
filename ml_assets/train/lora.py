"""A LoRA image classifier's machinery (the kind is ``train/kinds/lora_classifier.py``): PEFT's
LoRA on a transformers vision backbone (ViT, DINOv2, ConvNeXt, Swin), trained on the same inputs
and loop as the timm classifier (object crops, or whole images).

The base model is a snapshot in the store (``ml_assets.train.base_models``), named by the
config's ``base_model``. ``AutoModelForImageClassification`` adds a new classification head to
it; ``peft.get_peft_model`` freezes the base, adds low-rank adapters to the target modules
(chosen per architecture with transformers 5 module names, overridable) and trains the head in
full (``modules_to_save``). Data, loss, schedule, augmentation and metrics are the timm
classifier's own pieces (``ml_assets.train.classifier``).

A published model folder holds only the adapter: ``adapter_model.safetensors`` and
``adapter_config.json`` (LoRA weights and the trained head, as PEFT saves them) and ``lora.json``
(classes, config, and the path and hash of the base snapshot it was trained on), so ``score``
and ``load`` rebuild base + adapter from disk without a training config. While training, the run
folder holds ``checkpoint.pt`` with the trainable parameters only (never the frozen base), the
optimizer, the schedule and the history; a run that finds one resumes after its epoch.
:func:`merged_model` folds the adapter into the base weights (``merge_and_unload``) for export.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
from pydantic import Field

from ml_assets.data.atomic import atomic_dir
from ml_assets.train import classifier as timm_recipe
from ml_assets.train.base_models import describe_base_model, snapshot_hash
from ml_assets.train.kinds import EpochCallback, KindConfig

META = "lora.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD = "classifier"  # the head's name in every AutoModelForImageClassification used here
# LoRA targets per architecture (transformers 5 names): attention queries and values of the
# transformers, the pointwise (linear) convolutions of ConvNeXt blocks.
TARGET_MODULES = {
    "vit": ["q_proj", "v_proj"],
    "dinov2": ["q_proj", "v_proj"],
    "swin": ["q_proj", "v_proj"],
    "convnext": ["pwconv1", "pwconv2"],
}


class LoraClassifierConfig(KindConfig):
    pinned_fields = {"base_model": "folder"}

    base_model: str = Field(
        default="vit",
        description="Name of the base model the adapter trains on: a materialized base_model or "
        "a pulled Hugging Face snapshot (ml-assets weights pull hf://org/repo --name NAME)",
    )
    rank: int = Field(default=8, gt=0, description="LoRA rank r")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling alpha (scale alpha / r)")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the LoRA inputs")
    target_modules: list[str] = Field(
        default=[],
        description="Module names that get adapters; empty: per architecture (q_proj and v_proj "
        "for ViT, DINOv2 and Swin; pwconv1 and pwconv2 for ConvNeXt)",
    )
    img_size: int = Field(
        default=0, ge=0, description="Side of the square inputs; 0: the base model's own"
    )
    epochs: int = Field(default=10, gt=0, description="Passes over the training images")
    batch_size: int = Field(default=32, gt=1, description="Samples per forward pass")
    lr: float = Field(default=2e-3, gt=0, description="Peak learning rate after warmup")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay")
    schedule: Literal["cosine", "step", "plateau"] = Field(
        default="cosine", description="Learning-rate schedule (as the timm classifier)"
    )
    warmup_epochs: int = Field(default=1, ge=0, description="Linear warmup epochs")
    loss: Literal["cross_entropy", "weighted_cross_entropy"] = Field(
        default="cross_entropy",
        description="weighted_cross_entropy weighs classes by inverse frequency in the "
        "training folds",
    )
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="Label smoothing")
    augment: Literal["none", "basic", "randaugment"] = Field(
        default="basic", description="Augmentation policy (as the timm classifier)"
    )
    early_stopping_patience: int = Field(
        default=0,
        ge=0,
        description="Stop after this many epochs without a better validation macro F1 (0: off); "
        "the best epoch's weights are kept",
    )
    amp: bool = Field(default=True, description="Mixed precision on CUDA (ignored on CPU)")
    workers: int = Field(default=0, ge=0, description="Data loader worker processes")
    seed: int = Field(default=0, description="Seed for the head, adapters, shuffling, augmentation")


def recipe(config: LoraClassifierConfig) -> timm_recipe.ClassifierConfig:
    """The timm classifier's settings for the shared pieces (loader, loss, schedule): ours where
    both have the field, the classifier's defaults (no mixup, no accumulation) elsewhere."""
    shared = set(timm_recipe.ClassifierConfig.model_fields) & set(type(config).model_fields)
    shared.discard("img_size")  # ours may be 0 (the base model's own); the loader never reads it
    return timm_recipe.ClassifierConfig(**config.model_dump(include=shared))


def target_modules(config: LoraClassifierConfig, model_type: str) -> list[str]:
    if config.target_modules:
        return list(config.target_modules)
    if model_type not in TARGET_MODULES:
        raise ValueError(
            f"no default LoRA target modules for a {model_type!r} base model: set target_modules "
            f"(defaults exist for {', '.join(TARGET_MODULES)})"
        )
    return TARGET_MODULES[model_type]


@cache
def _logits_class():
    import torch

    class ImageLogits(torch.nn.Module):
        """A transformers classifier as a plain ``images -> logits`` module, taking inputs
        normalized as the timm classifier does (ImageNet mean and std) and renormalizing them
        to the base model's own processor statistics, so the classifier's loader, ``predict``
        and ``outputs`` serve both kinds."""

        def __init__(self, model, mean, std, img_size: int, interpolate: bool) -> None:
            super().__init__()
            self.model = model
            ours = torch.as_tensor(np.asarray(mean, np.float32)).view(1, 3, 1, 1)
            theirs = torch.as_tensor(np.asarray(std, np.float32)).view(1, 3, 1, 1)
            imagenet_mean = torch.as_tensor(timm_recipe.MEAN).view(1, 3, 1, 1)
            imagenet_std = torch.as_tensor(timm_recipe.STD).view(1, 3, 1, 1)
            self.register_buffer("scale", imagenet_std / theirs, persistent=False)
            self.register_buffer("shift", (imagenet_mean - ours) / theirs, persistent=False)
            self.ml_assets_img_size = img_size
            # ViT keeps the position embeddings of its configured size: other sizes interpolate.
            self.extra = {"interpolate_pos_encoding": True} if interpolate else {}

        def forward(self, x):
            return self.model(pixel_values=x * self.scale + self.shift, **self.extra).logits

    return ImageLogits


def _backbone(base: Path, classes: list[dict], seed: int):
    """The base model with a new head of ``len(classes)`` outputs (seeded initialization)."""
    import torch
    from transformers import AutoModelForImageClassification

    torch.manual_seed(seed)
    return AutoModelForImageClassification.from_pretrained(
        str(base),
        num_labels=len(classes),
        id2label={i: c["name"] for i, c in enumerate(classes)},
        label2id={c["name"]: i for i, c in enumerate(classes)},
        ignore_mismatched_sizes=True,  # a checkpoint's own head (1000 ImageNet classes) goes
    )


def _wrap(peft_model, base: Path, img_size: int):
    info = describe_base_model(base)
    size = img_size or info.image_size
    interpolate = info.model_type == "vit" and size != peft_model.base_model.config.image_size
    return _logits_class()(peft_model, info.image_mean, info.image_std, size, interpolate)


def build_lora_model(base: Path, classes: list[dict], config: LoraClassifierConfig):
    """Base + new head + fresh LoRA adapters, as an ``images -> logits`` module."""
    from peft import LoraConfig, get_peft_model

    model = _backbone(base, classes, config.seed)
    settings = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target_modules(config, model.config.model_type),
        modules_to_save=[HEAD],
    )
    return _wrap(get_peft_model(model, settings), base, config.img_size)


def parameter_counts(model) -> dict[str, int]:
    """Trainable and total parameters of a wrapped PEFT model, as PEFT counts them."""
    trainable, total = model.model.get_nb_trainable_parameters()
    return {"trainable_parameters": int(trainable), "total_parameters": int(total)}


def train_lora(
    model,
    crops: timm_recipe.Crops,
    num_classes: int,
    config: LoraClassifierConfig,
    device,
    run_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    validation: timm_recipe.Crops | None = None,
):
    """Train the adapters and head of ``model`` on ``crops`` with the classifier's loop
    (checkpoints and resume in ``run_dir``, keeping only what trains). Returns the model (eval
    mode, the best epoch's weights when validating), the history and the epoch it resumed at."""
    return timm_recipe.fit_loop(
        model,
        crops,
        num_classes,
        recipe(config),
        device,
        run_dir,
        on_epoch,
        validation,
        trainable_only=True,
    )


def save_adapter(model, folder: Path, meta: dict) -> Path:
    """Write the adapter (LoRA weights and the trained head, no base weights) and ``lora.json``
    to ``folder`` atomically, replacing an earlier one."""
    with atomic_dir(folder, overwrite=True) as tmp:
        model.model.save_pretrained(str(tmp))
        (tmp / META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return Path(folder)


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"no trained LoRA adapter at {folder} (missing {META})")
    return orjson.loads(path.read_bytes())


def base_of(meta: dict, folder: Path) -> Path:
    """The base snapshot an adapter was trained on, checked against the hash it recorded."""
    base = Path(meta["base_model"]["folder"])
    expected = meta["base_model"]["hash"]
    if not base.is_dir():
        raise FileNotFoundError(
            f"{folder}: its base model snapshot {base} (hash {expected}) is gone from the store"
        )
    found = snapshot_hash(base)
    if found != expected:
        raise ValueError(
            f"{folder}: base snapshot {base} has hash {found}, adapter says {expected}"
        )
    return base


def load_lora(folder: Path, device):
    """Base snapshot + saved adapter from disk; return the model (eval mode) and its metadata."""
    from peft import PeftModel

    folder = Path(folder)
    meta = read_meta(folder)
    base = base_of(meta, folder)
    config = LoraClassifierConfig(**meta["config"])
    backbone = _backbone(base, meta["classes"], config.seed)
    peft_model = PeftModel.from_pretrained(backbone, str(folder))
    return _wrap(peft_model, base, config.img_size).to(device).eval(), meta


def merged_model(folder: Path, device):
    """The adapter folded into the base weights (``merge_and_unload``): a plain transformers
    ``AutoModelForImageClassification`` for export, and the adapter's metadata."""
    model, meta = load_lora(folder, device)
    return model.model.merge_and_unload().eval(), meta


def adapter_megabytes(folder: Path) -> float:
    return (Path(folder) / ADAPTER_WEIGHTS).stat().st_size / 1e6
