"""What the pipeline tests share: a dataset version ingested into a test instance, the resources
a training step takes, one (version, fold) of a kind materialized, an asset's metadata."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import mlflow

from ml_assets.defs import datasets
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLflowTracking, TrainingDevice

DATA = [datasets.raw_dataset, datasets.annotations, datasets.folds]


def training_resources(home) -> dict:
    return {
        "home": home,
        "training_device": TrainingDevice(device="cpu"),
        "mlflow_tracking": MLflowTracking(),
    }


@contextmanager
def ingested_version(landing, home, extra=()) -> Iterator[tuple[dg.DagsterInstance, str]]:
    """``landing`` registered as a version in a test instance with its data assets (and the
    ``extra`` ones, an export) materialized: ``(instance, version)``."""
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        done = dg.materialize(
            [*DATA, *extra], partition_key=key, resources={"home": home}, instance=instance
        )
        assert done.success
        yield instance, key
    mlflow.end_run()


def train_fold_assets(
    instance, home, key, kind, settings, fold=0, evaluate=True, raise_on_error=True
) -> dg.ExecuteInProcessResult:
    """``kind``'s model of (``key``, ``fold``) trained with ``settings``, then (``evaluate``) its
    checks and evaluation."""
    pipeline = build_pipeline(kind)
    model, evaluation, _ = pipeline.assets
    return dg.materialize(
        [model, pipeline.model_checks, evaluation] if evaluate else [model],
        partition_key=dg.MultiPartitionKey({"version": key, "fold": str(fold)}),
        resources=training_resources(home),
        instance=instance,
        run_config={"ops": {kind.name: {"config": settings}}},
        raise_on_error=raise_on_error,
    )


def metadata_of(result, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}
