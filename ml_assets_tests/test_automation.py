"""The landing sensor, the retraining schedule and the eager automation of training."""

import datetime
import shutil

import dagster as dg
from pipelines import FOLDS, FOLDS_CHECK, INGEST, LOCATION_SETTINGS
from pipelines import LOCATION as defs

from ml_assets.defs import automation, datasets, exports
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

RETRAINING = defs.resolve_schedule_def("weekly_retraining")


def evaluate_sensor(instance, home: MLAssetsHome, cursor=None):
    # Entered: the context closes what it opened (an instance it enters on first use) on exit.
    resources = {"home": home}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
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
    when = datetime.datetime(2026, 11, 23, 3, 0, tzinfo=datetime.UTC)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context,
    ):
        assert isinstance(RETRAINING(context), dg.SkipReason)
        versions = ["old000000000", "new000000000", "bad000000000"]
        instance.add_dynamic_partitions(dataset_versions.name, versions)
        assert isinstance(RETRAINING(context), dg.SkipReason)  # none ingested
        for version in versions[:2]:  # the newest one never got its folds
            instance.report_runless_asset_event(dg.AssetMaterialization("folds", partition=version))
        requests = RETRAINING(context)
        assert [r.partition_key for r in requests] == ["0|new000000000", "1|new000000000"]
        assert len({r.run_key for r in requests}) == 2
        assert [r.run_key for r in RETRAINING(context)] == [r.run_key for r in requests]


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
                asset_key=FOLDS.key,
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


def test_lora_models_wait_for_a_base_model_and_a_new_snapshot_retrains_nothing(landed):
    """A LoRA kind is not requested while no base model was snapshotted (it could not
    succeed); base_model is unpartitioned, so a new snapshot of some base model must not make
    every LoRA model of every version due (the model's fingerprint names its snapshot)."""
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
        waiting = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=idle.cursor
        )
        assert waiting.total_requested == 0  # no base model yet
        snapshot = {"dagster/data_version": "vit=abc"}
        instance.report_runless_asset_event(dg.AssetMaterialization("base_model", tags=snapshot))
        new = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=waiting.cursor
        )
        requested = new.get_requested_partitions(dg.AssetKey("lora_classifier"))
        assert requested == {f"0|{key}", f"1|{key}"}  # new data: every fold trains
        for partition in requested:
            instance.report_runless_asset_event(
                dg.AssetMaterialization("lora_classifier", partition=partition)
            )
        another = {"dagster/data_version": "vit=abc,vit-large=def"}
        instance.report_runless_asset_event(dg.AssetMaterialization("base_model", tags=another))
        after = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=new.cursor
        )
        assert after.get_requested_partitions(dg.AssetKey("lora_classifier")) == set()


def ingest_for_two_kinds(instance, home: MLAssetsHome, key: str) -> None:
    """Ingest ``key`` with what the classifier and the detector train from (the YOLO export)."""
    assert dg.materialize(
        [*INGEST, exports.yolo_dataset],
        partition_key=key,
        resources={"home": home},
        instance=instance,
    ).success


def test_folds_materialized_again_identically_retrain_nothing(tmp_path, tiny_sample):
    """The retraining storm a user met: re-materializing folds with the same data and seed made
    every fold of every kind due. Now only a changed fold assignment makes a version's models
    due, and only that version's."""
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample, landing / "a")
    shutil.copytree(tiny_sample, landing / "b")
    (landing / "b" / "NOTES.txt").write_text("another file: another version")
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    models = dg.AssetSelection.assets("image_classifier", "yolo_detector")
    with dg.instance_for_test() as instance:
        a, b = (home.store.register(landing / name) for name in "ab")
        instance.add_dynamic_partitions(dataset_versions.name, [a, b])
        cursor = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models
        ).cursor
        for key in (a, b):
            ingest_for_two_kinds(instance, home, key)
        first = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=cursor
        )
        every = {f"{f}|{v}" for f in "01" for v in (a, b)}
        for asset in ("image_classifier", "yolo_detector"):
            assert first.get_requested_partitions(dg.AssetKey(asset)) == every
        for asset in ("image_classifier", "yolo_detector"):  # as if they trained
            for partition in every:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset, partition=partition, tags={"dagster/data_version": partition}
                    )
                )
        settled = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=first.cursor
        )
        assert settled.total_requested == 0

        same = dg.materialize(
            [FOLDS, FOLDS_CHECK],
            partition_key=a,
            resources={"home": home},
            instance=instance,
            selection=[FOLDS],
        )
        assert same.success
        again = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=settled.cursor
        )
        assert again.total_requested == 0  # the same assignment: nothing is due

        reseeded = dg.materialize(
            [FOLDS, FOLDS_CHECK],
            partition_key=a,
            resources={"home": home},
            instance=instance,
            run_config={"ops": {"folds": {"config": {"seed": 7}}}},
        )
        assert reseeded.success
        changed = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=models, cursor=again.cursor
        )
        for asset in ("image_classifier", "yolo_detector"):
            assert changed.get_requested_partitions(dg.AssetKey(asset)) == {f"0|{a}", f"1|{a}"}


def test_a_new_code_version_of_a_kind_retrains_its_models_only(landed):
    """A kind's code version (its ``version`` and default configuration) changed: every
    partition of its models is due, other kinds' are not."""
    import copy

    from ml_assets.defs.models import build_pipeline
    from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
    from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR

    def location(*kinds) -> dg.Definitions:
        pipelines = [build_pipeline(k, LOCATION_SETTINGS) for k in kinds]
        return dg.Definitions(
            assets=[
                *dg.load_assets_from_modules([datasets, exports]),
                FOLDS,
                *(a for p in pipelines for a in p.assets),
            ],
            asset_checks=[
                *dg.load_asset_checks_from_modules([datasets]),
                FOLDS_CHECK,
                *(c for p in pipelines for c in p.checks),
            ],
            resources=defs.resources,
        )

    changed = copy.copy(IMAGE_CLASSIFIER)
    changed.version = "2"
    before, after = location(IMAGE_CLASSIFIER, YOLO_DETECTOR), location(changed, YOLO_DETECTOR)
    models = dg.AssetSelection.assets("image_classifier", "yolo_detector")
    landing, home = landed
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        ingest_for_two_kinds(instance, home, key)
        for asset in ("image_classifier", "yolo_detector"):
            for fold in "01":
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(asset, partition=f"{fold}|{key}")
                )
        settled = dg.evaluate_automation_conditions(
            defs=before, instance=instance, asset_selection=models
        )
        quiet = dg.evaluate_automation_conditions(
            defs=before, instance=instance, asset_selection=models, cursor=settled.cursor
        )
        assert quiet.total_requested == 0
        new = dg.evaluate_automation_conditions(
            defs=after, instance=instance, asset_selection=models, cursor=quiet.cursor
        )
        assert new.get_requested_partitions(dg.AssetKey("image_classifier")) == {
            f"0|{key}",
            f"1|{key}",
        }
        assert new.get_requested_partitions(dg.AssetKey("yolo_detector")) == set()
