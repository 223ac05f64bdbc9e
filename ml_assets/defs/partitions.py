"""Dataset versions (dynamic, keyed by content hash) and folds (static), and both together."""

import dagster as dg

dataset_versions = dg.DynamicPartitionsDefinition(name="dataset_versions")


def fold_partitions(k: int) -> dg.StaticPartitionsDefinition:
    """The folds "0" .. "k-1" (``Settings.folds``)."""
    return dg.StaticPartitionsDefinition([str(i) for i in range(k)])


def version_folds(k: int) -> dg.MultiPartitionsDefinition:
    """(version, fold): the partitions of fold models and their evaluations."""
    return dg.MultiPartitionsDefinition({"version": dataset_versions, "fold": fold_partitions(k)})


def version_fold(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> tuple[str, int]:
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a version/fold key, got {key!r}"
    dims = key.keys_by_dimension
    return dims["version"], int(dims["fold"])


def blocking_checks(
    asset: dg.AssetsDefinition, descriptions: dict[str, str], op: str = "checks"
) -> dict:
    """Blocking checks of one asset, partitioned as it is, as ``multi_asset_check`` arguments:
    one op for all of them, which runs the ones selected (``selected(context, name)``), so each
    can still be executed on its own.

    Why one op: to build a job, Dagster orders an asset's blocking checks by their op output's
    name, and every ``@asset_check`` op names its output ``result``; two on one asset came out in
    set order, so the job's snapshot id changed from process to process and re-executing a run
    from the UI warned that it "may be a different version of the job". ``op`` names the op
    (``<asset>_<op>``) where an asset has a second one (a gate with its own launchpad config)."""
    return {
        "name": f"{asset.key.to_python_identifier()}_{op}",
        "can_subset": True,
        "specs": [
            dg.AssetCheckSpec(
                name,
                asset=asset,
                blocking=True,
                description=text,
                partitions_def=asset.partitions_def,
            )
            for name, text in descriptions.items()
        ],
    }


def selected(context: dg.AssetCheckExecutionContext, name: str) -> bool:
    return any(key.name == name for key in context.selected_asset_check_keys)


def checked_partition(context: dg.AssetCheckExecutionContext) -> str | None:
    """The partition a check runs for, or None for a run launched without one (the Checks tab's
    "Execute all" on a partitioned asset, in Dagster 1.13): then the check says in the run's log
    what to do instead and yields no result, so the run succeeds, the check shows as skipped
    and the asset keeps the status its partitions' checks gave it (every check here is a
    ``multi_asset_check``, whose results may be left out, for that reason)."""
    if context.has_partition_key:
        return context.partition_key
    context.log.warning(
        "skipped: no partition. These checks run for one partition (a dataset version, or a "
        "version and fold), and this run names none: Dagster 1.13 cannot execute a "
        "partitioned asset's checks on their own. Materialize the asset for the partition "
        "(its Partitions tab, or the launchpad with a partition chosen): its checks run with it."
    )
    return None
