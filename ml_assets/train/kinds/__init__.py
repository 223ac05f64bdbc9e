"""Model kinds: what every trained model family provides, so one factory builds its pipeline.

A kind is a plain object (in the spirit of timm's registry): a name, one configuration class
(a pydantic model whose fields the Dagster launchpad shows), ``fit``, ``score``, its primary
metric and its baseline. ``ml_assets.defs.models`` turns each registered kind into the model
asset ``[version, fold]``, its evaluation ``[version, fold]``, its report ``[version]`` with the
promotion gate, its model checks and its jobs. A kind declares what it trains from besides the
folds as :class:`Input` specs; one resolver (``ml_assets.defs.models.inputs_of``) turns them
into lineage dependencies of its model asset and into the ``inputs`` its ``fit`` and ``score``
get (asset name -> folder for this version); a kind called without them (the CLI on any folder)
makes what it needs itself.

Adding a kind is one file in this package (``train/kinds/<kind>.py``: the kind's class and its
instance, built from the shared machinery of ``train/``: the classification loop, the YOLO
plumbing parameterized by task, the adapter trainers), one line in
``ml_assets.train.registry.KINDS``, and its tests; the conformance tests pick it up from the
registry. This package's ``__init__`` holds only what a kind is and never imports a kind.

Folders. ``fit`` works in ``run_dir``, a folder that survives a crash: it checkpoints there after
every epoch and, when it finds a checkpoint, resumes from it (the caller clears ``run_dir``
whenever the configuration or data changed, see :func:`prepare_run_dir`). It returns the model
in memory; the runner (``ml_assets.train.runs.train_fold``, on rank 0 only under torchrun) has
the kind ``save`` it into a staging folder beside the model card and publishes that folder
atomically as the partition's model folder. ``score`` and ``load`` read only that published
folder. No kind asks which rank it runs on.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ml_assets.data.atomic import write_bytes
from ml_assets.data.tables import Dataset, has_masks, task_of
from ml_assets.evaluate.scores import Scores

# Called after every epoch with (epoch, epochs, row): row holds the epoch's numbers (losses,
# validation metrics, "seconds"). The callback may raise to stop training (the checkpoint of
# that epoch is already written).
EpochCallback = Callable[[int, int, dict[str, float]], None]


# Launch settings every config has: how many processes train, never how they train.
LAUNCH_FIELDS = frozenset({"nproc_per_node", "nnodes", "rdzv_endpoint"})


class KindConfig(BaseModel):
    """Base of every kind's configuration: immutable, unknown keys refused. The launch settings
    live here once, so every kind's launchpad shows them; a kind that cannot honour them
    refuses them in ``fit``. Fields that may name pulled weights (``ml-assets weights pull``)
    are declared in ``pinned_fields``, each with what it takes: ``"file"`` (a weights file) or
    ``"folder"`` (a transformers model folder); ``ml_assets.train.weights`` finds them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pinned_fields: ClassVar[dict[str, str]] = {}

    nproc_per_node: int = Field(
        default=1,
        ge=1,
        description="Training processes per node; more than 1 launches torchrun (DDP) through "
        "Dagster Pipes, one process per GPU on CUDA (batch_size is per process)",
    )
    nnodes: int = Field(default=1, ge=1, description="Nodes taking part in training (torchrun)")
    rdzv_endpoint: str = Field(
        default="",
        description="host:port of torchrun's c10d rendezvous, needed with nnodes > 1; empty on "
        "one node (a free local port)",
    )

    def pinned_names(self) -> dict[str, str]:
        """The pulled weights this configuration trains from: ``{field: name}`` for each of
        ``pinned_fields`` that names some (here: each one that is not empty)."""
        return {f: getattr(self, f) for f in self.pinned_fields if getattr(self, f)}


@dataclass
class FitResult:
    """What ``fit`` returns: the trained model in memory and how training went."""

    model: Any
    history: pd.DataFrame  # one row per epoch run in this call or before a resume
    resumed_from: int | None = None  # first epoch of this call when it resumed, else None
    # Final numbers for the metadata and MLflow metrics; text values (a base model's hash)
    # become metadata text and MLflow tags.
    summary: dict[str, float | str] = field(default_factory=dict)
    # What ``save`` writes beside the weights (classes, config, base model...).
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Input:
    """Something a kind trains from besides the version's folds: the asset ``asset`` (a
    lineage dependency of its model). ``reads``: ``"export"``, the asset's folder for the same
    version (``<version>/<folder or the asset's name less "_dataset">``), passed to ``fit`` and
    ``score`` as ``inputs[asset]``; ``"weights"``, pulled weights that the config field named
    ``asset`` names, found by ``ml_assets.train.weights.resolve_weights``. ``used``: whether a
    configuration reads it (None: always), e.g. the classifier reads shards only when it
    streams them."""

    asset: str
    reads: str = "export"
    folder: str = ""
    used: Callable[[Any], bool] | None = None

    def export_folder(self) -> str:
        return self.folder or self.asset.removesuffix("_dataset")

    def read_by(self, config: Any) -> bool:
        return self.used is None or self.used(config)


class KindNames:
    """A kind's asset names, derived from its ``name``: ``<name>_evaluation``, ``<name>_report``
    and the gate ``<name>_promotable``. ``stem`` replaces the name there for a kind whose
    assets an instance's history already holds under another one (``classifier_report``)."""

    name: str
    stem: str = ""

    @property
    def evaluation_name(self) -> str:
        return f"{self.stem or self.name}_evaluation"

    @property
    def report_name(self) -> str:
        return f"{self.stem or self.name}_report"

    @property
    def gate_name(self) -> str:
        return f"{self.stem or self.name}_promotable"


def reads(kind: ModelKind, asset: str) -> bool:
    """Whether ``kind`` declares ``asset`` as one of its inputs."""
    return any(spec.asset == asset for spec in kind.inputs)


@dataclass(frozen=True)
class Learns:
    """What a kind learns from (``ModelKind.learns``): ``labels`` is ``"boxes"`` (objects with
    their place: an image folder's whole-image labels are not boxes), ``"masks"`` (polygons or RLE
    masks) or ``"labels"`` (one class per image or per object crop: any labelled set), and the
    least number of classes with labels that it can tell apart."""

    labels: str
    min_classes: int = 2


LABELS = {"boxes": "boxes", "masks": "masks (polygons or RLE)", "labels": "labelled images"}


def refusal(kind: ModelKind, ds: Dataset) -> str | None:
    """Why ``kind`` cannot learn from ``ds``, in one line; None when it can. The one rule every
    path asks (the model assets before training, the demo before launching)."""
    learns, task = kind.learns, task_of(ds)
    wants = f"{kind.name} learns from {LABELS[learns.labels]}"
    if learns.labels == "boxes" and task == "classify":
        return f"{wants}; this version is a classification set (one whole-image label per image)"
    if learns.labels == "masks" and not has_masks(ds.annotations):
        return f"{wants}; this version has no masks ({task} labels)"
    used = ds.annotations["category_id"].unique()
    if len(used) < learns.min_classes:
        names = ", ".join(sorted(ds.category_names.get(c, str(c)) for c in used)) or "none"
        return (
            f"{wants} of at least {learns.min_classes} classes; this version has labels of "
            f"{len(used)} ({names})"
        )
    return None


class ModelKind(Protocol):
    name: str  # the model asset, e.g. "image_classifier"
    evaluation_name: str  # e.g. "classifier_evaluation"
    report_name: str  # e.g. "classifier_report"
    gate_name: str  # the report's blocking promotion check, e.g. "classifier_promotable"
    config_class: type[KindConfig]
    primary_metric: str  # a key of Scores.metrics, higher is better
    promotion_floor: float  # default least mean primary metric the promotion gate asks for
    inputs: tuple[Input, ...]  # what it trains from besides the folds (see :class:`Input`)
    learns: Learns  # what it needs in a version's labels (see :func:`refusal`)
    # Bumped when how it trains or scores changes: with its default configuration, the code
    # version of its assets, so automation retrains every version when it changes.
    version: str
    demo: dict  # training settings of `ml-assets demo` on 2 CPU cores (--epochs overrides epochs)
    # Settings of the conformance test (ml_assets_tests/test_models.py): a real training of one
    # or two epochs on tiny images, short enough to run for every kind on every commit.
    smoke: dict
    headline: tuple[str, ...]  # the metrics the demo and train commands print
    # Largest difference its ONNX export (``export``) may show against PyTorch
    # (ml_assets.train.export.check_onnx); None: the kind has no exporter.
    export_tolerance: float | None
    tags: frozenset[str]  # Dagster kinds shown on the assets: "pytorch", "ultralytics", ...
    description: str
    # Several processes (nproc_per_node * nnodes > 1): "torchrun" when fit trains with DDP under
    # torchrun (the model asset launches it), "self" when the library runs its own DDP inside
    # fit (ultralytics), "": it trains in one process and refuses more.
    distributed: str
    # What its ``predict`` (batch inference on image files: the predictions asset) returns:
    # "classes" (a row per image), "boxes" or "masks" (a row per detection, with a COCO RLE
    # ``segmentation`` for masks); "": it has no ``predict``.
    predicts: str
    # What its held-out predictions (the evaluation's predictions.parquet) hold, which decides
    # how its labels are checked (label issues): "classes" (a p_<class> column per class for each
    # annotation), "boxes" (detections with a class and a score), "" (neither: not checked).
    held_out: str

    def fit(
        self,
        ds: Dataset,
        train_ids: Sequence[int],
        val_ids: Sequence[int],
        config: KindConfig,
        device: Any,
        run_dir: Path,
        on_epoch: EpochCallback | None = None,
        inputs: dict[str, Path] | None = None,
    ) -> FitResult: ...

    def score(
        self,
        model_dir: Path,
        ds: Dataset,
        image_ids: Sequence[int],
        device: Any,
        inputs: dict[str, Path] | None = None,
    ) -> Scores: ...

    def baseline(self, folds: list[dict]) -> float:
        """The primary metric of a trivial model on the same held-out folds (``folds`` are the
        per-fold evaluation records: ``metrics`` and ``extra`` of each)."""
        ...

    def predict(self, model_dir: Path, images: Sequence[Path], device: Any) -> pd.DataFrame:
        """Only where ``predicts``. Batch inference on image files: one row per image (classifiers: ``file``,
        ``predicted``, ``confidence`` and a probability column per class) or per detection
        (detectors: ``file``, ``category_id``, ``x``, ``y``, ``w``, ``h``, ``score``)."""
        ...

    def export(self, model_dir: Path, out_dir: Path) -> Path:
        """Only where ``export_tolerance`` is set: the model at ``model_dir`` as a deployable
        folder (ONNX, TorchScript where it traces, classes, preprocessing; see
        ``ml_assets.train.export``) written atomically at ``out_dir``."""
        ...

    def save(self, fit: FitResult, folder: Path) -> dict[str, float | str]:
        """Write the model ``fit`` trained (its ``model`` and ``meta``) into ``folder``, which
        the runner then publishes; called once, on rank 0. Summary values that exist only once
        written (an adapter's size on disk)."""
        ...

    def load(self, model_dir: Path, device: Any) -> Any:
        """The published model rebuilt from disk (what ``save`` wrote)."""
        ...

    def module(self, model: Any) -> Any:
        """The ``torch.nn.Module`` inside a model that ``fit`` or ``load`` returned."""
        ...

    def outputs(self, model: Any, ds: Dataset, image_ids: Sequence[int], device: Any) -> np.ndarray:
        """Raw numeric outputs for a few images, to compare a reloaded model with the trained
        one (same order and shape for the same inputs)."""
        ...


def fingerprint(**parts: Any) -> str:
    """A short digest of everything that decides a training run (config, data, fold...)."""
    payload = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return hashlib.sha256(payload).hexdigest()[:16]


def prepare_run_dir(run_dir: Path, key: str) -> bool:
    """Make ``run_dir`` ready for a run identified by ``key``; True when an earlier attempt with
    the same key left it there (so ``fit`` may resume), False when it starts afresh (a missing
    folder or one from another configuration, which is removed)."""
    run_dir = Path(run_dir)
    stamp = run_dir / "run.json"
    if stamp.exists() and orjson.loads(stamp.read_bytes()).get("key") == key:
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_bytes(stamp, orjson.dumps({"key": key}))
    return False
