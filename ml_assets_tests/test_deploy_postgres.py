"""deploy/postgres/dagster.yaml against a real PostgreSQL server: four runs at once, nothing lost.

A throwaway server from Debian's binaries listens on a loopback port; the deploy file is copied
into a fresh $DAGSTER_HOME, and four worker processes (each its own Python, its own connections)
run the ingest and then the training job together, like run workers on separate machines. The
test then reads back every run, event and asset materialization the workers produced.
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.config import dagster_instance_config
from servers import free_port

from ml_assets.data.sample import write_sample
from ml_assets.data.store import Store

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "postgres" / "dagster.yaml"
POSTGRES_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "install the server with `apt-get install postgresql` (Debian), as .ci/run does"
WORKERS = 4
# Four runs share the gpu pool (limit 1), so their training steps take turns; while a step waits
# for its slot, dagster 1.13's in-process executor polls without sleeping and keeps a core busy.
ANSWER_SECONDS = 1800

# One worker process: loads the code location and the instance of $DAGSTER_HOME once, then runs
# each job it is sent (one JSON line on stdin) and answers with what it saw (one line on stdout).
WORKER = """
import json, sys
import dagster as dg
from ml_assets.definitions import defs

defs = defs()  # the code location as Dagster loads it, from this process's environment
instance = dg.DagsterInstance.get()
print("ANSWER " + json.dumps({"storage": type(instance.run_storage).__name__}), flush=True)
for line in sys.stdin:
    order = json.loads(line)
    key = order["partition"]
    key = dg.MultiPartitionKey(key) if isinstance(key, dict) else key
    assets = order.get("assets")
    result = defs.resolve_job_def(order["job"]).execute_in_process(
        instance=instance,
        partition_key=key,
        run_config=order["run_config"],
        asset_selection=[dg.AssetKey.from_user_string(a) for a in assets] if assets else None,
        raise_on_error=False,
    )
    answer = {
        "run_id": result.run_id,
        "success": result.success,
        "events": [[e.event_type_value, e.step_key] for e in result.all_events],
        "materialized": [
            e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
        ],
        "failures": [
            f"{e.step_key}: {e.step_failure_data.error.to_string()[-1500:]}"
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"
        ],
    }
    print("ANSWER " + json.dumps(answer), flush=True)
"""


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server installed the Debian way, or None."""
    found = [p.parent for p in POSTGRES_ROOT.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields its `postgresql://` URL.

    initdb refuses to run as root: as root the server runs as the `postgres` user, in a folder
    that user owns (pytest's own temporary folders are private to root).
    """
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip(f"no PostgreSQL server under {POSTGRES_ROOT}/*/bin: {INSTALL_HINT}")
    owner: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="ml_assets_pg_"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root needs `runuser` to start PostgreSQL as its own user")
        try:
            shutil.chown(folder, user="postgres")
        except LookupError:
            pytest.skip(f"no `postgres` user to run the server as: {INSTALL_HINT}")
        owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*owner, *args], check=True, capture_output=True, timeout=120)

    pg(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
    options = f"-k {folder} -h 127.0.0.1 -p {port} -c fsync=off"
    pg(
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(folder / "log"),
        "start",
        "-w",
    )
    try:
        pg(
            str(binaries / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "dagster",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/dagster"
    finally:
        pg(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def driver_url(url: str) -> str:
    """The URL as users write it (`postgresql://`) when the installed SQLAlchemy maps that form
    to psycopg2, as the SQLAlchemy 2.0 line does; SQLAlchemy 2.1 maps it to psycopg 3, which is
    not installed, so until 2.0 is pinned the driver is named (`postgresql+psycopg2://`)."""
    from sqlalchemy.engine import make_url

    if make_url(url).get_dialect().driver == "psycopg2":
        return url
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


class Workers:
    """WORKERS worker processes; `run_all` sends one order to each and waits for every answer."""

    def __init__(self, logs: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ML_ASSETS_DEVICE": "cpu"}
        self.logs = [logs / f"worker-{i}.log" for i in range(WORKERS)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log.open("wb"),
                text=True,
            )
            for log in self.logs
        ]
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS)

    def answers(self) -> list[dict]:
        futures = [self.pool.submit(self.answer, i) for i in range(WORKERS)]
        return [f.result(timeout=ANSWER_SECONDS) for f in futures]

    def answer(self, i: int) -> dict:
        for line in self.processes[i].stdout:
            if line.startswith("ANSWER "):
                return json.loads(line.removeprefix("ANSWER "))
        tail = self.logs[i].read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker {i} exited without answering; its log ends:\n{tail}")

    def run_all(self, orders: list[dict]) -> list[dict]:
        for process, order in zip(self.processes, orders, strict=True):
            process.stdin.write(json.dumps(order) + "\n")
            process.stdin.flush()
        return self.answers()

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.pool.shutdown()


def one_epoch(defs: dg.Definitions, keys: list[dg.AssetKey]) -> dict:
    """Run config that trains for one epoch: `epochs: 1` on every op whose config has epochs."""
    ops = {}
    for key in keys:
        node = defs.resolve_assets_def(key).node_def
        config_type = node.config_schema.config_type if node.config_schema else None
        if "epochs" in (getattr(config_type, "fields", None) or {}):
            ops[node.name] = {"config": {"epochs": 1}}
    return {"ops": ops, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def assert_overlapping(instance: dg.DagsterInstance, run_ids: list[str]) -> None:
    """Every run started before any of them ended: they really ran at the same time."""
    records = instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
    assert len(records) == len(run_ids)
    assert max(r.start_time for r in records) < min(r.end_time for r in records)


def assert_everything_stored(instance: dg.DagsterInstance, answer: dict, partition) -> None:
    """The run, every event its worker saw, and each materialization with its asset record."""
    run = instance.get_run_by_id(answer["run_id"])
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    stored = [
        entry.dagster_event
        for entry in instance.all_logs(run.run_id)
        if entry.dagster_event is not None
    ]
    seen = Counter((kind, step) for kind, step in answer["events"])
    kept = Counter((e.event_type_value, e.step_key) for e in stored)
    assert not seen - kept, f"events missing from PostgreSQL: {seen - kept}"
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    succeeded = {e.step_key for e in stored if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert succeeded == {step.key for step in plan.steps}

    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    assert sorted(r.asset_key.to_user_string() for r in records) == sorted(answer["materialized"])
    planned = {
        e.asset_key
        for e in stored
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    }
    assert planned and planned == {r.asset_key for r in records}
    for record in records:
        assert record.partition_key == str(partition)
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=record.asset_key,
                asset_partitions=[str(partition)],
                storage_ids=[record.storage_id],
            ),
            limit=1,
        ).records
        assert [r.run_id for r in found] == [run.run_id]


def test_deploy_file_takes_the_connection_from_dagster_pg_url_only(tmp_path, monkeypatch):
    shutil.copyfile(DEPLOY, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"] == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    with pytest.raises(dg.DagsterInvalidConfigError, match='"DAGSTER_PG_URL" which is not set'):
        dg.DagsterInstance.from_config(str(tmp_path))


@pytest.mark.slow
def test_four_runs_at_once_keep_every_run_event_and_materialization(home, tmp_path, monkeypatch):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
    from pipelines import LOCATION as defs
    from pipelines import LOCATION_SETTINGS

    from ml_assets.defs.partitions import dataset_versions
    from ml_assets.train.registry import kind

    store = Store(home / "store")
    versions = [
        store.register(write_sample(tmp_path / f"landing-{seed}", images=16, seed=seed, size=48))
        for seed in range(WORKERS)
    ]
    assert len(set(versions)) == WORKERS
    trained = [
        dg.MultiPartitionKey({"version": version, "fold": fold})
        for version in versions[:2]
        for fold in map(str, range(LOCATION_SETTINGS.folds))
    ]
    assert len(trained) == WORKERS  # 2 versions x the test's 2 folds

    with postgres_server() as url:
        monkeypatch.setenv("DAGSTER_PG_URL", driver_url(url))
        shutil.copyfile(DEPLOY, home / "dagster" / "dagster.yaml")
        # The documented first step: an explicit limit for the gpu pool. Left to the default,
        # two runs claiming the pool for the first time at once both insert its row, and on
        # PostgreSQL the loser's transaction aborts and fails its run (dagster-io/dagster#33552).
        dagster = str(Path(sys.executable).parent / "dagster")
        subprocess.run(
            [dagster, "instance", "concurrency", "set", "gpu", "1"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            instance.add_dynamic_partitions(dataset_versions.name, versions)

            workers = Workers(tmp_path)
            try:
                assert workers.answers() == [{"storage": "PostgresRunStorage"}] * WORKERS
                quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
                ingested = workers.run_all(
                    [{"job": "ingest_job", "partition": v, "run_config": quiet} for v in versions]
                )
                # The classifier kind alone, as `ml-assets demo --models image_classifier`:
                # other kinds need base models or take longer, and change nothing here.
                classifier = kind("image_classifier")
                assets = [classifier.name, classifier.evaluation_name]
                config = one_epoch(defs, [dg.AssetKey(a) for a in assets])
                assert config["ops"], "no op of the classifier kind takes epochs"
                training = workers.run_all(
                    [
                        {
                            "job": "training_job",
                            "partition": key.keys_by_dimension,
                            "run_config": config,
                            "assets": assets,
                        }
                        for key in trained
                    ]
                )
            finally:
                workers.close()

            for answers, partitions in ((ingested, versions), (training, trained)):
                assert all(a["success"] for a in answers), [a["failures"] for a in answers]
                assert_overlapping(instance, [a["run_id"] for a in answers])
                for answer, partition in zip(answers, partitions, strict=True):
                    assert_everything_stored(instance, answer, partition)

            runs = instance.get_runs()
            assert Counter(r.job_name for r in runs) == {"ingest_job": 4, "training_job": 4}
            assert {r.run_id for r in runs} == {a["run_id"] for a in ingested + training}
            # The gpu pool lives in PostgreSQL too: limit 1, and every slot given back.
            gpu = instance.event_log_storage.get_concurrency_info("gpu")
            assert gpu.slot_count == 1 and not gpu.claimed_slots and not gpu.pending_steps
    # Nothing went to sqlite: the deploy file put every storage in PostgreSQL.
    assert not list((home / "dagster").rglob("*.db"))
