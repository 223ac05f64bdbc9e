"""Dataset versions (dynamic, keyed by content hash) and folds (static), and both together."""

import os

import dagster as dg

FOLDS_ENV = "ML_ASSETS_FOLDS"


def fold_count() -> int:
    """k for k-fold training, read once when the code location loads (default 5)."""
    value = os.environ.get(FOLDS_ENV, "5")
    if not value.isdigit() or int(value) < 2:
        raise ValueError(f"{FOLDS_ENV} must be an integer >= 2, got {value!r}")
    return int(value)


dataset_versions = dg.DynamicPartitionsDefinition(name="dataset_versions")
fold_partitions = dg.StaticPartitionsDefinition([str(i) for i in range(fold_count())])
version_folds = dg.MultiPartitionsDefinition({"version": dataset_versions, "fold": fold_partitions})


def version_fold(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> tuple[str, int]:
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a version/fold key, got {key!r}"
    dims = key.keys_by_dimension
    return dims["version"], int(dims["fold"])
