"""The landing sensor, the retraining schedule and the eager automation of training."""

import datetime
import shutil

import dagster as dg

from ml_assets.definitions import defs
from ml_assets.defs import automation, datasets
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

INGEST = [
    datasets.raw_dataset,
    datasets.annotations,
    datasets.folds,
    datasets.annotations_checks,
    datasets.folds_are_disjoint,
]


def evaluate_sensor(instance, home: MLAssetsHome, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"home": home})
    return automation.landing_sensor(context)


def test_landing_sensor_registers_each_settled_version_once(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    with dg.instance_for_test() as instance:
        assert isinstance(evaluate_sensor(instance, home), dg.SkipReason)  # no folder yet
        landing.mkdir()
        (landing / ".DS_Store").write_bytes(b"hidden")
        assert "no visible files" in evaluate_sensor(instance, home).skip_reason.skip_message

        shutil.copytree(tiny_sample, landing, dirs_exist_ok=True)
        first = evaluate_sensor(instance, home)  # changed since the last tick: wait for it
        assert not first.run_requests and "settle" in first.skip_reason.skip_message
        assert "the landing root: 13 files" in first.skip_reason.skip_message
        assert not list(home.store.root.glob("versions/*"))
        second = evaluate_sensor(instance, home, cursor=first.cursor)
        key = second.run_requests[0].partition_key
        assert len(key) == 12 and key == home.store.register(landing)  # the root is the dataset
        assert [(r.partition_key, r.run_key) for r in second.run_requests] == [
            (key, f"ingest-{key}")
        ]
        assert second.dynamic_partitions_requests[0].partition_keys == [key]
        assert home.store.manifest_path(key).is_file()
        instance.add_dynamic_partitions(dataset_versions.name, [key])  # what the daemon does

        again = evaluate_sensor(instance, home, cursor=second.cursor)
        assert (
            not again.run_requests
            and f"version {key} is registered" in again.skip_reason.skip_message
        )
        assert again.cursor == second.cursor

        extra = landing / "images" / "late.png"
        extra.write_bytes((landing / "images" / "shapes_000000.png").read_bytes())
        moving = evaluate_sensor(instance, home, cursor=again.cursor)
        assert not moving.run_requests and moving.cursor != again.cursor
        settled = evaluate_sensor(instance, home, cursor=moving.cursor)
        [request] = settled.run_requests
        assert request.partition_key not in (key, None)
        assert request.partition_key == home.store.register(landing)


def test_each_top_level_folder_is_a_dataset_with_its_own_version(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    shutil.copytree(tiny_sample, landing / "shapes")
    shutil.copytree(tiny_sample, landing / "copy")  # the same content: the same version
    (landing / "notes.txt").write_text("not a dataset")
    with dg.instance_for_test() as instance:
        first = evaluate_sensor(instance, home)
        message = first.skip_reason.skip_message
        assert "shapes: 13 files, changed" in message and "copy: 13 files, changed" in message
        assert "ignored files beside the dataset folders: notes.txt" in message
        second = evaluate_sensor(instance, home, cursor=first.cursor)
        key = home.store.register(landing / "shapes")
        assert [r.run_key for r in second.run_requests] == [f"ingest-{key}"]
        instance.add_dynamic_partitions(dataset_versions.name, [key])

        extra = landing / "shapes" / "images" / "late.png"
        extra.write_bytes((landing / "shapes" / "images" / "shapes_000000.png").read_bytes())
        moving = evaluate_sensor(instance, home, cursor=second.cursor)
        assert "shapes: 14 files, changed" in moving.skip_reason.skip_message
        assert "copy: 13 files, unchanged" in moving.skip_reason.skip_message
        settled = evaluate_sensor(instance, home, cursor=moving.cursor)
        [request] = settled.run_requests
        assert request.partition_key == home.store.register(landing / "shapes") != key
        assert request.tags["ml_assets/dataset"] == "shapes"
        assert home.store.landing_of(request.partition_key) == str(landing / "shapes")


def test_weekly_retraining_requests_every_fold_of_the_newest_ingested_version():
    with dg.instance_for_test() as instance:
        when = datetime.datetime(2026, 11, 23, 3, 0, tzinfo=datetime.UTC)
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        assert isinstance(automation.weekly_retraining(context), dg.SkipReason)
        versions = ["old000000000", "new000000000", "bad000000000"]
        instance.add_dynamic_partitions(dataset_versions.name, versions)
        assert isinstance(automation.weekly_retraining(context), dg.SkipReason)  # none ingested
        for version in versions[:2]:  # the newest one never got its folds
            instance.report_runless_asset_event(dg.AssetMaterialization("folds", partition=version))
        requests = automation.weekly_retraining(context)
        assert [r.partition_key for r in requests] == ["0|new000000000", "1|new000000000"]
        assert len({r.run_key for r in requests}) == 2
        assert [r.run_key for r in automation.weekly_retraining(context)] == [
            r.run_key for r in requests
        ]


def test_new_folds_make_every_fold_of_that_version_train(landed):
    landing, home = landed
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
        assert dg.materialize(
            INGEST, partition_key=key, resources={"home": home}, instance=instance
        ).success
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=idle.cursor
        )
        requested = result.get_requested_partitions(dg.AssetKey("image_classifier"))
        assert requested == {f"0|{key}", f"1|{key}"}
        assert result.get_requested_partitions(dg.AssetKey("classifier_report")) == set()


def test_a_failed_gate_on_the_folds_stops_training(landed):
    landing, home = landed
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        selection = dg.AssetSelection.assets("image_classifier")
        idle = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection
        )
        assert dg.materialize(
            INGEST, partition_key=key, resources={"home": home}, instance=instance
        ).success
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=datasets.folds.key,
                check_name="folds_are_disjoint",
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                partition=key,
            )
        )
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=idle.cursor
        )
        assert result.total_requested == 0


def test_the_cursor_of_the_one_dataset_sensor_reads_as_a_first_look(landed):
    landing, home = landed
    with dg.instance_for_test() as instance:
        for old in ("3a52e7e96489", "123456789012", "not json {"):
            result = evaluate_sensor(instance, home, cursor=old)
            assert "the landing root: 13 files, changed" in result.skip_reason.skip_message


def test_a_new_base_model_snapshot_retrains_nothing_by_itself(landed):
    """base_model is unpartitioned: plain eager() would make every LoRA model of every
    version due whenever any base model is snapshotted again."""
    landing, home = landed
    models = dg.AssetSelection.assets("lora_classifier", "lora_classifier_final")
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        idle = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models
        )
        assert dg.materialize(
            INGEST, partition_key=key, resources={"home": home}, instance=instance
        ).success
        new = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=idle.cursor
        )
        requested = new.get_requested_partitions(dg.AssetKey("lora_classifier"))
        assert requested == {f"0|{key}", f"1|{key}"}  # new data: every fold trains
        for partition in requested:
            instance.report_runless_asset_event(
                dg.AssetMaterialization("lora_classifier", partition=partition)
            )
        instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
        after = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=new.cursor
        )
        assert after.get_requested_partitions(dg.AssetKey("lora_classifier")) == set()
