"""Run hygiene: tags, the schedule's settings and duplicates, slot waits, dead runs, Ctrl-C."""

import contextlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from servers import wait_for

from ml_assets.local.runs import location_job_origin, slot_wait_message

ROOT = Path(__file__).resolve().parents[1]


def test_training_runs_carry_a_runtime_limit_and_a_priority():
    from pipelines import LOCATION as defs

    for job in ("training_job", "image_classifier_job"):
        tags = defs.resolve_job_def(job).tags
        assert int(tags["dagster/max_runtime"]) == 12 * 3600
        assert int(tags["dagster/priority"]) < int(
            defs.resolve_job_def("ingest_job").tags["dagster/priority"]
        )


def test_the_retraining_schedule_reads_its_cron_and_time_zone_from_the_environment():
    code = (
        "from ml_assets.definitions import defs; "
        "s = defs().resolve_schedule_def('weekly_retraining'); "
        "print(s.cron_schedule, s.execution_timezone)"
    )
    env = {
        **os.environ,
        "ML_ASSETS_RETRAIN_CRON": "30 1 * * *",
        "ML_ASSETS_RETRAIN_TIMEZONE": "Europe/Berlin",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["30", "1", "*", "*", "*", "Europe/Berlin"]


def test_the_schedule_skips_a_fold_already_training_with_the_same_config(tmp_path):
    from pipelines import LOCATION as defs

    from ml_assets.defs.partitions import dataset_versions

    weekly_retraining = defs.resolve_schedule_def("weekly_retraining")

    when = datetime(2026, 1, 5, 3, tzinfo=UTC)
    with (
        dg.instance_for_test(temp_dir=str(tmp_path)) as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context,
    ):
        instance.add_dynamic_partitions(dataset_versions.name, ["v1"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="folds", partition="v1")
        )
        busy = dg.MultiPartitionKey({"version": "v1", "fold": "0"})
        job = defs.resolve_job_def("training_job")
        run = instance.create_run_for_job(
            job, tags={"dagster/partition": str(busy)}, status=dg.DagsterRunStatus.STARTED
        )
        requests = weekly_retraining(context)
        assert [r.partition_key for r in requests] == ["1|v1"]
        # Every fold busy: the tick is skipped and says which runs hold them.
        instance.create_run_for_job(
            job,
            tags={"dagster/partition": str(requests[0].partition_key)},
            status=dg.DagsterRunStatus.QUEUED,
            remote_job_origin=location_job_origin("training_job"),
        )
        skipped = weekly_retraining(context)
        assert isinstance(skipped, dg.SkipReason)
        assert run.run_id in skipped.skip_message and "fold 1 (run " in skipped.skip_message
        # Once the run ends, the fold is requested again.
        instance.report_run_failed(run)
        assert [r.partition_key for r in weekly_retraining(context)] == ["0|v1"]


def test_a_step_waiting_for_a_slot_names_the_run_holding_it(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        assert slot_wait_message(instance, "run-b", ("gpu",)) == ""
        storage.claim_concurrency_slot("gpu", "run-a", "image_classifier")
        storage.claim_concurrency_slot("gpu", "run-b", "classifier_evaluation")
        message = slot_wait_message(instance, "run-b", ("gpu",))
        assert message == (
            "classifier_evaluation waits for a slot of pool gpu (limit 1) held by "
            "run run-a (step image_classifier)"
        )
        storage.free_concurrency_slots_for_run("run-a")
        storage.claim_concurrency_slot("gpu", "run-b", "classifier_evaluation")
        assert slot_wait_message(instance, "run-b", ("gpu",)) == ""


def demo_command(home: Path, epochs: int) -> tuple[list[str], dict]:
    env = {
        **os.environ,
        "ML_ASSETS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        str(Path(sys.executable).parent / "ml-assets"),
        "demo",
        "--images",
        "24",
        "--folds",
        "2",
        "--epochs",
        str(epochs),
        "--models",
        "classifier",
    ]
    return command, env


@contextlib.contextmanager
def started(command, env, log: Path):
    """A command in its own process session, its output in ``log``; its group killed on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def signalled_during_training(home: Path, command, env, sig: signal.Signals) -> int:
    """Start the demo (its output in <home>/<SIGNAL>.log), send ``sig`` to its process group
    (as a terminal's Ctrl-C or the out-of-memory killer would) once fold 0 has a checkpoint;
    return its exit status."""
    runs = home / "runs" / "image_classifier"
    with started(command, env, home / f"{sig.name}.log") as process:
        wait_for(
            "a checkpoint",
            lambda: any(runs.glob("*/fold-0/checkpoint.pt")),
            600,
            every=0.5,
            process=process,
        )
        os.killpg(process.pid, sig)
        return process.wait(timeout=120)


@pytest.mark.slow
def test_a_demo_killed_during_training_blocks_nothing_and_the_next_resumes(home):
    """kill -9 (as the out-of-memory killer does) mid-training leaves a STARTED run holding the
    only gpu slot; the next demo says it marked that run failed, completes, and the killed fold
    resumes from its last checkpoint."""
    command, env = demo_command(home, epochs=6)
    signalled_during_training(home, command, env, signal.SIGKILL)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        stuck = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert [r.job_name for r in stuck] == ["training_job"]
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"run {stuck[0].run_id} (training_job, STARTED)" in done.stdout
    assert "no longer exists (killed or crashed): marked failed, its pool slots freed" in (
        done.stdout
    )
    assert "promotion gate:" in done.stdout
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_run_by_id(stuck[0].run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        trained = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_classifier")), limit=2
        ).records
        fold0 = [r for r in trained if r.partition_key.keys_by_dimension["fold"] == "0"]
        metadata = fold0[0].asset_materialization.metadata
        assert metadata["resumed"].value is True and metadata["resumed_from_epoch"].value >= 1
        assert metadata["epochs_run"].value == 6


@pytest.mark.slow
def test_ctrl_c_ends_the_demo_with_one_line(home):
    command, env = demo_command(home, epochs=50)
    assert signalled_during_training(home, command, env, signal.SIGINT) == 130
    output = (home / "SIGINT.log").read_text()
    assert "Traceback" not in output, output
    assert output.rstrip().splitlines()[-1].startswith("interrupted: "), output
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        active = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert not active
