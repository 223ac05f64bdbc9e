"""The ultralytics YOLO plumbing the YOLO kinds share (``train/kinds/yolo_detector.py`` and
``yolo_segmenter.py``): one :class:`YoloKind`, parameterized by task (see
:mod:`ml_assets.train.kinds`).

Training reads the version's YOLO export (``inputs["yolo_dataset"]``, made by
:func:`ml_assets.data.yolo.write_yolo`) through a per-fold folder of links inside the run folder::

    run_dir/
      data/data.yaml                   train: images/train, val: images/val
      data/images/{train,val}/<image id><suffix>   hard links (symlinks across file systems)
      data/labels/{train,val}/<image id>.txt       links to the export's label files
      yolo/                            an export of ``ds``, only when ``inputs`` is not given
      train/                           ultralytics' save_dir: weights/last.pt, best.pt, results.csv
      epochs.json                      measured seconds per epoch, across attempts
      model/                           the published model: best.pt, detector.json, results.csv

The links live in the run's own folder, so ultralytics' label cache lands in its ``data/labels``
(folds training at once never share one, and the export is never written); they are named by
image id, so ultralytics' predictions map back to our image ids. No image is copied. Every ultralytics integration is off (:func:`ml_assets.runtime.ultralytics_ready`),
``amp=False`` (the AMP check downloads weights) and the folders are fixed (``exist_ok=True``).

Resume: ultralytics writes ``last.pt`` after every epoch. A later ``fit`` in the same run folder
(same configuration and data, see :func:`~ml_assets.train.kinds.prepare_run_dir`) resumes from it
with ``resume=True``, so a crash costs at most the epoch it interrupted, and reports the epoch it
resumed at in ``FitResult.resumed_from``. A checkpoint of the final epoch (or of an early stop)
needs no more training: ``fit`` publishes it and reports ``resumed_from`` = epochs run + 1.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import yaml
from pydantic import Field, field_validator

from ml_assets.data.atomic import atomic_dir, write_bytes
from ml_assets.data.tables import Dataset, class_list, image_key, splits
from ml_assets.data.yolo import YAML_FILE, label_path, write_yolo
from ml_assets.evaluate.scores import Scores
from ml_assets.train.export import (
    ONNX_FILE,
    OPENVINO_FILE,
    OPSET,
    TORCHSCRIPT_FILE,
    quiet_torch_warnings,
    write_export_folder,
)
from ml_assets.train.kinds import (
    LAUNCH_FIELDS,
    EpochCallback,
    FitResult,
    Input,
    KindConfig,
    KindNames,
    Learns,
)
from ml_assets.train.weights import stored_copy

META_FILE = "detector.json"
# ultralytics' ONNX requirements (its exporter's own list), checked without installing
ONNX_REQUIREMENTS = ["onnx>=1.12.0,<2.0.0", "onnxruntime", "onnxslim>=0.1.82"]
WEIGHTS_FILE = "best.pt"
RESULTS_FILE = "results.csv"
DATA_DIR = "data"  # per-fold links inside run_dir
TRAIN_DIR = "train"  # ultralytics' save_dir inside run_dir
EXPORT_DIR = "yolo"  # a YOLO export made by fit when no inputs are given
SECONDS_FILE = "epochs.json"
INPUT = "yolo_dataset"

# ultralytics' column and metric names -> ours (results.csv, trainer.metrics, results_dict)
_METRIC_NAMES = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/precision(M)": "mask_precision",
    "metrics/recall(M)": "mask_recall",
    "metrics/mAP50(M)": "mask_map50",
    "metrics/mAP50-95(M)": "mask_map50_95",
}
_log = logging.getLogger(__name__)

Optimizer = Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp"]


class YoloConfig(KindConfig):
    """Hyperparameters of the YOLO kinds (ultralytics' own argument names)."""

    pinned_fields = {"model": "file"}

    model: str = Field(
        default="yolov8n.yaml",
        description=(
            "A model yaml built from scratch (yolov8n.yaml, yolo11s.yaml, yolo26n.yaml, or a local "
            "yaml file), a local .pt file, or pulled weights to fine-tune (ml-assets weights pull "
            "yolo11n.pt, then yolo11n.pt here; the head is rebuilt for the version's classes); "
            "nothing is ever downloaded"
        ),
    )
    epochs: int = Field(default=5, gt=0, description="Passes over the training images")
    imgsz: int = Field(
        default=96,
        ge=32,
        description="Training and inference image side in pixels (multiple of 32)",
    )
    batch: int = Field(default=16, gt=0, description="Images per optimizer step")
    optimizer: Optimizer = Field(
        default="AdamW",
        description="Optimizer; 'auto' lets ultralytics choose it and its learning rate (lr0 ignored)",
    )
    lr0: float = Field(default=0.002, gt=0, description="Initial learning rate")
    patience: int = Field(
        default=100, ge=0, description="Stop after this many epochs without improvement (0: never)"
    )
    warmup_epochs: float = Field(
        default=3.0, ge=0, description="Epochs of learning-rate warmup (at most epochs - 1)"
    )
    close_mosaic: int = Field(
        default=0, ge=0, description="Turn mosaic off for the last N epochs (0: keep it on)"
    )
    mosaic: float = Field(default=1.0, ge=0, le=1, description="Probability of mosaic augmentation")
    mixup: float = Field(default=0.0, ge=0, le=1, description="Probability of mixup augmentation")
    hsv_h: float = Field(default=0.015, ge=0, le=1, description="Hue jitter (fraction)")
    hsv_s: float = Field(default=0.7, ge=0, le=1, description="Saturation jitter (fraction)")
    hsv_v: float = Field(
        default=0.4, ge=0, le=1, description="Value (brightness) jitter (fraction)"
    )
    fliplr: float = Field(default=0.5, ge=0, le=1, description="Probability of a horizontal flip")
    flipud: float = Field(default=0.0, ge=0, le=1, description="Probability of a vertical flip")
    freeze: int = Field(
        default=0, ge=0, description="Freeze the first N layers (for fine-tuning a .pt; 0: none)"
    )
    seed: int = Field(default=0, description="Seed for weights init, shuffling and augmentation")
    workers: int = Field(
        default=2, ge=0, description="Data loader worker processes (CUDA only; CPU runs use 0)"
    )

    @field_validator("model")
    @classmethod
    def _local_model(cls, value: str) -> str:
        if "://" in value:
            raise ValueError(
                f"model {value!r} is a URL: training never downloads; pull it once (`ml-assets "
                f"weights pull {value} --name NAME`) and give NAME"
            )
        if not value.strip():
            raise ValueError(
                "model is empty: give a model yaml, a local .pt file or pulled weights"
            )
        return value

    def pinned_names(self) -> dict[str, str]:
        """``model`` names pulled weights unless it is a model yaml or a local file (those load
        as they are; ultralytics would download any other name, we look it up in the store)."""
        if Path(self.model).suffix.lower() in (".yaml", ".yml"):
            return {}
        if Path(self.model).expanduser().is_file():
            return {}
        return {"model": self.model}


def starting_model(config: YoloConfig, inputs: dict[str, Path] | None, run_dir: Path) -> str:
    """What ``YOLO()`` loads to start: the stored copy of the pulled weights ``model`` names
    (linked as ``pretrained.pt`` in ``run_dir`` when its file name has another suffix:
    ultralytics reads only ``.pt`` names as weights), else ``model`` itself (a yaml or a local
    file)."""
    stored = stored_copy(config, "model", inputs)
    if stored is None:
        return config.model
    if stored.suffix == ".pt":
        return str(stored)
    link = Path(run_dir) / "pretrained.pt"
    link.unlink(missing_ok=True)
    link.symlink_to(stored.resolve())
    return str(link)


class YoloKind(KindNames):
    """An ultralytics YOLO model as a model kind, for one of its tasks: ``detect`` (boxes) or
    ``segment`` (instance masks, from the version's polygons and RLE masks). Both train on the
    version's ``yolo_dataset`` (a polygon label line is a mask for the segmenter, its extent a
    box for the detector), score a held-out fold with our exact COCO metrics on ultralytics'
    validation predictions (boxes, and masks as COCO RLE for ``segment``), and save one folder
    (``best.pt`` and ``detector.json``, which names the task)."""

    inputs = (Input(INPUT),)
    version = "1"
    distributed = "self"  # ultralytics runs its own DDP over a device list
    held_out = "boxes"
    tags = frozenset({"pytorch", "ultralytics", "mlflow"})
    demo = {"epochs": 12, "imgsz": 96, "batch": 32}
    smoke = {"epochs": 2, "imgsz": 64, "batch": 8}
    # Raw output mixes box coordinates in input pixels (up to the image side) with scores in
    # [0, 1], and the export fuses convolutions with their batch norms: float32 rounding of
    # numbers up to a few hundred.
    export_tolerance = 1e-3

    def __init__(
        self,
        *,
        name: str,
        task: str,
        stem: str,
        config_class: type[YoloConfig],
        primary_metric: str,
        learns: Learns,
        headline: tuple[str, ...],
        description: str,
    ) -> None:
        self.name, self.task, self.config_class = name, task, config_class
        self.headline = headline
        self.stem = stem  # the names the instance history holds: detector_report, ...
        self.predicts = "masks" if task == "segment" else "boxes"
        self.primary_metric, self.learns, self.description = primary_metric, learns, description
        self.promotion_floor = 0.1  # mAP50-95; the demo's from-scratch yolov8n reaches about 0.17

    def fit(
        self,
        ds: Dataset,
        train_ids: Sequence[int],
        val_ids: Sequence[int],
        config: YoloConfig,
        device: Any,
        run_dir: Path,
        on_epoch: EpochCallback | None = None,
        inputs: dict[str, Path] | None = None,
    ) -> FitResult:
        """Train on ``train_ids``, validate on ``val_ids``; resume from a checkpoint in ``run_dir``."""
        from ml_assets.runtime import ultralytics_ready

        ultralytics_ready()
        from ultralytics import YOLO

        run_dir = Path(run_dir)
        classes = class_list(ds)
        # Without held-out images (a final model trained on every fold), ultralytics validates
        # only after the last epoch, on the training images.
        parts = {"train": train_ids, **({"val": val_ids} if len(val_ids) else {})}
        data = _fold_data(ds, inputs, run_dir, parts, classes)
        state, saved_epoch = _checkpoint(run_dir, config)
        model, resumed_from = None, None
        if state != "finished":
            model, arguments = self._model_to_train(state, config, inputs, run_dir, len(val_ids))
            if state == "resumable":
                resumed_from = saved_epoch + 2  # the saved epoch is 0-based and complete
            _train(model, data, arguments, config, device, run_dir, on_epoch)
            metrics = _validation_numbers(model.metrics)
        history = read_history(run_dir)
        if model is None:  # nothing left to train: the run's final weights are the model
            model = YOLO(str(final_weights(run_dir, strip=True)))
            resumed_from = len(history) + 1  # past the last epoch run: none was left
            metrics = _validate(model, data, config.imgsz, device, run_dir / "val")
        summary = {
            **metrics,
            "epochs": float(len(history)),
            "train_seconds": float(history["seconds"].sum()),
        }
        meta = {"run_dir": run_dir, "config": config, "classes": classes}
        meta |= {"train_images": len(train_ids), "val_images": len(val_ids)}
        return FitResult(model, history, resumed_from, summary, meta)

    def save(self, fit: FitResult, folder: Path) -> dict:
        save_yolo(self, folder, **fit.meta)
        return {}

    def _model_to_train(
        self,
        state: str,
        config: YoloConfig,
        inputs: dict[str, Path] | None,
        run_dir: Path,
        val_images: int,
    ) -> tuple[Any, dict[str, Any]]:
        """The YOLO model ``fit`` trains and the arguments of its ``train``: the checkpoint of a
        ``"resumable"`` run, else the starting model (refused when it is another task's)."""
        from ultralytics import YOLO

        start = starting_model(config, inputs, run_dir)
        save_dir = run_dir / TRAIN_DIR
        if state == "resumable":
            last = save_dir / "weights" / "last.pt"
            return YOLO(str(last)), {"resume": True, "save_dir": str(save_dir)}
        model = YOLO(start)
        if model.task != self.task:  # a detection .pt for the segmenter, or the reverse
            raise ValueError(
                f"{self.name} trains a {self.task} model; model {config.model!r} is a "
                f"{model.task} model"
            )
        return model, train_arguments(config) | {"val": bool(val_images)}

    def score(
        self,
        model_dir: Path,
        ds: Dataset,
        image_ids: Sequence[int],
        device: Any,
        inputs: dict[str, Path] | None = None,
    ) -> Scores:
        """ultralytics' validation metrics of the saved model on ``image_ids`` of ``ds``."""
        from ml_assets.runtime import ultralytics_ready

        ultralytics_ready()
        meta = read_meta(model_dir)
        classes = meta["classes"]
        if class_list(ds) != classes:
            raise ValueError(
                f"{Path(model_dir) / META_FILE}: the model's classes {classes} differ from the "
                f"dataset's {class_list(ds)}"
            )
        with tempfile.TemporaryDirectory(prefix="yolo_score_") as tmp:
            data = _fold_data(ds, inputs, Path(tmp), {"val": image_ids}, classes)
            results, jdict, plots = _validation_run(model_dir, meta, data, device, Path(tmp))
        from ml_assets.evaluate.detection import detection_scores
        from ml_assets.evaluate.segmentation import segmentation_scores

        # Our exact COCO metrics on ultralytics' validation detections (its low-confidence
        # threshold, as COCO evaluation wants), with ultralytics' own numbers beside them.
        detections = _predictions(jdict, classes, self.task)
        if self.task == "segment":
            scores = segmentation_scores(ds, image_ids, detections)
            scores.metrics["ultralytics_mask_map50_95"] = float(results.seg.map)
        else:
            scores = detection_scores(ds, image_ids, detections)
        return _with_ultralytics_numbers(scores, results, classes, plots)

    def baseline(self, folds: list[dict]) -> float:
        """mAP50-95 of a detector that predicts nothing: 0.0 on any held-out fold (no detection
        matches a box, and precision is defined as 0 without detections)."""
        return 0.0

    def predict(
        self, model_dir: Path, images: Sequence[Path], device: Any, confidence: float = 0.25
    ) -> pd.DataFrame:
        """Detections on image files (score >= ``confidence``), boxes in pixels of each image;
        for ``segment`` each with its mask as COCO RLE (``segmentation``) in the same pixels."""
        model = self.load(model_dir, device)
        meta = read_meta(model_dir)
        ids = [c["id"] for c in meta["classes"]]
        rows = []
        for start in range(0, len(images), 32):  # ultralytics keeps a batch's results in memory
            chunk = [str(p) for p in images[start : start + 32]]
            found = model.predict(
                chunk,
                imgsz=meta["imgsz"],
                conf=confidence,
                device=device_argument(device),
                verbose=False,
            )
            for path, result in zip(chunk, found, strict=True):
                boxes = result.boxes
                masks = _rle_masks(result) if self.task == "segment" else [None] * len(boxes)
                for (x1, y1, x2, y2), cls, score, mask in zip(
                    boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), masks, strict=True
                ):
                    rows.append((path, ids[int(cls)], x1, y1, x2 - x1, y2 - y1, score, mask))
        columns = ["file", "category_id", "x", "y", "w", "h", "score", "segmentation"]
        table = pd.DataFrame(rows, columns=columns)
        return table if self.task == "segment" else table.drop(columns="segmentation")

    def load(self, model_dir: Path, device: Any) -> Any:
        """The published YOLO model (ultralytics ``YOLO``) on ``device``."""
        from ml_assets.runtime import ultralytics_ready

        ultralytics_ready()
        from ultralytics import YOLO

        read_meta(model_dir)  # a clear error for a folder that holds no detector
        model = YOLO(str(Path(model_dir) / WEIGHTS_FILE))
        model.model.to(device)
        return model

    def export(self, model_dir: Path, out_dir: Path) -> Path:
        return export_yolo(self, model_dir, out_dir)

    def module(self, model: Any) -> Any:
        return model.model

    def outputs(self, model: Any, ds: Dataset, image_ids: Sequence[int], device: Any) -> np.ndarray:
        """The network's raw first output for the images letterboxed to the model's ``imgsz``.

        Runs a copy of the module in eval mode (no layer fusion), so ``model`` is unchanged.
        """
        import torch
        from PIL import Image
        from ultralytics.data.augment import LetterBox

        size = int(model.model.args.get("imgsz", 640))
        letterbox = LetterBox(new_shape=(size, size), auto=False)
        files = ds.images.drop_duplicates("image_id").set_index("image_id")["file_name"]
        batch = []
        for image_id in image_ids:
            with Image.open(ds.image_path(files[image_id])) as image:
                pixels = np.asarray(image.convert("RGB"))
            batch.append(letterbox(image=pixels).transpose(2, 0, 1))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(batch))).float().div(255).to(device)
        network = copy.deepcopy(model.model).float().eval().to(device)
        with torch.inference_mode():
            out = network(x)
        while isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out.detach().cpu().numpy()


def _rle_masks(result: Any) -> list[dict]:
    """Each predicted instance's mask as COCO RLE in the pixels of the original image, from
    ultralytics' polygons of it (``masks.xy``, already in those pixels)."""
    from ml_assets.data.coco import polygons_rle

    height, width = result.orig_shape
    polygons = result.masks.xy if result.masks is not None else []
    return [
        polygons_rle([np.asarray(p, np.float64).reshape(-1).tolist()], height, width)
        for p in polygons
    ]


def device_argument(device: Any, processes: int = 1, nodes: int = 1) -> str:
    """ultralytics' ``device`` argument for a torch device (``cpu``, ``cuda[:N]``, ``mps``);
    with ``processes`` > 1 the list of that many GPUs from ``device`` on (``"0,1"``), over which
    ultralytics runs its own DDP."""
    kind, _, index = str(device).partition(":")
    if nodes > 1:
        raise ValueError("YOLO kinds train on one node: ultralytics' DDP has no nnodes")
    if processes > 1:
        if kind != "cuda":
            raise ValueError(
                f"YOLO training with nproc_per_node={processes} needs CUDA GPUs (ultralytics "
                f"runs its own DDP, one GPU per process); this run is on {device}"
            )
        return ",".join(str(int(index or 0) + i) for i in range(processes))
    if kind == "cuda":
        return index or "0"
    return kind


def train_arguments(config: YoloConfig) -> dict[str, Any]:
    """Keyword arguments of ``YOLO.train`` for a fresh run."""
    return {
        **config.model_dump(exclude={"model", *LAUNCH_FIELDS}),
        "amp": False,  # the AMP check downloads weights
        "plots": False,  # per-run plots cost time; score() draws the PR curve
        "val": True,
        "save": True,
        "deterministic": True,
        "verbose": False,
    }


def _export(ds: Dataset, inputs: dict[str, Path] | None, fallback: Path) -> Path:
    """The version's YOLO export from ``inputs``, else one written (once) at ``fallback``."""
    if inputs and INPUT in inputs:
        return Path(inputs[INPUT])
    if not (fallback / YAML_FILE).exists():
        write_yolo(ds, fallback, overwrite=True)
    return fallback


def _fold_data(
    ds: Dataset,
    inputs: dict[str, Path] | None,
    folder: Path,
    parts: dict[str, Sequence[int]],
    classes: list[dict],
) -> Path:
    """The ``data.yaml`` of ``folder/data``: links to the version's YOLO export (``inputs``,
    else one written in ``folder/yolo``) for each of ``parts`` (see :func:`link_folds`)."""
    export = _export(ds, inputs, folder / EXPORT_DIR)
    return link_folds(ds, export, parts, folder / DATA_DIR, classes)


def export_files(ds: Dataset) -> pd.DataFrame:
    """Each image's files in the export: ``image_id``, ``image`` and ``label`` (relative paths),
    named the way :func:`ml_assets.data.yolo.write_yolo` names them."""
    images = ds.images.drop_duplicates("image_id")
    split_names = splits(images).replace("", "train")
    files = [
        f"images/{s}/{image_key(f, s)}"
        for f, s in zip(images["file_name"], split_names, strict=True)
    ]
    return pd.DataFrame(
        {"image_id": images["image_id"].to_numpy(), "image": files, "label": map(label_path, files)}
    )


def link_folds(
    ds: Dataset,
    export: Path,
    parts: dict[str, Sequence[int]],
    dst: Path,
    classes: list[dict],
) -> Path:
    """A YOLO folder at ``dst`` whose split ``name`` holds links to the export's files of
    ``parts[name]``; returns its ``data.yaml``. An existing complete folder is kept (its label
    cache with it)."""
    dst = Path(dst)
    if (dst / YAML_FILE).exists():
        return dst / YAML_FILE
    _check_export(export, classes)
    files = export_files(ds).set_index("image_id")
    with atomic_dir(dst, overwrite=True) as tmp:
        for split, ids in parts.items():
            ids = list(dict.fromkeys(int(i) for i in ids))
            if not ids:
                raise ValueError(f"no images in the {split!r} part: cannot train or validate")
            missing = sorted(set(ids) - set(files.index))
            if missing:
                raise ValueError(f"image ids not in the dataset: {missing[:10]}")
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for image_id, row in files.loc[ids].iterrows():
                suffix = Path(row["image"]).suffix
                _link(export / row["image"], tmp / "images" / split / f"{image_id}{suffix}")
                _link(export / row["label"], tmp / "labels" / split / f"{image_id}.txt")
        splits_present = list(parts)
        config = {
            "train": f"images/{splits_present[0]}",
            "val": f"images/{'val' if 'val' in parts else splits_present[0]}",
            "names": {i: c["name"] for i, c in enumerate(classes)},
        }
        (tmp / YAML_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dst / YAML_FILE


def _check_export(export: Path, classes: list[dict]) -> None:
    path = Path(export) / YAML_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no YOLO export there (missing {YAML_FILE})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    ids = data.get("category_ids")
    if ids is not None and ids != [c["id"] for c in classes]:
        raise ValueError(
            f"{path}: category_ids {ids} differ from the dataset's {[c['id'] for c in classes]}: "
            f"the export belongs to another dataset version"
        )


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst``; a symlink where hard links are impossible. Never a copy."""
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise FileNotFoundError(f"{src}: missing from the YOLO export") from None
    except OSError:
        os.symlink(os.path.abspath(src), dst)


def _checkpoint(run_dir: Path, config: YoloConfig) -> tuple[str, int]:
    """:func:`checkpoint_state` of the run's ``last.pt``; an unreadable one (a crash while
    ultralytics wrote it: it writes in place) goes, with the epochs' times: ``"fresh"``."""
    save_dir = run_dir / TRAIN_DIR
    last = save_dir / "weights" / "last.pt"
    state, saved_epoch = checkpoint_state(last, config.epochs, config.patience)
    if state == "unreadable":
        _log.warning("%s is unreadable: training %s from the first epoch", last, run_dir)
        shutil.rmtree(save_dir)
        (run_dir / SECONDS_FILE).unlink(missing_ok=True)
        return "fresh", saved_epoch
    return state, saved_epoch


def checkpoint_state(last: Path, epochs: int, patience: int) -> tuple[str, int]:
    """(state, saved 0-based epoch) of ultralytics' ``last.pt``: ``"fresh"`` without one,
    ``"resumable"`` when training stopped after that epoch, ``"finished"`` when training is
    complete (final epoch, early stop, or optimizer already stripped by the final validation),
    ``"unreadable"`` when the file cannot be loaded."""
    if not last.exists():
        return "fresh", -1
    import torch

    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
    except Exception:  # a truncated file fails in pickle, zipfile or torch, each its own way
        return "unreadable", -1
    epoch = int(ckpt.get("epoch", -1))
    if ckpt.get("optimizer") is None or epoch < 0 or epoch + 1 >= epochs:
        return "finished", epoch
    best_epoch = (ckpt.get("stopper") or {}).get("best_epoch", 0)
    if patience and epoch + 1 - best_epoch >= patience:
        return "finished", epoch
    return "resumable", epoch


def _train(
    model: Any,
    data: Path,
    arguments: dict[str, Any],
    config: YoloConfig,
    device: Any,
    run_dir: Path,
    on_epoch: EpochCallback | None,
) -> None:
    """``model.train`` into ``run_dir/train``, each epoch timed (``epochs.json``) and reported
    to ``on_epoch`` once its checkpoint is written, checkpoints written atomically."""
    seconds = _EpochTimer(run_dir / SECONDS_FILE)
    model.add_callback("on_train_epoch_start", seconds.start)
    model.add_callback("on_pretrain_routine_start", _atomic_checkpoints)
    model.add_callback("on_model_save", lambda trainer: _epoch_end(trainer, seconds, on_epoch))
    model.train(
        data=str(data),
        device=device_argument(device, config.nproc_per_node, config.nnodes),
        project=str(run_dir),
        name=TRAIN_DIR,
        exist_ok=True,
        **arguments,
    )


class _EpochTimer:
    """Seconds per epoch, measured and kept in ``epochs.json`` so resumed runs keep earlier ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.perf_counter()

    def start(self, trainer: Any = None) -> None:
        self.started = time.perf_counter()

    def stop(self, epoch: int) -> float:
        seconds = time.perf_counter() - self.started
        record = orjson.loads(self.path.read_bytes()) if self.path.exists() else {}
        record[str(epoch)] = seconds
        write_bytes(self.path, orjson.dumps(record))
        return seconds


class _AtomicPath(type(Path())):
    """A checkpoint path whose ``write_bytes`` writes aside and renames (``data.atomic``):
    ultralytics writes ``last.pt`` in place, so a full disk would truncate the checkpoint a
    resume needs; written this way, the previous one stays whole and the error names it."""

    def write_bytes(self, data: bytes) -> int:
        write_bytes(Path(self), data)
        return len(data)


def _atomic_checkpoints(trainer: Any) -> None:
    trainer.last, trainer.best = _AtomicPath(trainer.last), _AtomicPath(trainer.best)


def _epoch_end(trainer: Any, timer: _EpochTimer, on_epoch: EpochCallback | None) -> None:
    """After ``last.pt`` of an epoch is written: record its time and report its numbers."""
    epoch = trainer.epoch + 1
    seconds = timer.stop(epoch)
    if on_epoch is None:
        return
    numbers = {
        **trainer.label_loss_items(trainer.tloss, prefix="train"),
        **trainer.metrics,
    }
    row = {_column(k): float(v) for k, v in numbers.items()}
    on_epoch(epoch, trainer.epochs, {**row, "seconds": seconds})


def _column(name: str) -> str:
    """Our name of an ultralytics column: ``train/box_loss`` -> ``box_loss``,
    ``val/box_loss`` -> ``val_box_loss``, ``metrics/mAP50-95(B)`` -> ``map50_95``."""
    if name in _METRIC_NAMES:
        return _METRIC_NAMES[name]
    name = name.strip().removeprefix("train/").removeprefix("metrics/")
    return name.replace("/", "_").replace("-", "_").replace("(B)", "")


def read_history(run_dir: Path) -> pd.DataFrame:
    """One row per epoch from ultralytics' ``results.csv`` (our column names) with the measured
    ``seconds`` of each epoch (its ``time`` column restarts at every resume, so it is dropped)."""
    history = pd.read_csv(Path(run_dir) / TRAIN_DIR / RESULTS_FILE)
    history.columns = [_column(c) for c in history.columns]
    history = history.drop(columns=["time"], errors="ignore")
    history = history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    history["epoch"] = history["epoch"].astype(int)
    path = Path(run_dir) / SECONDS_FILE
    seconds = orjson.loads(path.read_bytes()) if path.exists() else {}
    history["seconds"] = [float(seconds.get(str(e), np.nan)) for e in history["epoch"]]
    return history


def final_weights(run_dir: Path, strip: bool = False) -> Path:
    """The run's final weights: best.pt, else last.pt. Ultralytics' final validation strips
    both (optimizer out, half precision) when training ends in this process; ``strip``: a run
    found finished in the run folder may have crashed before that, so strip it here, in place
    (the weights then load as the published copy will)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    weights = Path(run_dir) / TRAIN_DIR / "weights"
    source = weights / WEIGHTS_FILE if (weights / WEIGHTS_FILE).exists() else weights / "last.pt"
    if strip:
        strip_optimizer(source)
    return source


def save_yolo(
    kind: YoloKind,
    folder: Path,
    run_dir: Path,
    config: YoloConfig,
    classes: list[dict],
    train_images: int,
    val_images: int,
) -> Path:
    """Write ``folder`` atomically: the run's final weights (stripped, copied as they are),
    ``detector.json`` and ``results.csv``."""
    from ultralytics import __version__

    source = final_weights(run_dir)
    meta = {
        "kind": kind.name,
        "task": kind.task,
        "config": config.model_dump(),
        "classes": classes,
        "imgsz": config.imgsz,
        "weights": WEIGHTS_FILE,
        "trained_from": source.name,
        "train_images": train_images,
        "val_images": val_images,
        "ultralytics": __version__,
    }
    with atomic_dir(Path(folder), overwrite=True) as tmp:
        shutil.copyfile(source, tmp / WEIGHTS_FILE)
        shutil.copyfile(Path(run_dir) / TRAIN_DIR / RESULTS_FILE, tmp / RESULTS_FILE)
        (tmp / META_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return Path(folder)


def read_meta(model_dir: Path) -> dict:
    path = Path(model_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"no trained detector at {model_dir} (missing {META_FILE})")
    return orjson.loads(path.read_bytes())


def _validation_numbers(metrics: Any) -> dict[str, float]:
    """mAP50, mAP50-95, precision and recall from ultralytics' DetMetrics."""
    numbers = metrics.results_dict
    return {_METRIC_NAMES[k]: float(v) for k, v in numbers.items() if k in _METRIC_NAMES}


def _validate(model: Any, data: Path, imgsz: int, device: Any, out: Path) -> dict[str, float]:
    results = model.val(
        data=str(data),
        split="val",
        imgsz=imgsz,
        device=device_argument(device),
        project=str(out.parent),
        name=out.name,
        exist_ok=True,
        plots=False,
        half=False,
        verbose=False,
    )
    return _validation_numbers(results)


def _validation_run(
    model_dir: Path, meta: dict, data: Path, device: Any, tmp: Path
) -> tuple[Any, list[dict], dict[str, bytes]]:
    """ultralytics' validation of the saved model on ``data`` (its files in ``tmp/val``): its
    results, its COCO-style detections (``jdict``) and its PR curves (PNG bytes, by our name)."""
    from ultralytics import YOLO

    model = YOLO(str(Path(model_dir) / WEIGHTS_FILE))
    captured: dict[str, list] = {}
    model.add_callback("on_val_end", lambda v: captured.update(jdict=list(v.jdict)))
    results = model.val(
        data=str(data),
        split="val",
        imgsz=meta["imgsz"],
        batch=meta["config"]["batch"],
        device=device_argument(device),
        project=str(tmp),
        name="val",
        exist_ok=True,
        plots=True,
        save_json=True,
        half=False,
        workers=0,
        verbose=False,
    )
    curves = {"pr_curve": "BoxPR_curve.png", "mask_pr_curve": "MaskPR_curve.png"}
    plots = {
        name: (tmp / "val" / file).read_bytes()
        for name, file in curves.items()
        if (tmp / "val" / file).exists()
    }
    return results, captured.get("jdict", []), plots


def _with_ultralytics_numbers(
    scores: Scores, results: Any, classes: list[dict], plots: dict[str, bytes]
) -> Scores:
    """``scores`` with ultralytics' box mAP, precision and recall (overall and per class) and
    its PR curves beside our exact metrics."""
    box = results.box
    instances = np.asarray(results.nt_per_class, dtype=np.int64)
    theirs = _per_class(box, instances, [c["name"] for c in classes])
    scores.metrics |= {
        "ultralytics_map50": float(box.map50),
        "ultralytics_map50_95": float(box.map),
        "precision": float(box.mp),
        "recall": float(box.mr),
    }
    scores.per_class = scores.per_class.join(theirs[["precision", "recall"]])
    scores.plots |= {f"ultralytics_{name}": png for name, png in plots.items()}
    return scores


def _per_class(box: Any, instances: np.ndarray, names: list[str]) -> pd.DataFrame:
    """AP50, AP50-95, precision, recall and instances per class; a class without instances in
    the scored images has instances 0 and scores 0."""
    table = pd.DataFrame(
        0.0,
        index=pd.Index(names, name="class"),
        columns=["ap50", "ap50_95", "precision", "recall"],
    )
    for i, cls in enumerate(box.ap_class_index):
        precision, recall, ap50, ap = box.class_result(i)
        table.iloc[int(cls)] = [ap50, ap, precision, recall]
    padded = np.zeros(len(names), dtype=np.int64)
    padded[: min(len(names), len(instances))] = instances[: len(names)]
    table["instances"] = padded
    return table


def _predictions(jdict: list[dict], classes: list[dict], task: str = "detect") -> pd.DataFrame:
    """ultralytics' COCO-style detections (boxes in original pixels) with our ids: the link
    files are named by image id, and its ``category_id`` is the class index plus one. For
    ``segment`` each keeps its mask (``segmentation``, COCO RLE in the original pixels)."""
    columns = ["image_id", "category_id", "x", "y", "w", "h", "score"]
    if not jdict:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}).astype(
            {"image_id": "int64", "category_id": "int64"}
        )
        return empty.assign(segmentation=pd.Series(dtype="object")) if task == "segment" else empty
    ids = [c["id"] for c in classes]
    boxes = np.asarray([d["bbox"] for d in jdict], dtype=np.float64).reshape(-1, 4)
    table = pd.DataFrame(
        {
            "image_id": [int(Path(d["file_name"]).stem) for d in jdict],
            "category_id": [ids[int(d["category_id"]) - 1] for d in jdict],
            "x": boxes[:, 0],
            "y": boxes[:, 1],
            "w": boxes[:, 2],
            "h": boxes[:, 3],
            "score": [float(d["score"]) for d in jdict],
        }
    )
    if task == "segment":
        table["segmentation"] = [dict(d["segmentation"]) for d in jdict]
    return table


def export_yolo(kind: YoloKind, model_dir: Path, out_dir: Path) -> Path:
    """Export an ultralytics YOLO folder (``best.pt``, ``detector.json``: a detector or a
    segmenter, as its ``task`` says) to ``out_dir``
    with ultralytics' exporter: ONNX (dynamic batch, simplified by onnxslim, no NMS) at the
    model's ``imgsz``, TorchScript, and an OpenVINO IR (float32, dynamic shapes; its error in
    export.json when it fails). Runs offline: the exporter's requirements are checked first
    without installing; a missing ONNX one is a clear error, a missing OpenVINO one skips it."""
    from ml_assets.runtime import ultralytics_ready

    ultralytics_ready()
    from ultralytics.utils.checks import check_requirements

    model_dir = Path(model_dir).resolve()
    meta = read_meta(model_dir)
    if not check_requirements(ONNX_REQUIREMENTS, install=False):
        raise RuntimeError(
            f"YOLO ONNX export needs {', '.join(ONNX_REQUIREMENTS)} installed (nothing is "
            f"installed at run time)"
        )
    imgsz = int(meta["imgsz"])
    segment = meta.get("task") == "segment"
    with atomic_dir(Path(out_dir), overwrite=True) as tmp:
        work = tmp / "work"
        work.mkdir()
        weights = shutil.copyfile(model_dir / WEIGHTS_FILE, work / WEIGHTS_FILE)
        arguments = {"imgsz": imgsz, "device": "cpu", "half": False, "int8": False}
        onnx = _ultralytics_export(
            weights, arguments, format="onnx", dynamic=True, simplify=True, opset=OPSET, nms=False
        )
        if not onnx or not Path(onnx).is_file():
            raise RuntimeError(f"{model_dir}: ultralytics' ONNX export produced no file")
        shutil.move(onnx, tmp / ONNX_FILE)
        reason = _torchscript(weights, arguments, tmp)
        openvino_error = _openvino(weights, arguments, tmp)
        shutil.rmtree(work)
        outputs = ["output0", "output1"] if segment else ["output0"]
        names = {"inputs": ["images"], "outputs": outputs}
        preprocessing = _preprocessing(imgsz, segment)
        write_export_folder(
            tmp, kind, model_dir, meta, preprocessing, names, reason, openvino_error
        )
    return Path(out_dir)


def _preprocessing(imgsz: int, segment: bool) -> dict[str, Any]:
    """What a server does to an image before the exported network, and what comes out."""
    preprocessing = {
        "resize": "letterbox",
        "size": [imgsz, imgsz],
        "interpolation": "bilinear",
        "pad_value": 114,
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "input": "the whole image, letterboxed: scaled by min(size / height, size / width) "
        "to round(width * r) x round(height * r), padded evenly (left/top round(pad / 2 - 0.1), "
        "right/bottom round(pad / 2 + 0.1)) with pad_value",
        "output": "output0 (batch, 4 + classes, anchors): box centre x, y, width, height in "
        "input pixels, then class scores; no non-maximum suppression",
    }
    if segment:
        preprocessing["output"] = (
            "output0 (batch, 4 + classes + 32, anchors): box centre x, y, width, height in input "
            "pixels, class scores, then 32 mask coefficients; output1 (batch, 32, size / 4, "
            "size / 4): the mask prototypes (an instance's mask is the sigmoid of its "
            "coefficients times the prototypes, cropped to its box); no non-maximum suppression"
        )
    return preprocessing


def _ultralytics_export(weights: Path, arguments: dict[str, Any], **options: Any) -> str:
    """ultralytics' exporter on a fresh load of ``weights``; the path of what it wrote."""
    from ultralytics import YOLO

    with quiet_torch_warnings():
        return YOLO(str(weights)).export(**options, **arguments)


def _torchscript(weights: Path, arguments: dict[str, Any], tmp: Path) -> str | None:
    """The TorchScript file in ``tmp``; why there is none when tracing fails."""
    try:
        shutil.move(
            _ultralytics_export(weights, arguments, format="torchscript"), tmp / TORCHSCRIPT_FILE
        )
    except Exception as err:  # an architecture TorchScript cannot trace: ONNX still serves
        return f"{type(err).__name__}: {err}"
    return None


def _openvino(weights: Path, arguments: dict[str, Any], tmp: Path) -> str | None:
    """ultralytics' OpenVINO IR (a folder with best.xml, best.bin, metadata.yaml) as
    ``tmp/OPENVINO_FILE`` and its ``.bin``; why there is none when it fails."""
    from ultralytics.utils.checks import check_requirements

    try:
        if not check_requirements("openvino>=2024.0.0", install=False):  # as it checks
            raise RuntimeError("openvino>=2024.0.0 is not installed")
        folder = Path(_ultralytics_export(weights, arguments, format="openvino", dynamic=True))
        xml = tmp / OPENVINO_FILE
        xml.parent.mkdir()
        shutil.move(folder / weights.with_suffix(".xml").name, xml)
        shutil.move(folder / weights.with_suffix(".bin").name, xml.with_suffix(".bin"))
    except Exception as err:  # OpenVINO cannot convert it: ONNX still serves
        shutil.rmtree(tmp / Path(OPENVINO_FILE).parent, ignore_errors=True)
        return f"{type(err).__name__}: {err}"
    return None
