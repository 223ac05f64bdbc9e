"""The classification machinery: a timm image classifier of object crops of detection data, or
whole images of image folders; the ``image_classifier`` kind (``train/kinds/image_classifier.py``)
and the LoRA classifier's loop both use it.

Small factories (crops, model, loader, loss, optimizer, schedule) and a training loop that reads
like prose, built from timm's, albumentations' and torch's own parts: ``timm.create_model``
(any architecture, from its config, from pulled weights or from a local weights file, the head
re-initialized for the version's classes: nothing is downloaded),
``timm.optim.create_optimizer_v2``, ``timm.scheduler.create_scheduler_v2`` (cosine, step or
plateau, with warmup), ``timm.data.Mixup`` (mixup and cutmix), albumentations for the basic
augmentation policy and timm's RandAugment for the stronger one, and torch's cross-entropy
(class weights, label smoothing and soft targets in one call). Focal loss is the one piece
written here: torchvision only ships the sigmoid (binary) form.

A published model folder holds ``model.safetensors`` (weights, no pickle) and
``classifier.json`` (everything needed to rebuild and use it). While training, the run folder
holds ``checkpoint.pt`` (model, optimizer, schedule, scaler, early-stopping state and history),
rewritten atomically after every epoch; a run that finds one resumes after its epoch. Every
epoch reseeds its shuffling and augmentation from (seed, epoch), so a resumed run draws the same
batches as one that never stopped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
from PIL import Image
from pydantic import Field, model_validator

from ml_assets.data.atomic import atomic_dir, atomic_path
from ml_assets.data.tables import Dataset
from ml_assets.evaluate.scores import Scores
from ml_assets.train.kinds import EpochCallback, KindConfig, KindNames
from ml_assets.train.weights import stored_copy

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CHECKPOINT = "checkpoint.pt"


class ClassifierConfig(KindConfig):
    pinned_fields = {"pretrained": "file"}

    model_name: str = Field(
        default="resnet10t", description="Any timm architecture, built from its config"
    )
    pretrained: str = Field(
        default="",
        description="Pulled weights of model_name to start from: the name they were pulled "
        "under (ml-assets weights pull resnet18.a1_in1k, a URL, s3://, hf://...), e.g. "
        "resnet18.a1_in1k with model_name resnet18; the head is re-initialized for the "
        "version's classes. Never downloaded: weights not pulled fail before training",
    )
    checkpoint: str = Field(
        default="",
        description="Local weights file to start from (transfer learning: a different head is "
        "replaced); empty trains from random initialization. Never downloaded.",
    )
    freeze_epochs: int = Field(
        default=0,
        ge=0,
        description="Train only the head for the first N epochs (fine-tuning pretrained or "
        "checkpoint weights; the body's batch-norm statistics still follow the new data); 0: "
        "everything trains from the first epoch",
    )
    img_size: int = Field(default=48, gt=0, description="Side of the square inputs, in pixels")
    epochs: int = Field(default=12, gt=0, description="Passes over the training images")
    batch_size: int = Field(default=32, gt=1, description="Samples per forward pass")
    accumulation_steps: int = Field(
        default=1, gt=0, description="Batches whose gradients add up before an optimizer step"
    )
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="adamw or sgd")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate after warmup")
    weight_decay: float = Field(default=0.05, ge=0, description="Weight decay")
    momentum: float = Field(default=0.9, ge=0, description="SGD momentum")
    schedule: Literal["cosine", "step", "plateau"] = Field(
        default="cosine",
        description="Learning-rate schedule (per epoch); plateau follows the macro F1 of a tenth "
        "of the training images set aside",
    )
    warmup_epochs: int = Field(default=1, ge=0, description="Linear warmup epochs")
    loss: Literal["cross_entropy", "weighted_cross_entropy", "focal"] = Field(
        default="cross_entropy",
        description="weighted_cross_entropy weighs classes by inverse frequency in the "
        "training folds",
    )
    focal_gamma: float = Field(default=2.0, ge=0, description="Focal loss focusing parameter")
    focal_alpha: float = Field(default=0.25, gt=0, description="Focal loss scale (alpha)")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="Label smoothing")
    mixup_alpha: float = Field(default=0.0, ge=0, description="Mixup Beta alpha; 0 is off")
    cutmix_alpha: float = Field(default=0.0, ge=0, description="CutMix Beta alpha; 0 is off")
    augment: Literal["none", "basic", "randaugment"] = Field(
        default="basic",
        description="basic: flips, affine and colour jitter; randaugment: timm's RandAugment "
        "(rand-m9-mstd0.5) plus flips",
    )
    early_stopping_patience: int = Field(
        default=0,
        ge=0,
        description="Stop after this many epochs without a better macro F1 on a tenth of the "
        "training images set aside (0: off), keeping the best epoch's weights; the held-out "
        "fold is never used to choose",
    )
    grad_clip: float = Field(default=0.0, ge=0, description="Gradient norm clip; 0 is off")
    amp: bool = Field(default=True, description="Mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(default=True, description="Channels-last memory on CUDA")
    tta: bool = Field(
        default=True, description="Also score with horizontal-flip test-time augmentation"
    )
    workers: int = Field(default=0, ge=0, description="Data loader worker processes")
    seed: int = Field(default=0, description="Seed for weights init, shuffling and augmentation")
    source: Literal["snapshot", "shards"] = Field(
        default="snapshot",
        description="snapshot: crops read from the version's image files into memory; shards: "
        "training crops streamed from WebDataset shards (memory stays flat as data grows)",
    )
    shards: str = Field(
        default="",
        description="With source shards: a shard folder or s3://bucket/prefix holding "
        "index.json; empty means the version's webdataset_shards",
    )
    shuffle_buffer: int = Field(
        default=1000, ge=0, description="With source shards: samples in the shuffle buffer"
    )

    @model_validator(mode="after")
    def _one_start(self):
        if self.pretrained and self.checkpoint:
            raise ValueError(
                "set pretrained (pulled weights) or checkpoint (a local file), not both"
            )
        return self


@dataclass(frozen=True)
class Crops:
    """Inputs as uint8 ``images`` (N, S, S, 3) with class indices and their annotation ids."""

    images: np.ndarray
    labels: np.ndarray
    annotation_ids: np.ndarray


@dataclass(frozen=True)
class ShardCrops:
    """Training inputs streamed from WebDataset shards instead of held in memory: the shard
    ``urls``, which images train, the model's class ids, and the label of every crop in the
    tables (their count sizes the epoch, their frequencies weigh the loss)."""

    urls: tuple[str, ...]
    image_ids: frozenset[int]
    class_ids: tuple[int, ...]
    labels: np.ndarray
    size: int
    shuffle_buffer: int = 1000


def crop_box(image: Image.Image, x: float, y: float, w: float, h: float, size: int, pad: float):
    """A square uint8 input around one box, resized to ``size``: a padded crop around an object,
    or the whole image when the box is the whole image (image folders)."""
    width, height = image.size
    if x <= 0 and y <= 0 and x + w >= width and y + h >= height:
        crop = image
    else:
        side = max(w, h) * (1 + 2 * pad)
        cx, cy = x + w / 2, y + h / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        crop = image.crop(tuple(round(v) for v in box))  # pads with black outside
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def shard_crops(
    ds: Dataset, image_ids, class_ids: list[int], location: str, size: int, shuffle_buffer: int
) -> ShardCrops:
    """The training crops of ``image_ids`` as a stream from the shards at ``location``."""
    from ml_assets.data.shards import shard_urls

    index = {cid: i for i, cid in enumerate(class_ids)}
    ann = ds.annotations[ds.annotations["image_id"].isin(set(image_ids))]
    labels = ann.loc[ann["iscrowd"] == 0, "category_id"].map(index).to_numpy(np.int64)
    return ShardCrops(
        tuple(shard_urls(location)),
        frozenset(int(i) for i in image_ids),
        tuple(class_ids),
        labels,
        size,
        shuffle_buffer,
    )


def streamed_crops(source: ShardCrops, pad: float = 0.15, shuffle_seed: int | None = None):
    """(uint8 HWC crop, class index, annotation id) of every non-crowd box of the source's
    images, streamed from its shards (this rank's and loader worker's share, shuffled through
    the buffer when ``shuffle_seed`` is given, else every shard in order)."""
    from ml_assets.data.shards import read_image, stream_samples

    index = {cid: i for i, cid in enumerate(source.class_ids)}
    shuffle = source.shuffle_buffer if shuffle_seed is not None else 0
    split = shuffle_seed is not None
    for sample in stream_samples(source.urls, shuffle, shuffle_seed or 0, split=split):
        if sample.record["image_id"] not in source.image_ids:
            continue
        boxes = [a for a in sample.record["annotations"] if not a["iscrowd"]]
        image = read_image(sample) if boxes else None
        for a in boxes:
            if a["category_id"] not in index:
                raise ValueError(
                    f"{sample.url}: sample {sample.key} has category {a['category_id']}, "
                    "unknown to the model"
                )
            crop = crop_box(image, a["x"], a["y"], a["w"], a["h"], source.size, pad)
            yield crop, index[a["category_id"]], a["annotation_id"]


def collect_crops(source: ShardCrops) -> Crops:
    """Every crop of a shard source in memory (validation: one fold)."""
    found = list(streamed_crops(source))
    if not found:
        return Crops(np.zeros((0, source.size, source.size, 3), np.uint8), *np.zeros((2, 0), int))
    images, labels, ids = zip(*found, strict=True)
    return Crops(np.stack(images), np.asarray(labels, np.int64), np.asarray(ids, np.int64))


def extract_crops(
    ds: Dataset, image_ids, class_ids: list[int], size: int = 48, pad: float = 0.15
) -> Crops:
    """A square input per non-crowd box of the given images, resized to ``size``: a padded crop
    around an object, or the whole image when the box is the whole image (image folders)."""
    index = {cid: i for i, cid in enumerate(class_ids)}
    ann = ds.annotations[ds.annotations["image_id"].isin(set(image_ids))]
    ann = ann[ann["iscrowd"] == 0]
    files = ds.images.set_index("image_id")["file_name"]
    crops, labels, ids = [], [], []
    for image_id, group in ann.groupby("image_id", sort=True):
        path = ds.image_path(files[image_id])
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise ValueError(f"{path}: cannot read image {image_id}: {err}") from err
        for row in group.itertuples():
            crops.append(crop_box(image, row.x, row.y, row.w, row.h, size, pad))
            labels.append(index[row.category_id])
            ids.append(row.annotation_id)
    return Crops(
        np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        np.asarray(labels, dtype=np.int64),
        np.asarray(ids, dtype=np.int64),
    )


def build_model(config: ClassifierConfig, num_classes: int, start: Path | None = None):
    """The timm model, randomly initialized or from the weights file ``start``."""
    model = _create(config, num_classes, start)
    model.ml_assets_img_size = config.img_size  # the input side it was trained for
    return model


def _create(config: ClassifierConfig, num_classes: int, start: Path | None):
    import timm

    if start is None:
        return timm.create_model(config.model_name, pretrained=False, num_classes=num_classes)
    try:
        # timm's own transfer-learning path: loads the file and re-initializes a head whose
        # class count differs.
        return timm.create_model(
            config.model_name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(start)},
            num_classes=num_classes,
        )
    except RuntimeError as err:  # a state dict of another architecture
        raise ValueError(
            f"the weights {start} do not fit a {config.model_name}: set model_name to the "
            f"architecture they were trained as ({str(err).splitlines()[0]})"
        ) from None


def starting_weights(config: ClassifierConfig, inputs: dict[str, Path] | None = None):
    """The weights file training starts from: the stored copy of the pulled weights
    ``pretrained`` names (``inputs["pretrained"]``), else the local ``checkpoint``; None:
    random initialization."""
    pinned = stored_copy(config, "pretrained", inputs)
    if pinned is not None or not config.checkpoint:
        return pinned
    path = Path(config.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (only local files load)")
    return path


def body_parameters(model) -> list:
    """Every parameter but the head's (timm's ``get_classifier()``): what ``freeze_epochs``
    holds still."""
    head = {id(p) for p in model.get_classifier().parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def augmentation(policy: str):
    """A function uint8 HWC image -> uint8 HWC image, and a reseeding function."""
    import albumentations as A

    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if policy == "basic":
        basic = A.Compose(
            [
                *flips,
                A.Affine(scale=(0.85, 1.15), rotate=(-30, 30), translate_percent=0.05, p=0.7),
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, p=0.7),
            ]
        )
        return (lambda image: basic(image=image)["image"]), basic.set_random_seed
    if policy == "randaugment":
        import random

        from timm.data.auto_augment import rand_augment_transform

        rand = rand_augment_transform("rand-m9-mstd0.5", {"img_mean": (124, 116, 104)})
        flip = A.Compose(flips)

        def apply(image):
            return flip(image=np.asarray(rand(Image.fromarray(image))))["image"]

        def reseed(seed: int) -> None:
            random.seed(seed)  # timm's RandAugment draws from Python's random module
            flip.set_random_seed(seed)

        return apply, reseed
    return None, lambda seed: None


def build_loader(
    crops: Crops | ShardCrops, config: ClassifierConfig, augment: bool, generator=None
):
    """Batches of uint8 (B, 3, S, S) tensors and labels; normalization happens on the device.
    Under ``torch.distributed`` each rank reads its own share (a ``DistributedSampler``, or its
    own shards); ``reseed(seed)`` before every epoch makes its order and augmentation
    reproducible."""
    import torch
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    from ml_assets.train.ddp import world

    transform, reseed = augmentation(config.augment if augment else "none")
    if isinstance(crops, ShardCrops):
        return _shard_loader(crops, config, transform, reseed)
    if transform is None:
        data = TensorDataset(torch.from_numpy(crops.images).permute(0, 3, 1, 2).contiguous())
        data.tensors += (torch.from_numpy(crops.labels),)
    else:

        class Augmented(Dataset):
            def __len__(self) -> int:
                return len(crops.labels)

            def __getitem__(self, i: int):
                image = np.array(transform(crops.images[i]))  # a writable copy
                return torch.from_numpy(image).permute(2, 0, 1), int(crops.labels[i])

        data = Augmented()
    mixing = augment and (config.mixup_alpha > 0 or config.cutmix_alpha > 0)
    rank, size = world()
    sampler = None
    if size > 1:  # every rank the same number of batches (padded by repetition)
        sampler = torch.utils.data.DistributedSampler(
            data, size, rank, shuffle=augment, seed=config.seed
        )
        reseed = _also(reseed, sampler.set_epoch)
    samples = len(sampler) if sampler is not None else len(crops.labels)  # this rank's
    loader = DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=augment and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=config.workers,
        # timm's Mixup pairs samples (batches must be full), and batch norm cannot train on a
        # last batch of one sample.
        drop_last=augment and (mixing or samples % config.batch_size == 1),
        worker_init_fn=(lambda worker: reseed(torch.initial_seed() % 2**31)),
        pin_memory=False,
    )
    return loader, reseed


def _also(first, second):
    def both(seed: int) -> None:
        first(seed)
        second(seed)

    return both


def _shard_loader(source: ShardCrops, config: ClassifierConfig, transform, reseed):
    """A loader over crops streamed from shards; its length is the epoch's batch count."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from ml_assets.train.ddp import world

    ranks = world()[1]

    class Streamed(IterableDataset):
        seed = 0

        def __len__(self) -> int:  # this rank's share, about: ranks read different shards
            return -(-len(source.labels) // ranks)

        def __iter__(self):
            for crop, label, _ in streamed_crops(source, shuffle_seed=self.seed):
                image = np.array(transform(crop) if transform is not None else crop)  # writable
                yield torch.from_numpy(image).permute(2, 0, 1), label

    data = Streamed()

    def reseed_stream(seed: int) -> None:
        data.seed = seed  # read when the next epoch's iteration starts, in every worker
        reseed(seed)

    loader = DataLoader(
        data,
        batch_size=config.batch_size,
        num_workers=config.workers,
        # Every worker and rank ends with its own partial batch: drop those that could hold one
        # sample (batch norm needs two) or break timm's Mixup (it pairs samples).
        drop_last=config.workers > 1
        or ranks > 1
        or config.mixup_alpha > 0
        or config.cutmix_alpha > 0
        or len(source.labels) % config.batch_size == 1,
        worker_init_fn=(lambda worker: reseed(torch.initial_seed() % 2**31)),
    )
    return loader, reseed_stream


def normalize(x, device, channels_last: bool = False):
    """uint8 (B, 3, S, S) on any device to a normalized float tensor on ``device``."""
    import torch

    x = x.to(device, non_blocking=True).float().div_(255)
    mean = torch.as_tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights (n_samples / (n_present_classes * count)) for the
    classes present in the training folds; absent classes weigh 1."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = np.ones(num_classes, dtype=np.float32)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def focal_loss(logits, targets, gamma: float, alpha: float, weight=None):
    """Softmax focal loss (Lin et al. 2017) for class indices or soft targets (N, K)."""
    import torch

    log_p = torch.log_softmax(logits.float(), dim=1)
    if targets.ndim == 1:
        targets = torch.nn.functional.one_hot(targets, logits.shape[1]).float()
    terms = -targets * (1 - log_p.exp()).pow(gamma) * log_p
    if weight is not None:
        terms = terms * weight
    return alpha * terms.sum(dim=1).mean()


def build_loss(config: ClassifierConfig, labels: np.ndarray, num_classes: int, device):
    """loss(logits, targets) for class indices or soft (mixed) targets."""
    import torch

    weight = None
    if config.loss == "weighted_cross_entropy":
        weight = torch.as_tensor(class_weights(labels, num_classes), device=device)
    if config.loss == "focal":
        smoothing = config.label_smoothing

        def focal(logits, targets):
            if targets.ndim == 1 and smoothing:
                targets = torch.nn.functional.one_hot(targets, num_classes).float()
                targets = targets * (1 - smoothing) + smoothing / num_classes
            return focal_loss(logits, targets, config.focal_gamma, config.focal_alpha)

        return focal

    def cross_entropy(logits, targets):
        # Mixed targets arrive smoothed already (timm's Mixup applies the smoothing).
        smoothing = config.label_smoothing if targets.ndim == 1 else 0.0
        return torch.nn.functional.cross_entropy(
            logits.float(), targets, weight=weight, label_smoothing=smoothing
        )

    return cross_entropy


def build_schedule(optimizer, config: ClassifierConfig, updates_per_epoch: int):
    """timm's schedule, stepped per optimizer update (warmup and decay are smooth within an
    epoch), except plateau, which reacts to the validation metric once per epoch."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=config.schedule,
        num_epochs=config.epochs,
        step_on_epochs=config.schedule == "plateau",
        updates_per_epoch=updates_per_epoch,
        warmup_epochs=min(config.warmup_epochs, max(config.epochs - 1, 0)),
        warmup_lr=config.lr * 0.01,
        min_lr=config.lr * 0.01,
        decay_epochs=max(1, config.epochs // 3),
        decay_rate=0.1,
        patience_epochs=2,
        plateau_mode="max",
    )
    return scheduler


def predict(model, images: np.ndarray, device, batch_size: int = 128, tta: bool = False):
    """Class probabilities (N, K) for uint8 inputs (N, S, S, 3); ``tta`` averages them with
    those of the horizontally flipped inputs."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
            x = normalize(batch, device)
            p = torch.softmax(model(x).float(), dim=1)
            if tta:
                p = (p + torch.softmax(model(torch.flip(x, dims=[3])).float(), dim=1)) / 2
            out.append(p.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def macro_f1(model, crops: Crops, num_classes: int, device) -> float:
    from sklearn.metrics import f1_score

    predicted = predict(model, crops.images, device).argmax(axis=1)
    labels = list(range(num_classes))
    return float(f1_score(crops.labels, predicted, labels=labels, average="macro", zero_division=0))


def train_classifier(
    crops: Crops,
    num_classes: int,
    config: ClassifierConfig,
    device,
    run_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    validation: Crops | None = None,
    inputs: dict[str, Path] | None = None,
):
    """Train a timm model on ``crops`` from :func:`starting_weights` (see :func:`fit_loop`)."""
    import torch

    if len(crops.labels) == 0:
        raise ValueError("no training samples: the training folds hold no labelled objects")
    torch.manual_seed(config.seed)
    model = build_model(config, num_classes, starting_weights(config, inputs))
    return fit_loop(model, crops, num_classes, config, device, run_dir, on_epoch, validation)


def trained_state(model, trainable_only: bool) -> dict:
    """What checkpoints keep of ``model``: everything, or only what trains (a PEFT model's
    adapters and head, never its frozen base)."""
    if not trainable_only:
        return model.state_dict()
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@dataclass
class Loop:
    """What a classifier's training holds from epoch to epoch (built by :func:`build_loop`)."""

    model: Any  # images -> logits
    network: Any  # what runs forward and backward: the model, or DDP's wrapper under torchrun
    optimizer: Any
    scheduler: Any  # timm's, stepped per update and per epoch
    scaler: Any  # AMP's gradient scaler (a no-op off CUDA)
    loss_fn: Any
    mixup: Any  # timm's Mixup/CutMix, or None
    loader: Any
    reseed: Any  # reseeds the loader's augmentation for an epoch
    generator: Any  # the loader's shuffling
    body: list  # parameters held still during freeze_epochs
    device: Any
    amp_dtype: Any
    use_amp: bool
    channels_last: bool
    uneven: bool  # ranks streaming their own shards may run out of batches at different steps


def build_loop(model, crops, num_classes: int, config: ClassifierConfig, device) -> Loop:
    """The model on ``device`` (wrapped in DDP under torchrun), timm's optimizer, schedule and
    Mixup, the loss and the loader of ``crops``."""
    import torch
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2

    from ml_assets.train.ddp import world

    model = model.to(device)
    on_cuda = device.type == "cuda"
    channels_last = on_cuda and config.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _, ranks = world()
    network = model
    if ranks > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_cuda else None
        )
    # timm's parameter groups skip frozen parameters: they get no optimizer state.
    optimizer = create_optimizer_v2(
        model,
        opt=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        **({"momentum": config.momentum} if config.optimizer == "sgd" else {}),
    )
    amp_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = on_cuda and config.amp
    mixup = None
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        mixup = Mixup(
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )
    generator = torch.Generator()
    loader, reseed = build_loader(crops, config, augment=True, generator=generator)
    updates_per_epoch = max(1, -(-len(loader) // config.accumulation_steps))
    return Loop(
        model=model,
        network=network,
        optimizer=optimizer,
        scheduler=build_schedule(optimizer, config, updates_per_epoch),
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16),
        loss_fn=build_loss(config, crops.labels, num_classes, device),
        mixup=mixup,
        loader=loader,
        reseed=reseed,
        generator=generator,
        body=body_parameters(model) if config.freeze_epochs else [],
        device=device,
        amp_dtype=amp_dtype,
        use_amp=use_amp,
        channels_last=channels_last,
        uneven=ranks > 1 and isinstance(crops, ShardCrops),
    )


def fit_loop(
    model,
    crops: Crops,
    num_classes: int,
    config: ClassifierConfig,
    device,
    run_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    validation: Crops | None = None,
    trainable_only: bool = False,
):
    """Train ``model`` (images -> logits) on ``crops``, checkpointing into ``run_dir`` after
    every epoch and resuming from a checkpoint found there (``trainable_only``: checkpoints and
    the best epoch keep only the parameters that train). Returns the model (eval mode: the best
    epoch's weights when training chooses by ``validation``'s score, see :func:`watched_ids`,
    else the last epoch's), the per-epoch history and the epoch it resumed at (None for a fresh
    start)."""
    from ml_assets.train.ddp import barrier, world

    if len(crops.labels) == 0:
        raise ValueError("no training samples: the training folds hold no labelled objects")
    loop = build_loop(model, crops, num_classes, config, device)
    state = {
        "epoch": 0,
        "updates": 0,
        "history": [],
        "best_f1": -1.0,
        "best_state": None,
        "bad_epochs": 0,
    }
    checkpoint = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    resumed_from = None
    barrier()  # rank 0 has prepared run_dir: every rank sees the same checkpoint
    if checkpoint is not None and checkpoint.exists():
        state = resume(loop, checkpoint, trainable_only)
        resumed_from = state["epoch"] + 1
    rank, _ = world()
    while state["epoch"] < config.epochs and not stopped_early(state, config):
        epoch = state["epoch"]
        started = time.perf_counter()
        row = train_one_epoch(loop, config, epoch, state)
        metric = None
        if validation is not None and len(validation.labels):
            metric = validate(loop, validation, num_classes, config, state, row, trainable_only)
        loop.scheduler.step(epoch + 1, metric)
        row["seconds"] = time.perf_counter() - started
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, **row})
        if rank == 0:  # the only rank that writes and reports
            if checkpoint is not None:
                weights = trained_state(loop.model, trainable_only)
                save_checkpoint(
                    checkpoint, weights, loop.optimizer, loop.scheduler, loop.scaler, state
                )
            if on_epoch:
                on_epoch(epoch + 1, config.epochs, row)
    if state["best_state"] is not None:
        loop.model.load_state_dict(state["best_state"], strict=not trainable_only)
    return loop.model.eval(), pd.DataFrame(state["history"]), resumed_from


def resume(loop: Loop, checkpoint: Path, trainable_only: bool) -> dict:
    """Load the model, optimizer, schedule and scaler saved in ``checkpoint``; its state."""
    import torch

    saved = torch.load(checkpoint, map_location=loop.device, weights_only=False)
    loop.model.load_state_dict(saved["model"], strict=not trainable_only)
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.scheduler.load_state_dict(saved["scheduler"])
    if "plateau" in saved:  # timm does not save the plateau's own counters: we do
        loop.scheduler.lr_scheduler.load_state_dict(saved["plateau"])
    loop.scaler.load_state_dict(saved["scaler"])
    return saved["state"]


def train_one_epoch(loop: Loop, config: ClassifierConfig, epoch: int, state: dict) -> dict:
    """One pass over the loader, seeded by (seed, epoch) so a resumed run repeats it exactly;
    the epoch's loss, accuracy (summed over ranks) and learning rate."""
    import torch

    from ml_assets.train.ddp import sum_over_ranks

    seed = config.seed * 100_003 + epoch
    loop.generator.manual_seed(seed)
    loop.reseed(seed)
    np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy's global generator
    torch.manual_seed(seed)
    model, optimizer, scaler = loop.model, loop.optimizer, loop.scaler
    steps = config.accumulation_steps
    model.train()
    total, correct, seen = 0.0, 0, 0
    optimizer.zero_grad(set_to_none=True)

    def update(frozen: bool = epoch < config.freeze_epochs) -> None:
        if frozen:  # only the head learns: the optimizer skips parameters without a gradient
            for p in loop.body:
                p.grad = None
        if config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state["updates"] += 1
        loop.scheduler.step_update(state["updates"])

    pending = False
    # Ranks streaming their own shards may run out of batches at different steps: DDP's
    # join lets the others finish without waiting for them.
    with loop.network.join() if loop.uneven else contextlib.nullcontext():
        for i, (x, y) in enumerate(loop.loader):
            x, y = normalize(x, loop.device, loop.channels_last), y.to(loop.device)
            targets = y
            if loop.mixup is not None:
                x, targets = loop.mixup(x, y)
            with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.use_amp):
                logits = loop.network(x)
            loss = loop.loss_fn(logits, targets)
            scaler.scale(loss / steps).backward()
            pending = (i + 1) % steps != 0
            if not pending:
                update()
            total += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    if pending:  # the epoch's last batches, fewer than accumulation_steps
        update()
    total, correct, seen = sum_over_ranks(total, correct, seen, device=loop.device)
    return {
        "train_loss": total / seen,
        "train_accuracy": correct / seen,
        "lr": optimizer.param_groups[0]["lr"],
    }


def validate(
    loop: Loop, validation: Crops, num_classes: int, config, state: dict, row: dict, trainable_only
) -> float | None:
    """The epoch's macro F1 on ``validation`` (into ``row``), keeping the best epoch's weights
    in ``state`` when training chooses by it; the metric the schedule steps on, or None."""
    model = loop.model
    model.eval()
    metric = row["val_macro_f1"] = macro_f1(model, validation, num_classes, loop.device)
    if not selects_epochs(config):
        return None  # watched only: nothing is chosen by it
    if metric > state["best_f1"]:
        state["best_f1"], state["bad_epochs"] = metric, 0
        state["best_state"] = {
            k: v.detach().cpu().clone() for k, v in trained_state(model, trainable_only).items()
        }
    else:
        state["bad_epochs"] += 1
    return metric


def stopped_early(state: dict, config: ClassifierConfig) -> bool:
    patience = config.early_stopping_patience
    return bool(patience) and state["bad_epochs"] >= patience


def save_checkpoint(path: Path, weights: dict, optimizer, scheduler, scaler, state: dict) -> None:
    """Everything a resumed run needs, streamed atomically to ``path`` (no in-memory copy)."""
    import torch

    inner = getattr(scheduler, "lr_scheduler", None)  # torch's ReduceLROnPlateau inside timm's
    plateau = {"plateau": inner.state_dict()} if inner is not None else {}
    # Written beside the last checkpoint, which stays whole if the disk fills; about its size.
    previous = path.stat().st_size if path.exists() else None
    with atomic_path(path, needs=previous) as tmp:
        torch.save(
            {
                "model": weights,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "state": state,
                **plateau,
            },
            tmp,
        )


def save_classifier(model, folder: Path, config: ClassifierConfig, classes: list[dict]) -> Path:
    """Write weights and metadata to ``folder`` atomically (replacing an earlier one)."""
    from safetensors.torch import save_file

    with atomic_dir(folder, overwrite=True) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {"kind": "image_classifier", "config": config.model_dump(), "classes": classes}
        (tmp / "classifier.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return Path(folder)


def load_classifier(folder: Path, device):
    """Rebuild a saved classifier; return the model (eval mode) and its metadata."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / "classifier.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no trained classifier at {folder} (missing classifier.json)")
    meta = orjson.loads(meta_path.read_bytes())
    config = ClassifierConfig(**meta["config"])
    model = build_model(config, len(meta["classes"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval(), meta


SELECTION_SHARE = 0.1  # of the training images, set aside when training chooses by a score


def selects_epochs(config: ClassifierConfig) -> bool:
    """Whether training chooses by a validation score: early stopping (which also keeps the
    best epoch) or the plateau schedule."""
    return bool(config.early_stopping_patience) or config.schedule == "plateau"


def watched_ids(train_ids, val_ids, config: ClassifierConfig) -> tuple[list[int], list[int]]:
    """(images to train on, images validated after each epoch). The held-out fold is only
    watched (the progress line shows its score) unless training chooses by the score
    (:func:`selects_epochs`): then a seeded tenth of the training images is set aside for it,
    never the fold that later scores the model, whose score would otherwise be the best of many
    looks at it."""
    if not selects_epochs(config) or len(train_ids) < 2:  # one image: nothing to set aside
        return list(train_ids), list(val_ids)
    shuffled = np.random.default_rng(config.seed).permutation(np.asarray(train_ids, dtype=int))
    aside = max(1, round(len(shuffled) * SELECTION_SHARE))
    return sorted(shuffled[aside:].tolist()), sorted(shuffled[:aside].tolist())


def training_inputs(ds: Dataset, train_ids, val_ids, class_ids, config, inputs=None):
    """(training crops, validation crops) of a fold: both read from the version's image files,
    or with ``source: shards`` the training crops streamed and the validation fold collected
    from the shards (``config.shards``, else the ``webdataset_shards`` input)."""
    if config.source == "snapshot":
        return (
            extract_crops(ds, train_ids, class_ids, size=config.img_size),
            extract_crops(ds, val_ids, class_ids, size=config.img_size),
        )
    location = config.shards or str((inputs or {}).get("webdataset_shards", ""))
    if not location:
        raise ValueError(
            "source 'shards' needs a shard location: set shards (a folder or s3:// URL) or "
            "materialize webdataset_shards for this version"
        )
    train = shard_crops(ds, train_ids, class_ids, location, config.img_size, config.shuffle_buffer)
    val = ShardCrops(
        train.urls, frozenset(int(i) for i in val_ids), train.class_ids, None, train.size
    )
    return train, collect_crops(val)


def check_known(ds: Dataset, classes: list[dict], model_dir: Path) -> None:
    """Refuse a dataset with categories the model at ``model_dir`` was not trained on."""
    unknown = set(ds.annotations["category_id"]) - {c["id"] for c in classes}
    if unknown:
        raise ValueError(f"{model_dir}: the model does not know category ids {sorted(unknown)}")


def score_crops(
    model, classes: list[dict], ds: Dataset, image_ids, device, model_dir: Path, tta: bool
) -> Scores:
    """A classifier (images -> logits, ``ml_assets_img_size`` inputs) scored on the crops of
    ``image_ids``: the metrics of ``classification_metrics`` and, with ``tta``, the same with
    horizontal-flip test-time augmentation (``*_tta``); confusion and reliability plots."""
    from ml_assets.evaluate.classification import classification_metrics
    from ml_assets.evaluate.plots import confusion_png, reliability_png

    check_known(ds, classes, model_dir)
    names = [c["name"] for c in classes]
    crops = extract_crops(ds, image_ids, [c["id"] for c in classes], model.ml_assets_img_size)
    probabilities = predict(model, crops.images, device)
    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
    found = classification_metrics(crops.labels, predicted, names, probabilities)
    metrics = {k: v for k, v in found.items() if isinstance(v, int | float)}
    if tta:  # the flipped pass only: the plain probabilities are already here
        flipped = (probabilities + predict(model, crops.images[:, :, ::-1].copy(), device)) / 2
        with_tta = classification_metrics(crops.labels, flipped.argmax(axis=1), names, flipped)
        metrics |= {
            f"{k}_tta": v
            for k, v in with_tta.items()
            if isinstance(v, int | float) and k != "samples"
        }
    predictions = pd.DataFrame(
        {
            "annotation_id": crops.annotation_ids,
            "true": np.asarray(names)[crops.labels],
            "predicted": np.asarray(names)[predicted],
            "confidence": probabilities.max(axis=1) if len(probabilities) else np.zeros(0),
            # out-of-fold class probabilities: what ml_assets.evaluate.quality reads
            **{
                f"p_{n}": probabilities[:, i] if len(probabilities) else np.zeros(0)
                for i, n in enumerate(names)
            },
        }
    )
    return Scores(
        metrics=metrics,
        per_class=found["per_class"],
        predictions=predictions,
        extra={"classes": names, "confusion": found["confusion"].tolist()},
        plots={
            "confusion_matrix": confusion_png(found["confusion"], names, "held out"),
            "reliability": reliability_png(found["reliability"], "held out"),
        },
    )


def classify_images(
    model, classes: list[dict], images: Sequence[Path], device, tta: bool, batch_size: int = 64
) -> pd.DataFrame:
    """Class probabilities of whole image files, read and predicted ``batch_size`` at a time:
    one row per image (``file``, ``predicted``, ``confidence``, ``p_<class>``)."""
    names = [c["name"] for c in classes]
    size = model.ml_assets_img_size
    parts = [np.zeros((0, len(names)), np.float32)]
    for start in range(0, len(images), batch_size):
        pixels = []
        for path in images[start : start + batch_size]:
            try:
                with Image.open(path) as image:
                    # the whole image, resized as in training and in the export
                    pixels.append(crop_box(image.convert("RGB"), 0, 0, *image.size, size, 0.0))
            except OSError as err:
                raise ValueError(f"{path}: cannot read image: {err}") from err
        parts.append(predict(model, np.stack(pixels), device, tta=tta))
    probabilities = np.concatenate(parts)
    frame = pd.DataFrame(probabilities, columns=[f"p_{n}" for n in names])
    frame.insert(0, "confidence", probabilities.max(axis=1) if len(frame) else [])
    frame.insert(0, "predicted", np.asarray(names, dtype=object)[probabilities.argmax(axis=1)])
    frame.insert(0, "file", [str(p) for p in images])
    return frame


def majority_baseline(folds: list[dict]) -> float:
    """Macro F1 of always answering the most common class of the held-out folds (their summed
    confusion matrices)."""
    from ml_assets.evaluate.classification import majority_baseline_macro_f1

    return majority_baseline_macro_f1(np.sum([f["extra"]["confusion"] for f in folds], axis=0))


def crop_logits(model, ds: Dataset, image_ids: Sequence[int], device) -> np.ndarray:
    """Logits of the first crops of ``image_ids`` at the model's own input size (what the
    reload check compares)."""
    import torch

    crops = extract_crops(
        ds, image_ids, sorted(ds.categories["category_id"]), size=model.ml_assets_img_size
    )
    with torch.inference_mode():
        x = normalize(torch.from_numpy(crops.images[:8]).permute(0, 3, 1, 2), device)
        return model(x).float().cpu().numpy()


def fit_summary(history: pd.DataFrame, samples: int) -> dict[str, float]:
    """A classification fit's final numbers: samples, the last epoch's loss and accuracy, and
    the best held-out macro F1 it watched."""
    last = history.iloc[-1]
    summary = {
        "train_samples": samples,
        "final_train_loss": float(last["train_loss"]),
        "final_train_accuracy": float(last["train_accuracy"]),
    }
    if "val_macro_f1" in history:
        summary["best_val_macro_f1"] = float(history["val_macro_f1"].max())
    return summary


class ClassificationKind(KindNames):
    """What the classification kinds share: the majority baseline, the model as its own module,
    and its logits on a few crops for the reload check."""

    predicts = "classes"
    held_out = "classes"

    def baseline(self, folds: list[dict]) -> float:
        return majority_baseline(folds)

    def module(self, model):
        return model

    def outputs(self, model, ds: Dataset, image_ids: Sequence[int], device) -> np.ndarray:
        return crop_logits(model, ds, image_ids, device)
