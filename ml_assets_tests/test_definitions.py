import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from ml_assets.definitions import defs

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


def test_graph_has_the_expected_assets_checks_and_automation():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "raw_dataset",
        "annotations",
        "folds",
        "coco_dataset",
        "voc_dataset",
        "yolo_dataset",
        "image_classifier",
        "classifier_evaluation",
        "classifier_report",
    }
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {
        "annotations_schema",
        "annotations_findings",
        "folds_are_disjoint",
        "classifier_promotable",
    }
    classifier = graph.get(dg.AssetKey("image_classifier"))
    assert classifier.pools == {"gpu"}
    assert graph.get(dg.AssetKey("classifier_evaluation")).parent_keys == {
        dg.AssetKey("image_classifier")
    }
    assert {j.name for j in defs.jobs} == {"ingest_job", "training_job", "report_job"}


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
