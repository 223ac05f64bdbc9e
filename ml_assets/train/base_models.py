"""Base models: local transformers folders that LoRA adapters are trained on, with lineage.

A base model is a ``save_pretrained`` folder (``config.json``, weights, processor files). Nothing
is ever downloaded: a user points at a folder holding real weights, or writes a randomly
initialized one with :func:`init_base_model` (``ml-assets base-model init DIR --arch ...``;
``tiny`` sizes train in seconds on a CPU, for tests and the demo).

:func:`snapshot_base_model` copies a folder into the content-addressed store the way dataset
versions are stored (``ml_assets.data.store``): every file once under ``objects/``, a manifest
(relative path, sha256, size) whose short hash names the snapshot, and a read-only folder of
links ``base_models/<hash>/files`` that training reads. Every adapter records that hash, so
it names the exact base weights it was trained on; :func:`record_name` and
:func:`named_snapshot` map a user's name (``vit-base``) to its latest snapshot.
"""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path

import orjson

from ml_assets.data.atomic import atomic_dir, link_or_copy, write_bytes
from ml_assets.data.store import Store, manifest_key, scan
from ml_assets.train.classifier import MEAN, STD

# Architectures init_base_model writes; the classifier ones build an image backbone, the two
# teachers come from ml_assets.train.teacher_models.
CLASSIFIER_ARCHS = ("vit", "dinov2", "convnext", "swin")
TEACHER_ARCHS = ("grounding-dino", "sam")
ARCHS = CLASSIFIER_ARCHS + TEACHER_ARCHS
MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TINY_SIDE = 32  # input side of the tiny models
IMAGENET_MEAN = MEAN.tolist()  # the timm classifier's normalization, one home
IMAGENET_STD = STD.tolist()


@dataclass(frozen=True)
class Snapshot:
    """A base model in the store: ``folder`` (read-only files) and the hash that names it."""

    folder: Path
    hash: str


@dataclass(frozen=True)
class BaseModelInfo:
    """What a base model folder holds, read from its files without building the model."""

    model_type: str
    architectures: list[str]
    parameters: int
    size_bytes: int
    files: int
    image_size: int
    image_mean: list[float]
    image_std: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def _backbone_config(arch: str, tiny: bool):
    """The transformers configuration of a classifier backbone: tiny or its usual base size."""
    import transformers as t

    if arch == "vit":
        if tiny:
            return t.ViTConfig(
                image_size=TINY_SIDE,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            )
        return t.ViTConfig()  # ViT-B/16 at 224
    if arch == "dinov2":
        if tiny:
            return t.Dinov2Config(
                image_size=TINY_SIDE,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_ratio=2,
            )
        return t.Dinov2Config(image_size=224)  # DINOv2-B/14
    if arch == "convnext":
        if tiny:
            return t.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)
        return t.ConvNextConfig()  # ConvNeXt-T
    if arch == "swin":
        if tiny:
            return t.SwinConfig(
                image_size=TINY_SIDE,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[2, 2],
                window_size=4,
            )
        return t.SwinConfig()  # Swin-T at 224
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def _processor(arch: str, side: int):
    """The image processor the architecture's published checkpoints ship with, at ``side``."""
    import transformers as t

    square = {"height": side, "width": side}
    if arch == "dinov2":
        return t.BitImageProcessor(
            size={"shortest_edge": side},
            crop_size=square,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        )
    if arch == "convnext":
        return t.ConvNextImageProcessor(
            size={"shortest_edge": side},
            crop_pct=1.0,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        )
    return t.ViTImageProcessor(size=square, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)


def init_base_model(folder: Path, arch: str, tiny: bool = False, seed: int = 0) -> Path:
    """Write a randomly initialized ``arch`` model with its processor to ``folder`` (which must
    not exist), atomically. Classifier backbones are saved without a head, like the pretrained
    checkpoints users bring; the classification head is added when an adapter is trained."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists: a new base model needs a new folder")
    with atomic_dir(folder) as tmp:
        if arch in TEACHER_ARCHS:
            _teacher_init(arch)(tmp, tiny, seed)
        else:
            import torch
            from transformers import AutoModel

            config = _backbone_config(arch, tiny)
            torch.manual_seed(seed)
            AutoModel.from_config(config).save_pretrained(tmp)
            _processor(arch, TINY_SIDE if tiny else 224).save_pretrained(tmp)
    return folder


def _teacher_init(arch: str):
    """Part of ``ml_assets.train.teacher_models``, imported only when asked for."""
    name = {"grounding-dino": "init_grounding_dino", "sam": "init_sam"}[arch]
    try:
        from ml_assets.train import teacher_models
    except ImportError as err:
        raise ValueError(f"architecture {arch!r} is not available: {err}") from err
    if not hasattr(teacher_models, name):
        raise ValueError(
            f"architecture {arch!r} is not available: ml_assets.train.teacher_models has no {name}"
        )
    return getattr(teacher_models, name)


def check_model_dir(folder: Path) -> dict:
    """The ``config.json`` of a transformers model folder; a clear refusal naming the folder for
    anything else (nothing is ever looked up on the hub)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"base model folder {folder} does not exist or is not a folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"{folder} is not a transformers model: no config.json (a base model is the folder "
            "save_pretrained writes: config.json, the weights and the processor files)"
        )
    try:
        config = orjson.loads(config_path.read_bytes())
    except orjson.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON: {err}") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{config_path}: not a transformers configuration (no model_type)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        raise ValueError(f"{folder} is not a transformers model: it holds no weights file")
    return config


def safetensors_parameters(path: Path) -> int:
    """The number of values in a safetensors file, from its header only."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def describe_base_model(folder: Path) -> BaseModelInfo:
    """Architecture, parameter count, size and input settings of a base model folder."""
    folder = Path(folder)
    config = check_model_dir(folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    if weights:
        parameters = sum(safetensors_parameters(p) for p in weights)
    else:  # pytorch_model.bin and friends: no header to read, load the tensors
        import torch

        parameters = sum(
            t.numel()
            for p in files
            if p.suffix in WEIGHT_SUFFIXES
            for t in torch.load(p, map_location="cpu", weights_only=True).values()
        )
    processor = _read_json(folder / "preprocessor_config.json")
    return BaseModelInfo(
        model_type=config["model_type"],
        architectures=list(config.get("architectures") or []),
        parameters=int(parameters),
        size_bytes=sum(p.stat().st_size for p in files),
        files=len(files),
        image_size=input_size(config, processor),
        image_mean=list(processor.get("image_mean") or IMAGENET_MEAN),
        image_std=list(processor.get("image_std") or IMAGENET_STD),
    )


def _read_json(path: Path) -> dict:
    return orjson.loads(path.read_bytes()) if path.is_file() else {}


def input_size(config: dict, processor: dict) -> int:
    """The square side the model was made for: its processor's crop, else its resize, else the
    configuration's image size, else 224."""
    if processor.get("do_center_crop") and processor.get("crop_size"):
        return int(processor["crop_size"]["height"])
    size = processor.get("size") or {}
    for key in ("height", "shortest_edge"):
        if key in size:
            return int(size[key])
    image_size = config.get("image_size", 224)
    return int(image_size[0] if isinstance(image_size, list) else image_size)


def snapshot_dir(store: Store, key: str) -> Path:
    return store.root / "base_models" / key


def snapshot_base_model(src: Path, store: Store) -> Snapshot:
    """Copy the model folder ``src`` into ``store`` (files once, as objects) and return its
    read-only snapshot; the same files always give the same hash. ``src`` is only read."""
    src = Path(src).resolve()
    check_model_dir(src)
    entries = scan(src, store.cache)
    key = manifest_key(entries)
    folder = snapshot_dir(store, key)
    if not (folder / MANIFEST).is_file():
        for e in entries:
            store.put(src / e.path, e.sha256)
        # Another run may snapshot the same files at the same time: either result is the same.
        with contextlib.suppress(FileExistsError), atomic_dir(folder) as tmp:
            for e in entries:
                link_or_copy(store.object_path(e.sha256), tmp / "files" / e.path)
            doc = {"source": str(src), "hash": key, "files": [e.__dict__ for e in entries]}
            (tmp / MANIFEST).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return Snapshot(folder / "files", key)


def _names_path(store: Store, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid base model name {name!r}: a plain folder-like name")
    return store.root / "base_model_names" / f"{name}.json"


def record_name(store: Store, name: str, snapshot: Snapshot, info: BaseModelInfo) -> None:
    """Remember ``snapshot`` as the current base model called ``name``."""
    doc = {"name": name, "hash": snapshot.hash, "folder": str(snapshot.folder), **info.to_dict()}
    write_bytes(_names_path(store, name), orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def named_snapshot(store: Store, name: str) -> Snapshot:
    """The snapshot last recorded for ``name``; a clear error when there is none."""
    path = _names_path(store, name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no base model named {name!r} in {store.root}: materialize the base_model asset "
            f"with a folder for {name!r} first"
        )
    doc = orjson.loads(path.read_bytes())
    return Snapshot(Path(doc["folder"]), doc["hash"])


def snapshot_hash(folder: Path) -> str:
    """The hash of a snapshot folder (``.../base_models/<hash>/files``), from its manifest."""
    manifest = Path(folder).parent / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} is not a base model snapshot (no {manifest})")
    return orjson.loads(manifest.read_bytes())["hash"]


def named_folders(root: Path) -> dict[str, Path]:
    """Every model folder directly under ``root`` (``<home>/base_models``), named by its folder."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def snapshot_base_models(folders: dict[str, Path], store: Store) -> list[dict]:
    """Snapshot every named folder and record it under its name; one record per name (name,
    hash, snapshot folder, source, architecture, parameters, size)."""
    if not folders:
        raise ValueError(
            "no base models to snapshot: name a local save_pretrained folder for each (or write "
            "one with `ml-assets base-model init DIR --arch vit --tiny`)"
        )
    records = []
    for name, src in sorted(folders.items()):
        snapshot = snapshot_base_model(src, store)
        info = describe_base_model(snapshot.folder)
        record_name(store, name, snapshot, info)
        records.append(
            {
                "name": name,
                "hash": snapshot.hash,
                "folder": str(snapshot.folder),
                "source": str(src),
            }
            | info.to_dict()
        )
    return records
