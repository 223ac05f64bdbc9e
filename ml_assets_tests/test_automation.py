"""The landing sensor, the retraining schedule and the eager automation of training."""

import datetime
import shutil

import dagster as dg

from ml_assets.definitions import defs
from ml_assets.defs import automation, datasets
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome


def evaluate_sensor(instance, home: MLAssetsHome, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"home": home})
    return automation.landing_sensor(context)


def test_landing_sensor_registers_each_new_version_once(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    with dg.instance_for_test() as instance:
        assert isinstance(evaluate_sensor(instance, home), dg.SkipReason)  # nothing landed yet

        shutil.copytree(tiny_sample, landing)
        first = evaluate_sensor(instance, home)
        key = home.store.register(landing)
        assert [r.partition_key for r in first.run_requests] == [key]
        assert [r.run_key for r in first.run_requests] == [f"ingest-{key}"]
        assert first.dynamic_partitions_requests[0].partition_keys == [key]
        assert first.cursor == key
        instance.add_dynamic_partitions(dataset_versions.name, [key])  # what the daemon does

        again = evaluate_sensor(instance, home, cursor=first.cursor)
        assert isinstance(again, dg.SkipReason) and "already registered" in again.skip_message

        (landing / "images" / "late.png").write_bytes(
            (landing / "images" / "shapes_000000.png").read_bytes()
        )
        second = evaluate_sensor(instance, home, cursor=first.cursor)
        new_key = home.store.register(landing)
        assert new_key != key
        assert [r.partition_key for r in second.run_requests] == [new_key]
        assert second.dynamic_partitions_requests[0].partition_keys == [new_key]


def test_weekly_retraining_requests_every_fold_of_the_newest_version():
    with dg.instance_for_test() as instance:
        when = datetime.datetime(2026, 11, 23, 3, 0, tzinfo=datetime.UTC)
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        assert isinstance(automation.weekly_retraining(context), dg.SkipReason)
        instance.add_dynamic_partitions(dataset_versions.name, ["old000000000", "new000000000"])
        requests = automation.weekly_retraining(context)
        assert [r.partition_key for r in requests] == ["0|new000000000", "1|new000000000"]
        assert len({r.run_key for r in requests}) == 2
        assert [r.run_key for r in automation.weekly_retraining(context)] == [
            r.run_key for r in requests
        ]


def test_new_folds_make_every_fold_of_that_version_train(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample, landing)
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        selection = dg.AssetSelection.assets(
            "image_classifier", "classifier_evaluation", "classifier_report"
        )
        idle = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection
        )
        assert idle.total_requested == 0
        assets = [datasets.raw_dataset, datasets.annotations, datasets.folds]
        assert dg.materialize(
            assets, partition_key=key, resources={"home": home}, instance=instance
        ).success
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=idle.cursor
        )
        requested = result.get_requested_partitions(dg.AssetKey("image_classifier"))
        assert requested == {f"0|{key}", f"1|{key}"}
        assert result.get_requested_partitions(dg.AssetKey("classifier_report")) == set()
