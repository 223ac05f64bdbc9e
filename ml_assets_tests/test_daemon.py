"""The pipeline runs itself under a real `dagster dev` (webserver and daemon).

Tiny on purpose (2 shared CPU cores): a dozen 48-pixel images, 2 folds, the classifier only
(``ML_ASSETS_KINDS=classifier``, read when the code location loads), its default 12 epochs.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dev_server import dagster_dev, graphql
from servers import free_port, wait_for

REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": "ml_assets"}
SENSORS = ("landing_sensor", "automation_sensor")
ACTIVE = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

SENSOR_STATES = """
query Sensors($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) {
    __typename
    ... on Sensors { results { name sensorState { status } } }
  }
}"""
START_SENSOR = """
mutation Start($sensor: SensorSelector!) {
  startSensor(sensorSelector: $sensor) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""
TICKS = """
query Ticks($sensor: SensorSelector!) {
  sensorOrError(sensorSelector: $sensor) {
    ... on Sensor { sensorState { ticks(limit: 10) { status timestamp skipReason runIds } } }
  }
}"""


def sensor_states(port: int) -> dict[str, str] | None:
    found = graphql(port, SENSOR_STATES, {"repo": REPOSITORY})["sensorsOrError"]
    if found["__typename"] != "Sensors":
        return None  # the code location is still loading
    return {s["name"]: s["sensorState"]["status"] for s in found["results"]}


def switch_sensors_on(port: int) -> dict[str, str]:
    states = wait_for("the code location", lambda: sensor_states(port), 300)
    for name in SENSORS:
        if states[name] != "RUNNING":
            started = graphql(port, START_SENSOR, {"sensor": {**REPOSITORY, "sensorName": name}})
            assert started["startSensor"]["__typename"] == "Sensor", started
    return sensor_states(port)


def ticks(port: int, sensor: str) -> list[dict]:
    found = graphql(port, TICKS, {"sensor": {**REPOSITORY, "sensorName": sensor}})
    return found["sensorOrError"]["sensorState"]["ticks"]


def ticks_after(port: int, sensor: str, since: float, count: int) -> list[dict] | None:
    """``count`` finished ticks of ``sensor`` that started after ``since``, or None yet."""
    done = [t for t in ticks(port, sensor) if t["timestamp"] > since and t["status"] != "STARTED"]
    return done if len(done) >= count else None


def ingest(home: Path, folder: Path, *extra: str) -> str:
    env = {**os.environ, "ML_ASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    command = [str(Path(sys.executable).parent / "ml-assets"), "ingest", str(folder), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def materialized(instance, asset: str, partition: str) -> bool:
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition])
    return bool(instance.fetch_materializations(flt, limit=1).records)


def versions(instance) -> list[str]:
    return instance.get_dynamic_partitions("dataset_versions")


def quiet(instance) -> bool:
    return not instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE))


def broken_copy(sample: Path, target: Path) -> Path:
    """The sample with one box of a class that does not exist: a blocking
    ``annotations_findings`` error (the reader keeps the record for the check to report)."""
    import shutil

    shutil.copytree(sample, target)
    coco = json.loads((target / "annotations.json").read_text())
    coco["annotations"][0]["category_id"] = 999
    (target / "annotations.json").write_text(json.dumps(coco))
    return target


@pytest.mark.slow
def test_the_daemon_ingests_trains_evaluates_and_reports_by_itself(home, tiny_sample, tmp_path):
    port = free_port()
    env = {"ML_ASSETS_KINDS": "classifier", "ML_ASSETS_FOLDS": "2"}
    with dagster_dev(home, port, env=env) as log:
        assert switch_sensors_on(port) == {
            **sensor_states(port),
            **dict.fromkeys(SENSORS, "RUNNING"),
        }
        # A new dataset lands: registered, ingested, trained, evaluated, reported. Nobody clicks.
        assert "the landing sensor registers it" in ingest(home, tiny_sample, "--name", "shapes")
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        (version,) = wait_for("a registered version", lambda: versions(instance), 300)
        wait_for(
            "the report",
            lambda: materialized(instance, "classifier_report", version),
            1500,
            every=10,
        )
        for fold in ("0", "1"):
            key = dg.MultiPartitionKey({"version": version, "fold": fold})
            assert materialized(instance, "image_classifier", key)
            assert materialized(instance, "classifier_evaluation", key)
        runs = instance.get_runs()
        assert {r.job_name for r in runs} >= {"ingest_job", "__ASSET_JOB"}
        launched_by = {r.tags.get("dagster/sensor_name") for r in runs}
        assert launched_by <= set(SENSORS), launched_by  # every run came from a sensor
        training = [r for r in runs if r.tags.get("dagster/sensor_name") == "automation_sensor"]
        assert all(r.tags["dagster/max_runtime"] == "43200" for r in training)

        # Let automation finish what the new version started (promotion, when the gate passed).
        def settled():
            since = time.time()
            return (
                quiet(instance)
                and wait_for(
                    "two automation ticks",
                    lambda: ticks_after(port, "automation_sensor", since, 2),
                    200,
                )
                and quiet(instance)
            )

        wait_for("automation to settle", settled, 1500, every=5)
        before = {r.run_id for r in instance.get_runs()}

        # The same content again, replaced in place: no new version, no new run.
        since = time.time()
        ingest(home, tiny_sample, "--name", "shapes", "--replace")
        wait_for("two landing ticks", lambda: ticks_after(port, "landing_sensor", since, 2), 200)
        wait_for(
            "an automation tick", lambda: ticks_after(port, "automation_sensor", since, 1), 200
        )
        assert versions(instance) == [version]
        assert {r.run_id for r in instance.get_runs()} == before

        # An invalid dataset: its version is ingested, its blocking check fails, nothing trains.
        since = time.time()
        ingest(home, broken_copy(tiny_sample, tmp_path / "broken"))
        new = wait_for(
            "the broken version", lambda: [v for v in versions(instance) if v != version], 300
        )
        (broken,) = new
        of_version = dg.RunsFilter(job_name="ingest_job", tags={"dagster/partition": broken})
        (ingest_run,) = wait_for(
            "its ingest to end",
            lambda: [r for r in instance.get_runs(filters=of_version) if r.is_finished],
            600,
        )
        assert ingest_run.status == dg.DagsterRunStatus.FAILURE
        findings = [
            e.asset_check_evaluation
            for e in instance.all_logs(
                ingest_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            )
            if e.asset_check_evaluation.check_name == "annotations_findings"
        ]
        assert findings and not findings[0].passed
        assert not materialized(instance, "folds", broken)
        after = time.time()
        wait_for(
            "two automation ticks", lambda: ticks_after(port, "automation_sensor", after, 2), 300
        )
        wait_for("two landing ticks", lambda: ticks_after(port, "landing_sensor", after, 2), 300)
        of_broken = [
            r.job_name
            for r in instance.get_runs()
            if broken in (r.tags.get("dagster/partition"), r.tags.get("dagster/partition/version"))
        ]
        assert of_broken == ["ingest_job"], of_broken
        assert not materialized(
            instance, "image_classifier", dg.MultiPartitionKey({"version": broken, "fold": "0"})
        )
        landing_ticks = ticks_after(port, "landing_sensor", after, 2)
        assert all(t["status"] in ("SKIPPED", "SUCCESS") for t in landing_ticks), landing_ticks
        # The skip reason says what the sensor saw, in the tick list itself.
        skipped = [t for t in landing_ticks if t["status"] == "SKIPPED"]
        assert skipped and "shapes" in skipped[0]["skipReason"], skipped
        instance.dispose()
    output = log.read_text()
    assert "will not be used" not in output
