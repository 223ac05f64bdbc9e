"""What the UI offers works: checks executed alone for a partition, a made-up version refused,
metadata a person reads, owners and code references on every asset."""

import re

import dagster as dg
import pytest
from pipelines import DATA, FOLDS_CHECK, LOCATION

from ml_assets.defs import datasets
from ml_assets.defs.partitions import dataset_versions

DATA_ASSETS = DATA
DATA_CHECKS = [
    datasets.annotations_checks,
    FOLDS_CHECK,
]


@pytest.fixture(scope="module")
def defs():
    defs = LOCATION

    return defs


def test_every_check_of_a_partitioned_asset_is_partitioned_the_same_way(defs):
    graph = defs.resolve_asset_graph()
    for check_key in graph.asset_check_keys:
        check = graph.get_check_spec(check_key)
        asset = graph.get(check_key.asset_key)
        assert check.partitions_def == asset.partitions_def, check_key


def test_every_asset_has_owners_and_a_reference_to_its_code(defs):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:ml"], key
        (reference,) = node.metadata["dagster/code_references"].code_references
        assert reference.file_path.endswith(".py") and reference.line_number > 0, key


def test_a_check_executed_alone_runs_for_the_partition_chosen(landed, tmp_path, defs):
    """What Execute on a check's row in the UI launches: only that check, one partition. It used
    to fail with 'Cannot access partition_key for a non-partitioned run'."""
    _, home = landed
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        key = home.store.register(home.landing_path)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        done = dg.materialize(
            DATA_ASSETS, partition_key=key, resources={"home": home}, instance=instance
        )
        assert done.success
        for check_key in [key for check in DATA_CHECKS for key in check.check_keys]:
            job = defs.resolve_implicit_global_asset_job_def().get_subset(
                asset_selection=set(), asset_check_selection={check_key}
            )
            # The UI names the partition with the run's tag, as here.
            result = job.execute_in_process(
                tags={"dagster/partition": key}, instance=instance, resources={"home": home}
            )
            (evaluation,) = result.get_asset_check_evaluations()
            assert evaluation.check_name == check_key.name and evaluation.passed
            assert evaluation.partition == key
            assert not result.get_asset_materialization_events()  # the asset stays as it was


def test_a_check_launched_without_a_partition_is_skipped_and_says_what_to_do(
    landed, tmp_path, defs
):
    """What "Execute all" on a partitioned asset's Checks tab launches in Dagster 1.13: a run
    that names no partition. It succeeds, yields no result (the check shows as skipped, never
    failed, so the asset keeps its colour) and says in its log what to do instead."""
    _, home = landed
    graph = defs.resolve_asset_graph()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for check_key in graph.asset_check_keys:
            job = defs.resolve_implicit_global_asset_job_def().get_subset(
                asset_selection=set(), asset_check_selection={check_key}
            )
            result = job.execute_in_process(
                instance=instance, resources={"home": home}, raise_on_error=False
            )
            assert result.success and not result.get_asset_check_evaluations(), check_key
            logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
            said = [m for m in logs if m.startswith("skipped: no partition.")]
            assert said and "Materialize the asset for the partition" in said[0], (check_key, logs)
            (record,) = instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=1
            )
            assert record.run_id == result.run_id
            assert record.status.value == "PLANNED"  # never executed: the UI shows it skipped


def test_a_version_typed_into_add_a_partition_is_refused_with_how_versions_are_made(
    landed, tmp_path
):
    _, home = landed
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions(dataset_versions.name, ["my-new-data"])
        result = dg.materialize(
            [datasets.raw_dataset],
            partition_key="my-new-data",
            resources={"home": home},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.user_failure_data.description
        assert message.startswith("'my-new-data' is not a dataset version")
        assert "ml-assets ingest PATH" in message and "landing sensor" in message
        assert not (home.store.version_dir("my-new-data")).exists()


def test_annotation_metadata_is_rounded_and_its_quantiles_are_one_table(landed, tmp_path):
    _, home = landed
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        key = home.store.register(home.landing_path)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        dg.materialize(
            DATA_ASSETS[:2], partition_key=key, resources={"home": home}, instance=instance
        )
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("annotations")), limit=1
        ).records
        metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert not [k for k in metadata if re.search(r"_q\d+$", k)]  # no row spread over entries
    table = metadata["size_quantiles"].splitlines()
    columns = [c.strip() for c in table[0].strip("|").split("|")][1:]
    assert columns and all(re.fullmatch(r"q\d+", c) for c in columns), columns
    rows = {line.split("|")[1].strip() for line in table[2:]}
    assert rows == {
        "box_area",
        "box_relative_area",
        "box_relative_side",
        "image_width",
        "image_height",
    }
    for name, value in metadata.items():
        if isinstance(value, float):
            assert value == round(value, 4), name
