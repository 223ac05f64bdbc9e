"""What the pipeline tests share: a dataset version ingested into a test instance, the resources
a training step takes, one (version, fold) of a kind materialized, what a kind declares it can do
beyond training (export, predictions) checked on its model, an asset's metadata."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import mlflow

from ml_assets.definitions import build_defs
from ml_assets.defs import datasets
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLflowTracking, TrainingDevice
from ml_assets.defs.settings import Settings

# What the tests build: every kind, 2 folds; the code location built from it, as Dagster loads it.
LOCATION_SETTINGS = Settings(folds=2)
LOCATION = build_defs(LOCATION_SETTINGS)
FOLDS, FOLDS_CHECK = datasets.build_folds(LOCATION_SETTINGS.folds)
DATA = [datasets.raw_dataset, datasets.annotations, FOLDS]
INGEST = [*DATA, datasets.annotations_checks, FOLDS_CHECK]


def training_resources(home) -> dict:
    return {
        "home": home,
        "training_device": TrainingDevice(device="cpu"),
        "mlflow_tracking": MLflowTracking(),
    }


@contextmanager
def ingested_version(
    landing, home, extra=(), location: Settings = LOCATION_SETTINGS
) -> Iterator[tuple[dg.DagsterInstance, str]]:
    """``landing`` registered as a version in a test instance with its data assets (and the
    ``extra`` ones, an export) materialized, split into ``location.folds`` folds:
    ``(instance, version)``."""
    data = [*DATA[:2], datasets.build_folds(location.folds)[0]]
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        done = dg.materialize(
            [*data, *extra], partition_key=key, resources={"home": home}, instance=instance
        )
        assert done.success
        yield instance, key
    mlflow.end_run()


def train_fold_assets(
    instance,
    home,
    key,
    kind,
    settings,
    fold=0,
    evaluate=True,
    raise_on_error=True,
    location: Settings = LOCATION_SETTINGS,
) -> dg.ExecuteInProcessResult:
    """``kind``'s model of (``key``, ``fold``) trained with ``settings``, then (``evaluate``) its
    checks and evaluation."""
    pipeline = build_pipeline(kind, location)
    model, evaluation, _ = pipeline.assets
    return dg.materialize(
        [model, pipeline.model_checks, evaluation] if evaluate else [model],
        partition_key=dg.MultiPartitionKey({"version": key, "fold": str(fold)}),
        resources=training_resources(home),
        instance=instance,
        run_config={"ops": {kind.name: {"config": settings}}},
        raise_on_error=raise_on_error,
    )


def fit_and_save(kind, ds, train_ids, val_ids, config, device, run_dir, on_epoch=None, inputs=None):
    """``kind.fit``, then its ``save`` into ``run_dir/model`` as the runner does (once, on rank
    0): ``(fit result, model folder)``."""
    fit = kind.fit(ds, train_ids, val_ids, config, device, run_dir, on_epoch, inputs)
    folder = Path(run_dir) / "model"
    fit.summary |= kind.save(fit, folder)
    return fit, folder


def metadata_of(result, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def landed_images(home, key) -> list:
    files = home.store.files_dir(key)
    return sorted(p for p in files.rglob("*") if p.suffix.lower() in {".png", ".jpg"})[:4]


def declared_parts_work(kind, model_dir, images, tmp_path) -> None:
    """What a kind declares it can do beyond training and scoring, done on its trained model:
    an ONNX export that matches PyTorch within its tolerance, predictions on image files."""
    import numpy as np
    from PIL import Image

    from ml_assets.train.export import check_onnx
    from ml_assets.train.predictions import write_predictions

    if kind.export_tolerance is not None:
        out = kind.export(model_dir, tmp_path / "export")
        pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
        found = check_onnx(kind, out, pixels, model_dir)
        assert found["passed"], found
        assert found["tolerance"] == kind.export_tolerance
    if kind.predicts:
        summary = write_predictions(kind, model_dir, images, "cpu", tmp_path / "predicted")
        assert summary["images"] == len(images)
