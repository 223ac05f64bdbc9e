"""A timm image classifier trained on object crops cut from detection data.

Small factories (crops, model, loader, optimizer) and a training loop that reads like prose.
The model is built from timm's config (``pretrained=False``): nothing is downloaded. A run folder
holds ``model.safetensors`` (weights, no pickle) and ``classifier.json`` (everything needed to
rebuild and use it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from PIL import Image

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.tables import Dataset

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Crops:
    """Object crops as uint8 ``images`` (N, S, S, 3) with class indices and their origin."""

    images: np.ndarray
    labels: np.ndarray
    annotation_ids: np.ndarray


def extract_crops(
    ds: Dataset, image_ids, class_ids: list[int], size: int = 48, pad: float = 0.15
) -> Crops:
    """Cut a square crop around every non-crowd box of the given images, resized to ``size``."""
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
            side = max(row.w, row.h) * (1 + 2 * pad)
            cx, cy = row.x + row.w / 2, row.y + row.h / 2
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            # Beyond the image border, crop() pads with black.
            crop = image.crop(tuple(round(v) for v in box)).resize(
                (size, size), Image.Resampling.BILINEAR
            )
            crops.append(np.asarray(crop))
            labels.append(index[row.category_id])
            ids.append(row.annotation_id)
    shape = (0, size, size, 3)
    return Crops(
        np.stack(crops) if crops else np.zeros(shape, np.uint8),
        np.asarray(labels, dtype=np.int64),
        np.asarray(ids, dtype=np.int64),
    )


@dataclass(frozen=True)
class ClassifierConfig:
    model_name: str = "resnet10t"
    img_size: int = 48
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0


def build_model(model_name: str, num_classes: int):
    import timm

    return timm.create_model(model_name, pretrained=False, num_classes=num_classes)


def _augment(seed: int):
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(scale=(0.85, 1.15), rotate=(-30, 30), translate_percent=0.05, p=0.7),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, p=0.7),
        ],
        seed=seed,
    )


def to_tensor(images: np.ndarray):
    """uint8 (N, S, S, 3) to a normalized float tensor (N, 3, S, S)."""
    import torch

    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def build_loader(crops: Crops, batch_size: int, seed: int, augment: bool):
    import torch
    from torch.utils.data import DataLoader, Dataset

    transform = _augment(seed) if augment else None

    class CropDataset(Dataset):
        def __len__(self) -> int:
            return len(crops.labels)

        def __getitem__(self, i: int):
            image = crops.images[i]
            if transform is not None:
                image = transform(image=image)["image"]
            return to_tensor(image[None])[0], int(crops.labels[i])

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        CropDataset(), batch_size=batch_size, shuffle=augment, generator=generator, num_workers=0
    )


def train_classifier(
    crops: Crops,
    class_names: list[str],
    config: ClassifierConfig,
    device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
):
    """Train a fresh model on ``crops``; return it (in eval mode) and its per-epoch history."""
    import torch
    from timm.optim import create_optimizer_v2

    if len(crops.labels) == 0:
        raise ValueError("no training crops: the training folds hold no labelled objects")
    torch.manual_seed(config.seed)
    model = build_model(config.model_name, len(class_names)).to(device)
    loader = build_loader(crops, config.batch_size, config.seed, augment=True)
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay
    )
    steps = config.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history = []
    for epoch in range(config.epochs):
        model.train()
        started, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / seen,
            "train_accuracy": correct / seen,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        if on_epoch:
            on_epoch(epoch + 1, row)
    return model.eval(), pd.DataFrame(history)


def predict(model, images: np.ndarray, device, batch_size: int = 128) -> np.ndarray:
    """Class probabilities (N, K) for uint8 crops (N, S, S, 3)."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size]).to(device)
            out.append(torch.softmax(model(x), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def save_classifier(
    model, run_dir: Path, config: ClassifierConfig, classes: list[dict], extra: dict
) -> Path:
    """Write weights and metadata to ``run_dir`` atomically (replacing an earlier run)."""
    from safetensors.torch import save_file

    with atomic_dir(run_dir, overwrite=True) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {"config": asdict(config), "classes": classes, **extra}
        (tmp / "classifier.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return Path(run_dir)


def load_classifier(run_dir: Path, device):
    """Rebuild a saved classifier; return the model (eval mode) and its metadata."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta_path = run_dir / "classifier.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no trained classifier at {run_dir} (missing classifier.json)")
    meta = orjson.loads(meta_path.read_bytes())
    config = ClassifierConfig(**meta["config"])
    model = build_model(config.model_name, len(meta["classes"]))
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.to(device).eval(), meta
