"""Training one fold of one model kind, the same way for every kind, from an asset or the CLI.

:func:`train_fold` picks the fold's images, keeps or clears the run folder (resume only with
the same configuration and data), tracks the run in MLflow (parameters, per-epoch metrics,
final numbers, the model as an artifact and a registered model version), logs one progress line
per epoch, writes the model card (``model.json``: kind, classes, configuration, the data it was trained on
and the name and hash of the pulled weights it started from) and the trained model's outputs on a few
held-out images (``reference.npz``, for the reload check), and publishes the model folder
atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ml_assets.data.atomic import atomic_dir, folder_bytes, write_bytes
from ml_assets.data.folds import held_out_ids, training_ids
from ml_assets.data.tables import Dataset, class_list
from ml_assets.data.weights import Pinned
from ml_assets.train.ddp import processes
from ml_assets.train.kinds import FitResult, KindConfig, ModelKind, fingerprint, prepare_run_dir
from ml_assets.train.tracking import Tracking
from ml_assets.train.weights import recorded, weights_tags, with_weights

MODEL_CARD = "model.json"
# The card's name in model folders written before it was called a model card: still read.
EARLIER_CARD = "lineage.json"
REFERENCE = "reference.npz"
REFERENCE_IMAGES = 8


@dataclass
class TrainedFold:
    model_dir: Path
    fit: FitResult
    lineage: dict
    train_images: int
    seconds: float
    mlflow_url: str | None = None
    registered_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


PROGRESS_LOGGER = "ml_assets.progress"


class Progress:
    """The per-epoch callback: one line per epoch (what trains, epoch i/n, numbers, elapsed,
    time left) to ``log`` (the run's log) and to the Python logger ``ml_assets.progress``
    (which has no handler unless a command that trains gives it one: the terminal), and the
    epoch's numbers to MLflow when a run is active."""

    def __init__(self, log: Callable[[str], None], name: str, track: bool) -> None:
        self.log, self.name, self.track = log, name, track
        self.started = time.perf_counter()
        self.first: int | None = None

    def __call__(self, epoch: int, epochs: int, row: dict[str, float]) -> None:
        if self.first is None:
            self.first = epoch
        elapsed = time.perf_counter() - self.started
        done = epoch - self.first + 1
        left = elapsed / done * (epochs - epoch)
        numbers = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "seconds")
        line = (
            f"{self.name} epoch {epoch}/{epochs}: {numbers}, "
            f"elapsed {elapsed:.0f}s, about {left:.0f}s left"
        )
        self.log(line)
        logging.getLogger(PROGRESS_LOGGER).info(line)
        if self.track:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in row.items()}, step=epoch)


def reference_ids(ds: Dataset, image_ids) -> list[int]:
    """A few held-out images with objects (every kind has something to predict on them)."""
    labelled = set(ds.annotations["image_id"].tolist())
    return [i for i in image_ids if i in labelled][:REFERENCE_IMAGES]


@dataclass(frozen=True)
class FoldRun:
    """One training run of one fold: ``kind`` with ``config`` on ``version``, holding out
    ``fold`` (None: the final model, trained on every fold), on ``device``; checkpoints in
    ``run_dir``, the trained model published at ``model_dir``. ``inputs``: the folders the
    kind's inputs resolved to; ``weights``: the pulled weights the config names, as
    ``ml_assets.train.weights.resolve_weights`` found them; ``tags``: on the model card and the
    MLflow run; ``tracking``: where the run is tracked (None: not tracked). :meth:`to_dict` is
    what torchrun's ranks read back with :meth:`from_dict`."""

    kind: ModelKind
    version: str
    fold: int | None
    config: KindConfig
    device: Any  # a torch.device (its name in to_dict: each rank picks its own)
    run_dir: Path
    model_dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    weights: dict[str, Pinned] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tracking: Tracking | None = None

    def split(self, assignment: pd.DataFrame) -> tuple[list[int], list[int]]:
        """The images it trains on and the held-out ones it validates on."""
        return training_ids(assignment, self.fold), held_out_ids(assignment, self.fold)

    def training_inputs(self) -> dict[str, Path]:
        """``inputs`` and the stored copy of each pulled weights, under its config field."""
        return with_weights(self.inputs, self.weights)

    def fit(self, ds: Dataset, train_ids, val_ids, progress=None) -> FitResult:
        """The kind's ``fit`` (all that a rank other than 0 runs)."""
        config, device, inputs = self.config, self.device, self.training_inputs()
        return self.kind.fit(ds, train_ids, val_ids, config, device, self.run_dir, progress, inputs)

    def to_dict(self) -> dict:
        """Plain JSON: the kind by name, paths as strings."""
        return {
            "kind": self.kind.name,
            "version": self.version,
            "fold": self.fold,
            "config": self.config.model_dump(),
            "device": str(self.device),
            "run_dir": str(self.run_dir),
            "model_dir": str(self.model_dir),
            "inputs": {name: str(path) for name, path in self.inputs.items()},
            "weights": {name: pin.to_dict() for name, pin in self.weights.items()},
            "tags": self.tags,
            "tracking": asdict(self.tracking) if self.tracking is not None else None,
        }

    @classmethod
    def from_dict(cls, doc: dict, kind: ModelKind) -> FoldRun:
        """The run :meth:`to_dict` wrote, of ``kind`` (the one it names); its device stays a
        name."""
        tracking = doc["tracking"]
        return cls(
            kind=kind,
            version=doc["version"],
            fold=doc["fold"],
            config=kind.config_class(**doc["config"]),
            device=doc["device"],
            run_dir=Path(doc["run_dir"]),
            model_dir=Path(doc["model_dir"]),
            inputs={name: Path(path) for name, path in doc["inputs"].items()},
            weights={
                name: Pinned(**{**pin, "path": Path(pin["path"])})
                for name, pin in doc["weights"].items()
            },
            tags=doc["tags"],
            tracking=Tracking(**tracking) if tracking is not None else None,
        )


def train_fold(
    run: FoldRun,
    ds: Dataset,
    assignment: pd.DataFrame,
    folds_digest: str,
    log: Callable[[str], None] = print,
) -> TrainedFold:
    """Train ``run.kind`` on every fold but ``run.fold`` (validating on it) and publish it at
    ``run.model_dir``; ``fold=None`` trains the final model on every fold (validating on the
    test split when the folds hold one)."""
    kind = run.kind
    run = replace(run, config=kind.config_class(**run.config.model_dump()))
    if processes(run.config) > 1 and not kind.distributed:
        raise ValueError(f"{kind.name} trains in one process: set nproc_per_node and nnodes to 1")
    train_ids, val_ids = run.split(assignment)
    # The inputs' folders and the pinned weights' hashes name what training reads beyond the
    # config: a run resumes only onto the same ones (weights pinned anew start it afresh).
    key = fingerprint(
        kind=kind.name,
        config=run.config.model_dump(),
        folds=folds_digest,
        fold=run.fold,
        inputs={name: str(path) for name, path in run.training_inputs().items()},
        weights={name: pin.hash for name, pin in run.weights.items()},
    )
    if prepare_run_dir(run.run_dir, key):
        log(f"{kind.name}: found an interrupted run of the same configuration in {run.run_dir}")
    started = time.perf_counter()
    lineage = {
        **run.tags,
        "fingerprint": key,  # what decided this model: the model asset's data version
        "kind": kind.name,
        "version": run.version,
        "fold": run.fold,
        "folds_digest": folds_digest,
        "classes": class_list(ds),
        "config": run.config.model_dump(),
        "pretrained": recorded(run.weights),
        "device": str(run.device),
    }
    with _tracked(run, len(train_ids)) as tracked:
        part = "final" if run.fold is None else f"fold {run.fold}"
        progress = Progress(log, f"{kind.name} {run.version} {part}", track=tracked is not None)
        fit = run.fit(ds, train_ids, val_ids, progress)
        if fit.resumed_from:
            log(f"{kind.name}: resumed at epoch {fit.resumed_from} from {run.run_dir}")
        seconds = time.perf_counter() - started
        lineage |= {
            "mlflow_run_id": tracked.info.run_id if tracked is not None else None,
            "resumed_from": fit.resumed_from,
        }
        _stage_and_publish(run, ds, fit, lineage, reference_ids(ds, val_ids or train_ids))
        trained = TrainedFold(run.model_dir, fit, lineage, len(train_ids), seconds)
        if tracked is not None:
            _log_outcome(run, tracked, trained)
    shutil.rmtree(run.run_dir, ignore_errors=True)  # done: a new materialization starts afresh
    return trained


@contextlib.contextmanager
def _tracked(run: FoldRun, train_images: int) -> Iterator:
    """The MLflow run of ``run``, tagged and with its parameters logged; None when untracked."""
    if run.tracking is None:
        yield None
        return
    import mlflow

    tags = {k: str(v) for k, v in run.tags.items()} | {"kind": run.kind.name}
    tags |= weights_tags(recorded(run.weights))
    name = f"{run.version}-fold{run.fold}" if run.fold is not None else f"{run.version}-final"
    with run.tracking.run(run.kind.name, name, tags) as tracked:
        params = {"device": str(run.device), "train_images": train_images}
        mlflow.log_params({**run.config.model_dump(), **params})
        yield tracked


def _stage_and_publish(
    run: FoldRun, ds: Dataset, fit: FitResult, lineage: dict, sample: list[int]
) -> None:
    """Stage the model ``fit`` trained (the kind's ``save``, here only: rank 0), its card and
    its outputs on the ``sample`` images (for the reload check), then publish the folder."""
    staged = Path(run.run_dir) / "model"
    fit.summary |= run.kind.save(fit, staged)
    outputs = run.kind.outputs(fit.model, ds, sample, run.device)
    write_bytes(staged / MODEL_CARD, orjson.dumps(lineage, option=orjson.OPT_INDENT_2))
    reference = io.BytesIO()  # np.savez would add ".npz" to a temporary name
    np.savez(reference, image_ids=np.asarray(sample, np.int64), outputs=outputs)
    write_bytes(staged / REFERENCE, reference.getvalue())
    publish(staged, run.model_dir)


def _log_outcome(run: FoldRun, tracked, trained: TrainedFold) -> None:
    """Log the fit's history and summary and the published model to the MLflow run, register
    it as a model version, and note the run's address and the version on ``trained``."""
    import mlflow

    fit = trained.fit
    _log_history(fit)
    numeric = {k: v for k, v in fit.summary.items() if not isinstance(v, str)}
    mlflow.log_metrics({k: float(v) for k, v in numeric.items()})
    mlflow.set_tags({k: v for k, v in fit.summary.items() if isinstance(v, str)})
    mlflow.log_artifacts(str(run.model_dir), artifact_path="model")
    trained.mlflow_url = run.tracking.url(tracked)
    trained.registered_version = run.tracking.register(run.kind.name, tracked)


def _log_history(fit: FitResult) -> None:
    """Epochs run before a resume were logged by the run that crashed: log them here too, so
    this run's charts are whole."""
    import mlflow

    if not fit.resumed_from:
        return
    for row in fit.history.to_dict("records"):
        if row["epoch"] < fit.resumed_from:
            numbers = {k: float(v) for k, v in row.items() if k != "epoch" and pd.notna(v)}
            mlflow.log_metrics(numbers, step=int(row["epoch"]))


def publish(staged: Path, model_dir: Path) -> Path:
    """Copy the staged model folder to ``model_dir`` in one atomic step."""
    with atomic_dir(model_dir, overwrite=True, needs=lambda: folder_bytes(staged)) as tmp:
        shutil.copytree(staged, tmp, dirs_exist_ok=True)
    return model_dir


def card_path(model_dir: Path) -> Path | None:
    """The model card of ``model_dir`` (``model.json``, or ``lineage.json`` in a folder written
    before the rename); None when it holds no trained model."""
    for name in (MODEL_CARD, EARLIER_CARD):
        if (path := Path(model_dir) / name).is_file():
            return path
    return None


def read_lineage(model_dir: Path) -> dict:
    """The model card of ``model_dir``: kind, classes, config and what it was trained on."""
    if (path := card_path(model_dir)) is None:
        raise FileNotFoundError(f"{model_dir}: no trained model here (missing {MODEL_CARD})")
    return orjson.loads(path.read_bytes())


def reload_difference(kind: ModelKind, model_dir: Path, ds: Dataset, device) -> dict[str, float]:
    """Reload the published model and compare its outputs with the trained model's: the largest
    absolute difference, and the tolerance it must stay within (1e-4 of the outputs' largest
    magnitude, at least 1e-4: a detector's raw output holds box coordinates in pixels)."""
    saved = np.load(Path(model_dir) / REFERENCE)
    model = kind.load(model_dir, device)
    outputs = kind.outputs(model, ds, saved["image_ids"].tolist(), device)
    reference = saved["outputs"]
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    found = {"images": len(saved["image_ids"]), "tolerance": 1e-4 * max(1.0, scale)}
    if outputs.shape != reference.shape:
        return found | {"max_abs_difference": float("inf")}
    diff = float(np.abs(outputs - reference).max()) if outputs.size else 0.0
    return found | {"max_abs_difference": diff}


def nonfinite_weights(kind: ModelKind, model_dir: Path, device) -> dict[str, int]:
    """Tensors of the published model that hold NaN or infinity, with their counts."""
    import torch

    module = kind.module(kind.load(model_dir, device))
    bad = {}
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad[name] = count
    return bad


def cross_validated_config(kind: ModelKind, fold_dirs: list[Path]) -> KindConfig:
    """The configuration every fold model of a version was trained with (refused if they differ
    or a fold is missing): what the final model trains with."""
    configs = [read_lineage(folder)["config"] for folder in fold_dirs]
    if any(c != configs[0] for c in configs[1:]):
        raise ValueError(
            f"the fold models under {Path(fold_dirs[0]).parent} were trained with different "
            "configurations: retrain the folds with one configuration before the final model"
        )
    return kind.config_class(**configs[0])


def read_champion(record_path: Path) -> dict | None:
    """The champion record ``promote`` wrote at ``record_path``; None before the first."""
    return orjson.loads(Path(record_path).read_bytes()) if Path(record_path).exists() else None


def promote(
    kind: str,
    model_dir: Path,
    record_path: Path,
    version: str,
    score: float,
    tracking: Tracking | None,
    alias: str = "champion",
) -> dict:
    """Make the model at ``model_dir`` the kind's champion: move the registered model's
    ``alias`` to its MLflow model version (when tracked) and write the champion record, which
    keeps the champion it replaced."""
    from ml_assets.data.atomic import write_bytes

    lineage = read_lineage(model_dir)
    previous = read_champion(record_path)
    if previous is not None:
        previous.pop("previous", None)  # one step of history in the record, all of it in MLflow
    mlflow_version = None
    if tracking is not None and lineage.get("mlflow_run_id"):
        mlflow_version = tracking.set_alias(kind, lineage["mlflow_run_id"], alias)
    record = {
        "kind": kind,
        "version": version,
        "score": score,
        "model": str(model_dir),
        "mlflow_run_id": lineage.get("mlflow_run_id"),
        "mlflow_version": mlflow_version,
        "previous": previous,
    }
    write_bytes(record_path, orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return record
