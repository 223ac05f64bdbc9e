"""LoRA teachers: open-vocabulary detection (Grounding DINO) and promptable segmentation (SAM),
adapted to the user's classes with PEFT's LoRA: the machinery of two model kinds
(``train/kinds/lora_detector.py`` and ``lora_segmenter.py``, see ``ml_assets.train.kinds``).

``lora_detector`` fine-tunes ``GroundingDinoForObjectDetection`` on the fold's boxes with the
class names as its text prompt (``"circle . square ."``: Grounding DINO's loss finds the phrases
between the ``.`` separators); evaluation turns its outputs into COCO-style boxes and scores on
the held-out fold and scores them with the exact COCO metrics (``ml_assets.evaluate.detection``),
primary metric AP (mAP@[.5:.95]), baseline 0 (no detections).

``lora_segmenter`` fine-tunes ``SamModel`` to predict each object's mask from its box prompt.
Masks come from the version's COCO polygons and RLE (pycocotools); objects without a mask, and
images with none, are left out and counted. Evaluation reports, per object on the held-out fold,
the mask IoU (primary metric) and the boundary IoU (Cheng et al., 2021: IoU of the mask pixels
within 2% of the image diagonal of each contour), and the same two numbers for the baseline mask
that fills the prompt box.

Both read the base model from a snapshot in the store (``inputs["base_model"]``, see
``ml_assets.train.base_models``). Images are letterboxed (longest side to the model's input side,
padded at the bottom and right) and normalized with the base processor's mean and std. A
published model folder holds only the adapter: ``adapter_model.safetensors`` and
``adapter_config.json`` (LoRA weights and the trained head, ``modules_to_save``) and
``lora.json`` (classes, config, and the path and hash of the base snapshot), so ``score`` and
``load`` rebuild base + adapter from the folder alone. The run folder holds ``checkpoint.pt``
(trainable parameters only, optimizer, history) rewritten after every epoch; a run that finds one
resumes after its epoch, each epoch shuffling from (seed, epoch). :func:`merged_model` folds the
adapter into the base (``merge_and_unload``) for export. Randomly initialized base models
(``ml-assets base-model init --arch grounding-dino|sam``) come from
``ml_assets.train.teacher_models``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pydantic import Field

from ml_assets.data.atomic import atomic_dir, atomic_path
from ml_assets.data.tables import Dataset, class_list
from ml_assets.train.base_models import snapshot_hash
from ml_assets.train.classifier import CHECKPOINT, trained_state
from ml_assets.train.kinds import EpochCallback, FitResult, Input, KindConfig, KindNames
from ml_assets.train.lora import META, adapter_megabytes, base_of, read_meta

# transformers 5 module names. Grounding DINO: the attention of the Swin backbone (q/k/v_proj),
# of the BERT text encoder and the encoder/decoder self- and text cross-attention (query, key,
# value), and the deformable attention's value and output projections. SAM: the image
# encoder's fused qkv and the mask decoder's attention.
DETECTOR_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "query",
    "key",
    "value",
    "value_proj",
    "output_proj",
]
SEGMENTER_TARGETS = ["qkv", "q_proj", "k_proj", "v_proj"]
BOUNDARY_DILATION = 0.02  # boundary IoU band, as a fraction of the image diagonal


class LoraTeacherConfig(KindConfig):
    pinned_fields = {"base_model": "folder"}

    base_model: str = Field(
        default="",
        description="Name of the base model the adapter trains on: a materialized base_model or "
        "a pulled Hugging Face snapshot (ml-assets weights pull hf://org/repo --name NAME)",
    )
    rank: int = Field(default=8, gt=0, description="LoRA rank r")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling alpha (scale alpha / r)")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA inputs")
    target_modules: list[str] = Field(
        default=[], description="Module names that get adapters; empty: the kind's default"
    )
    train_head: bool = Field(
        default=True,
        description="Also train the prediction head in full (saved with the adapter)",
    )
    epochs: int = Field(default=10, gt=0, description="Passes over the training images")
    batch_size: int = Field(default=4, gt=0, description="Images per optimizer step")
    lr: float = Field(default=1e-4, gt=0, description="AdamW learning rate (constant)")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(default=0.1, ge=0, description="Gradient norm clip; 0 is off")
    workers: int = Field(default=0, ge=0, description="Data loader worker processes")
    seed: int = Field(default=0, description="Seed for the adapters, shuffling and dropout")


class LoraDetectorConfig(LoraTeacherConfig):
    base_model: str = Field(
        default="grounding-dino",
        description="Name of the Grounding DINO base model (a materialized base_model or pulled "
        "weights)",
    )
    target_modules: list[str] = Field(
        default=[],
        description="Module names that get adapters; empty: " + ", ".join(DETECTOR_TARGETS),
    )
    train_head: bool = Field(
        default=True, description="Also train the box head (bbox_embed) in full"
    )
    img_size: int = Field(
        default=0, ge=0, description="Input side in pixels (letterboxed); 0: the processor's"
    )
    max_detections: int = Field(default=100, gt=0, description="Detections kept per image")


class LoraSegmenterConfig(LoraTeacherConfig):
    base_model: str = Field(
        default="sam",
        description="Name of the SAM base model (a materialized base_model or pulled weights)",
    )
    target_modules: list[str] = Field(
        default=[],
        description="Module names that get adapters; empty: " + ", ".join(SEGMENTER_TARGETS),
    )
    train_head: bool = Field(
        default=True,
        description="Also train the single-mask output head (output_hypernetworks_mlps.0) in full",
    )
    lr: float = Field(default=3e-4, gt=0, description="AdamW learning rate (constant)")
    max_objects: int = Field(
        default=32, gt=0, description="Box prompts per image per training step (the first ones)"
    )


def _grounding_dino(base: Path):
    from transformers import GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection.from_pretrained(str(base))
    # PEFT (get_peft_model, PeftModel.from_pretrained) asks the model for get_input_embeddings(),
    # which transformers 5's GroundingDinoModel does not implement (NotImplementedError). Its
    # input embeddings are the text backbone's word embeddings: answer with them, on this
    # instance only (the library's class stays as it is).
    model.get_input_embeddings = lambda: model.model.text_backbone.embeddings.word_embeddings
    return model


def _sam(base: Path):
    from transformers import SamModel

    return SamModel.from_pretrained(str(base))


# --- the adapted model ------------------------------------------------------------------------


@dataclass
class Teacher:
    """A base model with its LoRA adapter (``peft``), what it needs to read images, and the
    text prompt of a detector (``input_ids``, ``attention_mask``, ``label_map``: which tokens
    belong to which class phrase)."""

    peft: Any
    kind: str
    classes: list[dict]
    side: int
    mean: np.ndarray
    std: np.ndarray
    input_ids: Any = None
    attention_mask: Any = None
    label_map: Any = None
    base_hash: str = ""  # the base snapshot's (summary numbers go to MLflow as metrics)

    def to(self, device) -> Teacher:
        self.peft.to(device)
        for name in ("input_ids", "attention_mask", "label_map"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self


def _lora(model, config: LoraTeacherConfig, targets: list[str], heads: list[str]):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    settings = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules) or targets,
        modules_to_save=(heads or None) if config.train_head else None,
    )
    return get_peft_model(model, settings)


def _detector_heads(model) -> list[str]:
    # The box head of every decoder layer (bbox_embed.<i>, tied with the decoder's copy): PEFT
    # cannot save a ModuleList, so each layer's head is named.
    return [f"bbox_embed.{i}" for i in range(model.config.decoder_layers)]


SEGMENTER_HEADS = ["output_hypernetworks_mlps.0"]  # the single-mask output's hypernetwork


def _image_statistics(base: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(base))
    images = processor.image_processor
    mean = np.asarray(images.image_mean, np.float32)
    std = np.asarray(images.image_std, np.float32)
    return mean, std, processor


def prompt_text(names: Sequence[str]) -> str:
    """The text prompt of the classes: lower-case phrases, each ended by ``.``."""
    phrases = []
    for name in names:
        phrase = " ".join(
            name.lower().replace(".", " ").replace("?", " ").replace("_", " ").split()
        )
        if not phrase:
            raise ValueError(f"class name {name!r} leaves no text for the prompt")
        phrases.append(phrase)
    return " . ".join(phrases) + " ."


def _prompt(processor, model_config, classes: list[dict]):
    """Token ids, attention mask and label map (classes x max_text_len) of the class prompt."""
    import torch
    from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

    text = prompt_text([c["name"] for c in classes])
    tokens = processor.tokenizer([text], return_tensors="pt")
    limit = model_config.max_text_len
    if tokens["input_ids"].shape[1] > limit:
        raise ValueError(
            f"the class prompt {text!r} is {tokens['input_ids'].shape[1]} tokens, more than the "
            f"base model's max_text_len {limit}: use shorter class names or fewer classes"
        )
    (label_map,) = build_label_maps(torch.zeros(1, 1, limit), tokens["input_ids"])
    if len(label_map) != len(classes):
        raise ValueError(
            f"the class prompt {text!r} splits into {len(label_map)} phrases for "
            f"{len(classes)} classes"
        )
    return tokens["input_ids"], tokens["attention_mask"], label_map.float()


def build_teacher(
    kind: str,
    base: Path,
    classes: list[dict],
    config: LoraTeacherConfig,
    adapter: Path | None = None,
) -> Teacher:
    """Base + fresh LoRA adapters (or the saved ones at ``adapter``) as a :class:`Teacher`."""
    mean, std, processor = _image_statistics(base)
    if kind == LORA_DETECTOR_NAME:
        model = _grounding_dino(base)
        heads = _detector_heads(model)
        targets = DETECTOR_TARGETS
        size = processor.image_processor.size
        side = config.img_size or int(size.get("shortest_edge") or size.get("height"))
    else:
        model = _sam(base)
        heads, targets = SEGMENTER_HEADS, SEGMENTER_TARGETS
        side = int(model.config.vision_config.image_size)
    if adapter is None:
        peft = _lora(model, config, targets, heads)
    else:
        from peft import PeftModel

        peft = PeftModel.from_pretrained(model, str(adapter))
    teacher = Teacher(peft, kind, classes, side, mean, std)
    if kind == LORA_DETECTOR_NAME:
        teacher.input_ids, teacher.attention_mask, teacher.label_map = _prompt(
            processor, model.config, classes
        )
    return teacher


def parameter_counts(teacher: Teacher) -> dict[str, float]:
    """Trainable and total parameters as PEFT counts them, and their ratio."""
    trainable, total = teacher.peft.get_nb_trainable_parameters()
    return {
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "trainable_ratio": trainable / total,
    }


# --- images -----------------------------------------------------------------------------------


def letterbox(path: Path, side: int, mean: np.ndarray, std: np.ndarray, what: str = ""):
    """The image at ``path`` normalized, its longest side resized to ``side`` and padded at the
    bottom and right with zeros to a square, as a float (3, side, side) tensor; and the scale."""
    import torch
    from PIL import Image

    try:
        image = Image.open(path).convert("RGB")
    except OSError as err:
        raise ValueError(f"{path}: cannot read image {what}: {err}") from err
    width, height = image.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR), np.float32) / 255
    out = np.zeros((side, side, 3), np.float32)
    out[: size[1], : size[0]] = (pixels - mean) / std
    return torch.from_numpy(out).permute(2, 0, 1), scale


def _objects(ds: Dataset, image_ids: Sequence[int]) -> pd.DataFrame:
    """Non-crowd annotations of ``image_ids``, in image then annotation order."""
    ann = ds.annotations[ds.annotations["image_id"].isin(set(int(i) for i in image_ids))]
    return ann[ann["iscrowd"] == 0].sort_values(["image_id", "annotation_id"])


class TeacherImages:
    """A torch map-style dataset: record i -> (letterboxed image, scale, record)."""

    def __init__(self, ds: Dataset, records: list[dict], teacher: Teacher) -> None:
        self.files = ds.images.set_index("image_id")["file_name"]
        self.ds, self.records, self.teacher = ds, records, teacher

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        path = self.ds.image_path(self.files[record["image_id"]])
        t = self.teacher
        pixels, scale = letterbox(path, t.side, t.mean, t.std, f"id {record['image_id']}")
        return pixels, scale, record


def collate(items):
    import torch

    pixels, scales, records = zip(*items, strict=True)
    return torch.stack(pixels), list(scales), list(records)


# --- training ---------------------------------------------------------------------------------


def train_adapter(
    teacher: Teacher,
    dataset,
    step_loss: Callable[[Teacher, Any], Any],
    config: LoraTeacherConfig,
    device,
    run_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
):
    """Train the adapters (and head) of ``teacher`` with AdamW on ``step_loss(teacher, batch)``
    over ``dataset``, checkpointing into ``run_dir`` after every epoch and resuming from a
    checkpoint found there. Returns the history and the epoch it resumed at (None: fresh)."""
    import torch
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        raise ValueError("no training samples: the training folds hold no usable objects")
    teacher.to(device)
    model = teacher.peft
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    state: dict = {"epoch": 0, "history": []}
    checkpoint = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    resumed_from = None
    if checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, model, optimizer, device)
        resumed_from = state["epoch"] + 1
    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=collate,
        num_workers=config.workers,
    )
    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        seed = config.seed * 100_003 + epoch
        generator.manual_seed(seed)
        torch.manual_seed(seed)
        row = _train_one_epoch(teacher, loader, step_loss, optimizer, params, config.grad_clip)
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, **row})
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, state)
        if on_epoch:
            on_epoch(epoch + 1, config.epochs, row)
    model.eval()
    return pd.DataFrame(state["history"]), resumed_from


def _train_one_epoch(teacher: Teacher, loader, step_loss, optimizer, params, grad_clip) -> dict:
    """One pass over ``loader``: the mean, first and last step losses and the seconds it took."""
    import torch

    teacher.peft.train()
    started, losses = time.perf_counter(), []
    for batch in loader:
        loss = step_loss(teacher, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return {
        "train_loss": float(np.mean(losses)),
        "first_step_loss": losses[0],
        "last_step_loss": losses[-1],
        "seconds": time.perf_counter() - started,
    }


def _load_checkpoint(path: Path, model, optimizer, device) -> dict:
    """Load the trained parameters and the optimizer saved in ``path``; its training state."""
    import torch

    saved = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(saved["model"], strict=False)  # trainable parameters only
    optimizer.load_state_dict(saved["optimizer"])
    return saved["state"]


def _save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    import torch

    trainable = trained_state(model, trainable_only=True)
    with atomic_path(path) as tmp:
        torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "state": state}, tmp)


def save_teacher(teacher: Teacher, folder: Path, meta: dict) -> Path:
    """The adapter (LoRA weights and trained head, no base weights) and ``lora.json``, written
    to ``folder`` atomically."""
    with atomic_dir(folder, overwrite=True) as tmp:
        teacher.peft.save_pretrained(str(tmp))
        (tmp / META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return Path(folder)


def load_teacher(folder: Path, device) -> Teacher:
    """Base snapshot (checked against the hash the adapter recorded) + the saved adapter."""
    folder = Path(folder)
    meta = read_meta(folder)
    base = base_of(meta, folder)
    config_class = LoraDetectorConfig if meta["kind"] == LORA_DETECTOR_NAME else LoraSegmenterConfig
    config = config_class(**meta["config"])
    teacher = build_teacher(meta["kind"], base, meta["classes"], config, adapter=folder)
    teacher.peft.eval()
    teacher.base_hash = meta["base_model"]["hash"]
    return teacher.to(device)


def merged_model(folder: Path, device):
    """The adapter folded into the base weights (``merge_and_unload``): a plain transformers
    ``GroundingDinoForObjectDetection`` or ``SamModel`` for export, with the adapter's metadata."""
    teacher = load_teacher(folder, device)
    return teacher.peft.merge_and_unload().eval(), read_meta(folder)


def fit_teacher(kind, ds, config, device, run_dir, on_epoch, inputs, records, step_loss):
    """What both kinds' ``fit`` do around their data and loss; the kinds' ``save`` writes the
    adapter with ``meta``."""
    if not inputs or "base_model" not in inputs:
        raise ValueError(f"{kind.name} needs the base model's snapshot folder in inputs")
    base = Path(inputs["base_model"])
    base_hash = snapshot_hash(base)
    classes = class_list(ds)
    teacher = build_teacher(kind.name, base, classes, config)
    teacher.base_hash = base_hash
    history, resumed_from = train_adapter(
        teacher, TeacherImages(ds, records, teacher), step_loss, config, device, run_dir, on_epoch
    )
    counts = parameter_counts(teacher)
    meta = {
        "kind": kind.name,
        "config": config.model_dump(),
        "classes": classes,
        "side": teacher.side,
        "base_model": {"name": config.base_model, "hash": base_hash, "folder": str(base)},
        **counts,
    }
    summary = {
        "train_images": len(records),
        "final_train_loss": float(history.iloc[-1]["train_loss"]),
        **counts,
        "base_model_hash": base_hash,
    }
    return FitResult(teacher, history, resumed_from, summary, meta)


# --- the detector -----------------------------------------------------------------------------


def detector_records(ds: Dataset, image_ids: Sequence[int], classes: list[dict]) -> list[dict]:
    """One record per image (with or without objects): class indices and boxes (x, y, w, h)."""
    index = {c["id"]: i for i, c in enumerate(classes)}
    objects = _objects(ds, image_ids).groupby("image_id")
    groups = {int(i): g for i, g in objects}
    records = []
    for image_id in sorted(set(int(i) for i in image_ids)):
        group = groups.get(image_id)
        boxes = np.zeros((0, 4)) if group is None else group[["x", "y", "w", "h"]].to_numpy(float)
        labels = [] if group is None else [index[c] for c in group["category_id"]]
        records.append({"image_id": image_id, "boxes": boxes, "labels": labels})
    return records


def detector_loss(teacher: Teacher, batch):
    """Grounding DINO's own loss (Hungarian matching, focal classification over the prompt's
    tokens, L1 and GIoU boxes) on a batch of letterboxed images."""
    import torch

    pixels, scales, records = batch
    device = teacher.input_ids.device
    labels = []
    for scale, record in zip(scales, records, strict=True):
        xywh = torch.as_tensor(record["boxes"], dtype=torch.float32).reshape(-1, 4) * scale
        centre = (xywh[:, :2] + xywh[:, 2:] / 2) / teacher.side
        boxes = torch.cat([centre, xywh[:, 2:] / teacher.side], dim=1).clamp(0, 1)
        classes = torch.as_tensor(record["labels"], dtype=torch.long)
        labels.append({"class_labels": classes.to(device), "boxes": boxes.to(device)})
    n = len(pixels)
    out = teacher.peft(
        pixel_values=pixels.to(device),
        input_ids=teacher.input_ids.expand(n, -1),
        attention_mask=teacher.attention_mask.expand(n, -1),
        labels=labels,
    )
    return out.loss


def detector_outputs(teacher: Teacher, pixels):
    """Per query: class scores (B, Q, classes), the mean token probability of each class phrase,
    and boxes (B, Q, 4) as centre x, y, width, height in [0, 1] of the letterboxed square."""
    import torch

    n = len(pixels)
    with torch.inference_mode():
        out = teacher.peft(
            pixel_values=pixels.to(teacher.input_ids.device),
            input_ids=teacher.input_ids.expand(n, -1),
            attention_mask=teacher.attention_mask.expand(n, -1),
        )
        probabilities = out.logits.float().sigmoid()  # masked tokens: -inf -> 0
        label_map = teacher.label_map
        scores = probabilities @ label_map.T / label_map.sum(dim=1)
    return scores, out.pred_boxes.float()


def detect(
    teacher: Teacher,
    ds: Dataset,
    image_ids: Sequence[int],
    max_detections: int,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Detections (``ml_assets.evaluate.detection.DETECTION_COLUMNS``) of ``image_ids``: per
    image the ``max_detections`` best (query, class) pairs, boxes in original pixels."""
    from ml_assets.evaluate.detection import DETECTION_COLUMNS

    records = [{"image_id": int(i)} for i in dict.fromkeys(int(i) for i in image_ids)]
    images = ds.images.drop_duplicates("image_id").set_index("image_id")
    data = TeacherImages(ds, records, teacher)
    rows = []
    for start in range(0, len(data), batch_size):
        pixels, scales, batch = collate(
            [data[i] for i in range(start, min(start + batch_size, len(data)))]
        )
        scores, boxes = detector_outputs(teacher, pixels)
        scores, boxes = scores.cpu().numpy(), boxes.cpu().numpy()
        for b, (scale, record) in enumerate(zip(scales, batch, strict=True)):
            width, height = images.loc[record["image_id"], ["width", "height"]]
            flat = scores[b].ravel()
            keep = np.argsort(-flat, kind="stable")[:max_detections]
            queries, classes = np.unravel_index(keep, scores[b].shape)
            cx, cy, w, h = (boxes[b, queries] * teacher.side / scale).T
            x0, y0 = np.clip(cx - w / 2, 0, width), np.clip(cy - h / 2, 0, height)
            x1, y1 = np.clip(cx + w / 2, 0, width), np.clip(cy + h / 2, 0, height)
            for k in np.flatnonzero((x1 > x0) & (y1 > y0)):
                category = teacher.classes[int(classes[k])]["id"]
                rows.append(
                    (
                        record["image_id"],
                        category,
                        x0[k],
                        y0[k],
                        x1[k] - x0[k],
                        y1[k] - y0[k],
                        float(flat[keep[k]]),
                    )
                )
    frame = pd.DataFrame(rows, columns=DETECTION_COLUMNS)
    return frame.astype({"image_id": "int64", "category_id": "int64"})


# --- the segmenter ----------------------------------------------------------------------------


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """The boolean (height, width) mask of a COCO polygon list or RLE; None when it holds none."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        else:
            counts = segmentation["counts"]
            rle = {
                "size": segmentation["size"],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
        if list(rle["size"]) != [height, width]:
            return None
    else:
        return None
    mask = mask_utils.decode(rle).astype(bool)
    return mask if mask.any() else None


def segmenter_records(ds: Dataset, image_ids: Sequence[int]) -> tuple[list[dict], dict[str, int]]:
    """One record per image with at least one object mask: the objects' ids, classes, boxes and
    segmentations; and how many images and objects were left out for want of a mask."""
    images = ds.images.drop_duplicates("image_id").set_index("image_id")
    records, counts = [], {"images_without_masks": 0, "objects_without_masks": 0}
    objects = _objects(ds, image_ids)
    for image_id, group in objects.groupby("image_id", sort=True):
        height, width = (int(v) for v in images.loc[image_id, ["height", "width"]])
        masks, keep = [], []
        for row, seg in zip(group.itertuples(), group["segmentation"], strict=True):
            mask = decode_mask(seg, height, width)
            if mask is None:
                counts["objects_without_masks"] += 1
                continue
            masks.append(mask)
            keep.append(row.Index)
        if not keep:
            counts["images_without_masks"] += 1
            continue
        kept = group.loc[keep]
        records.append(
            {
                "image_id": int(image_id),
                "annotation_ids": kept["annotation_id"].to_numpy(np.int64),
                "category_ids": kept["category_id"].to_numpy(np.int64),
                "boxes": kept[["x", "y", "w", "h"]].to_numpy(float),
                "masks": np.stack(masks),
            }
        )
    return records, counts


def _box_prompts(record: dict, scale: float, limit: int | None = None):
    import torch

    xywh = torch.as_tensor(record["boxes"][:limit], dtype=torch.float32) * scale
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)  # x0, y0, x1, y1


def _mask_logits(teacher: Teacher, embeddings, boxes):
    """Low-resolution mask logits (objects, L, L) of one image's embeddings and box prompts."""
    sam = teacher.peft.get_base_model()  # the SamModel, adapters injected in place
    out = sam(image_embeddings=embeddings, input_boxes=boxes[None], multimask_output=False)
    return out.pred_masks[0, :, 0]


def _mask_targets(masks: np.ndarray, scale: float, side: int, low: int):
    """Ground-truth masks letterboxed like the image, as soft targets at the logits' size."""
    import torch
    import torch.nn.functional as F

    full = torch.as_tensor(masks, dtype=torch.float32)[:, None]
    height, width = masks.shape[1:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, side - size[1], 0, side - size[0]))
    return F.interpolate(padded, size=(low, low), mode="area")[:, 0]


def segmenter_loss(teacher: Teacher, batch, limit: int | None = None):
    """Per object (the first ``limit`` of each image), binary cross-entropy plus dice between
    the mask predicted from its box and its true mask, at the logits' resolution; mean over
    images."""
    import torch
    import torch.nn.functional as F

    pixels, scales, records = batch
    device = next(teacher.peft.parameters()).device
    sam = teacher.peft.get_base_model()
    embeddings = sam.vision_encoder(pixels.to(device)).last_hidden_state
    losses = []
    for i, (scale, record) in enumerate(zip(scales, records, strict=True)):
        logits = _mask_logits(
            teacher, embeddings[i : i + 1], _box_prompts(record, scale, limit).to(device)
        )
        target = _mask_targets(record["masks"][:limit], scale, teacher.side, logits.shape[-1]).to(
            device
        )
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = logits.sigmoid()
        dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
        losses.append(bce + dice.mean())
    return torch.stack(losses).mean()


def predict_masks(teacher: Teacher, pixels, scale: float, record: dict, size: tuple[int, int]):
    """Boolean masks (objects, height, width) of one image's box prompts, in original pixels;
    and the low-resolution logits."""
    import torch
    import torch.nn.functional as F

    device = next(teacher.peft.parameters()).device
    with torch.inference_mode():
        sam = teacher.peft.get_base_model()
        embeddings = sam.vision_encoder(pixels[None].to(device)).last_hidden_state
        logits = _mask_logits(teacher, embeddings, _box_prompts(record, scale).to(device)).float()
        square = F.interpolate(logits[:, None], size=(teacher.side,) * 2, mode="bilinear")
        height, width = size
        inner = square[:, :, : max(1, round(height * scale)), : max(1, round(width * scale))]
        full = F.interpolate(inner, size=(height, width), mode="bilinear")[:, 0]
    return (full > 0).cpu().numpy(), logits.cpu().numpy()


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """The mask pixels within ``dilation`` pixels of its contour (the mask minus its erosion)."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def boundary_iou(
    predicted: np.ndarray, truth: np.ndarray, ratio: float = BOUNDARY_DILATION
) -> float:
    """Boundary IoU (Cheng et al., 2021): IoU of the two masks' contour bands, each band
    ``ratio`` of the image diagonal wide (at least one pixel)."""
    height, width = truth.shape
    dilation = max(1, round(ratio * np.hypot(height, width)))
    return mask_iou(boundary(predicted, dilation), boundary(truth, dilation))


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """The baseline mask: every pixel whose centre lies in the box (x, y, w, h)."""
    x, y, w, h = box
    mask = np.zeros((height, width), bool)
    x0, y0 = max(0, round(x)), max(0, round(y))
    mask[y0 : max(y0, round(y + h)), x0 : max(x0, round(x + w))] = True
    return mask


# --- the kinds --------------------------------------------------------------------------------

LORA_DETECTOR_NAME = "lora_detector"
LORA_SEGMENTER_NAME = "lora_segmenter"


class LoraTeacherKind(KindNames):
    version = "1"
    # Not in the demo's default kinds (ask with --models): tiny base models named
    # "grounding-dino", "sam".
    demo = {"epochs": 8, "batch_size": 8, "lr": 1e-3}
    smoke = {"epochs": 1, "batch_size": 8, "lr": 1e-3}
    export_tolerance = None  # no exporter
    inputs = (Input("base_model", reads="weights"),)
    distributed = ""  # one process: this loop has no DDP (nproc_per_node > 1 is refused)
    predicts = ""
    tags = frozenset({"pytorch", "mlflow"})

    def save(self, fit: FitResult, folder: Path) -> dict:
        return {"adapter_size_mb": adapter_megabytes(save_teacher(fit.model, folder, fit.meta))}

    def load(self, model_dir: Path, device) -> Teacher:
        return load_teacher(model_dir, device)

    def module(self, model: Teacher):
        return model.peft
