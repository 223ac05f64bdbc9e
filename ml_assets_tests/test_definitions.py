import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from pipelines import LOCATION as defs

from ml_assets.defs.settings import Settings
from ml_assets.train.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "ultralytics", "timm", "transformers", "peft", "mlflow"]


def test_code_location_loads_as_dagster_dev_loads_it(tmp_path):
    """`dagster definitions validate -w workspace.yaml` loads it through a code server."""
    env = {**os.environ, "ML_ASSETS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    done = subprocess.run(
        [
            Path(sys.executable).parent / "dagster",
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful for code location ml_assets" in done.stdout + done.stderr


JOB_SNAPSHOTS = """
from ml_assets.definitions import defs
for job in sorted(defs().get_repository_def().get_all_jobs(), key=lambda j: j.name):
    print(job.name, job.get_job_snapshot().snapshot_id)
"""


def test_every_job_has_the_same_snapshot_in_every_process(tmp_path):
    """A run launched by ``ml-assets demo`` and the code location ``dagster dev`` serves must
    agree on the job's snapshot, or re-executing the run from the UI warns that it "may be a
    different version of the job". Asset checks in set order made them differ from process to
    process (fixed by one op per asset's blocking checks)."""
    env = {**os.environ, "ML_ASSETS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path)}
    outputs = set()
    for seed in ("1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", JOB_SNAPSHOTS],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1, outputs
    assert "training_job " in outputs.pop()


def test_graph_has_the_data_assets_and_one_pipeline_per_model_kind():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    data = {"raw_dataset", "annotations", "folds", "coco_dataset", "voc_dataset", "yolo_dataset"}
    data.add("webdataset_shards")
    assert "image_classifier" in KINDS and "yolo_detector" in KINDS
    per_kind = {
        n
        for k in KINDS.values()
        for n in (k.name, k.evaluation_name, k.report_name, f"{k.name}_final", f"promoted_{k.name}")
    }
    exported = {f"exported_{k.name}" for k in KINDS.values() if k.export_tolerance is not None}
    quality = {f"{k.name}_label_issues" for k in KINDS.values() if k.name != "lora_segmenter"}
    quality |= {"version_diff", "image_issues", "to_label_next"}
    assert keys == data | per_kind | exported | quality | {
        "base_model",
        "pretrained_weights",
        "predictions",
    }
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert {
        ("annotations", "annotations_schema"),
        ("annotations", "annotations_findings"),
        ("folds", "folds_are_disjoint"),
    } <= checks
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert {"ingest_job", "training_job", "report_job"} <= jobs
    for kind in KINDS.values():
        model = graph.get(dg.AssetKey(kind.name))
        assert model.pools == {"gpu"}
        assert "dagster-k8s/config" in defs.resolve_assets_def(kind.name).op.tags
        assert dg.AssetKey("folds") in model.parent_keys
        assert {dg.AssetKey(spec.asset) for spec in kind.inputs} <= model.parent_keys
        evaluation = graph.get(dg.AssetKey(kind.evaluation_name))
        assert evaluation.parent_keys == {dg.AssetKey(kind.name)} and evaluation.pools == {"gpu"}
        assert graph.get(dg.AssetKey(kind.report_name)).parent_keys == {
            dg.AssetKey(kind.evaluation_name),
            dg.AssetKey("version_diff"),  # the report opens with what changed in the data
        }
        assert {
            (kind.name, "weights_finite"),
            (kind.name, "reloads_identically"),
            (kind.report_name, kind.gate_name),
            (f"{kind.name}_final", "weights_finite"),
            (f"{kind.name}_final", "reloads_identically"),
            (f"{kind.name}_final", "beats_champion"),
        } <= checks
        assert graph.get(dg.AssetKey(f"promoted_{kind.name}")).parent_keys == {
            dg.AssetKey(f"{kind.name}_final")
        }
        assert {f"{kind.name}_job", f"{kind.report_name}_job"} <= jobs
        trains = defs.resolve_job_def(f"{kind.name}_job").asset_layer.selected_asset_keys
        assert trains == {dg.AssetKey(kind.name), dg.AssetKey(kind.evaluation_name)}
    everything = defs.resolve_job_def("training_job").asset_layer.selected_asset_keys
    assert everything == {
        dg.AssetKey(n) for k in KINDS.values() for n in (k.name, k.evaluation_name)
    }


def test_importing_the_definitions_and_the_cli_pulls_no_heavy_library():
    code = (
        "import sys, ml_assets.definitions, ml_assets.cli; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_offline_settings_are_applied_on_import():
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }.items():
        assert os.environ[key] == value
    assert os.environ["YOLO_CONFIG_DIR"]


def test_instance_settings_limit_the_gpu_pool_and_free_slots_of_ended_runs(tmp_path):
    (tmp_path / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    finally:
        instance.dispose()


def test_every_kind_declares_what_the_rest_of_the_code_needs():
    """The kind is the seam: the demo's settings, the printed headline, what it learns from,
    its exporter's tolerance and its asset names come from the kind, checked here once for
    every registered kind (a new kind that forgets one fails here, not in a demo)."""
    from ml_assets.train.kinds import LABELS, KindConfig
    from ml_assets.train.registry import KINDS

    names = set()
    for name, kind in KINDS.items():
        assert kind.name == name and issubclass(kind.config_class, KindConfig)
        fields = kind.config_class.model_fields
        assert set(kind.demo) <= set(fields), (name, set(kind.demo) - set(fields))
        kind.config_class(**kind.demo)  # valid settings
        assert kind.headline and kind.primary_metric in kind.headline, name
        assert kind.learns.labels in LABELS and kind.learns.min_classes >= 1
        assert kind.export_tolerance is None or 0 < kind.export_tolerance < 1
        assert isinstance(kind.version, str) and kind.version
        assert kind.distributed in ("", "torchrun", "self")
        assert kind.predicts in ("classes", "boxes", "masks", ""), name
        assert bool(kind.predicts) == callable(getattr(kind, "predict", None)), name
        exports = callable(getattr(kind, "export", None))
        assert exports == (kind.export_tolerance is not None), name
        own = {kind.name, kind.evaluation_name, kind.report_name, kind.gate_name}
        assert len(own) == 4 and not own & names, name  # no two kinds share an asset name
        names |= own


def test_the_code_location_is_built_from_its_settings_never_at_import():
    """Importing the location reads no setting; ``defs()`` (what Dagster calls) reads them from
    the environment and names a bad one; ``build_defs`` takes them as a value."""
    from ml_assets.definitions import build_defs

    code = (
        "import ml_assets.definitions as d; print('imported', flush=True); "
        "print(d.defs().resolve_schedule_def('weekly_retraining').cron_schedule)"
    )
    env = {**os.environ, "ML_ASSETS_FOLDS": "one"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.startswith("imported") and done.returncode != 0
    assert "ML_ASSETS_FOLDS='one'" in done.stderr
    with pytest.raises(ValueError, match="at least 2"):
        Settings(folds=1)

    settings = Settings(folds=3, kinds=("classifier",), retrain_cron="30 1 * * *")
    location = build_defs(settings)
    assert build_defs(settings) is location  # built once per settings in a process
    model = location.resolve_assets_def("image_classifier")
    assert model.partitions_def.get_partitions_def_for_dimension("fold").get_partition_keys() == [
        "0",
        "1",
        "2",
    ]
    keys = {k.to_user_string() for k in location.resolve_asset_graph().get_all_asset_keys()}
    assert "yolo_detector" not in keys and "classifier_report" in keys
    assert location.resolve_schedule_def("weekly_retraining").cron_schedule == "30 1 * * *"
    assert Settings.from_env({"ML_ASSETS_KINDS": " classifier, yolo ", "ML_ASSETS_FOLDS": ""}) == (
        Settings(kinds=("classifier", "yolo"))
    )


def test_a_kinds_inputs_are_lineage_and_resolve_to_the_folders_their_assets_write(tmp_path):
    """Typed input specs, one resolver: the classifier's shards are a lineage input of its model
    and a folder only for a config that streams them; weights are no folder of the version."""
    from ml_assets.defs.models import inputs_of
    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.defs.shards import SHARDS

    home = MLAssetsHome(root=str(tmp_path))
    classifier, yolo, lora = (
        KINDS["image_classifier"],
        KINDS["yolo_detector"],
        KINDS["lora_classifier"],
    )
    model = defs.resolve_asset_graph().get(dg.AssetKey("image_classifier"))
    assert dg.AssetKey("webdataset_shards") in model.parent_keys
    assert inputs_of(classifier, home, "v1", classifier.config_class()) == {}
    streaming = classifier.config_class(source="shards")
    assert inputs_of(classifier, home, "v1", streaming) == {
        "webdataset_shards": home.export_dir(SHARDS, "v1")
    }
    assert inputs_of(yolo, home, "v1") == {"yolo_dataset": home.export_dir("yolo", "v1")}
    assert inputs_of(lora, home, "v1") == {}
