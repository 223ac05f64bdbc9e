"""Run hygiene: runs our commands start look like UI-launched ones, and a dead run blocks nothing.

- :func:`execute_as_location` runs a job of the code location in this process the way the UI's
  launch does (the run names its code location and job), so ``ml-assets demo`` runs show on the
  job pages and the overview timeline.
- :func:`reap_dead_runs` finds runs left STARTING/STARTED by a process that no longer exists
  (``kill -9``, the out-of-memory killer), marks them failed and frees their pool slots. Where a
  daemon runs, its run monitoring does this for the runs it launched (dagster.yaml
  ``run_monitoring``); our commands do it for their own runs always, for the others when they
  start without a daemon.
- :func:`echoing_slot_waits_in_thread` says on the terminal which run holds the pool slot a step
  waits for.

The run policies of the code location itself (tags, runs in flight) are in
``ml_assets.defs.policies``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg

from ml_assets.defs.policies import ACTIVE

# The code location's name in workspace.yaml: runs started by our commands are filed under it.
LOCATION_NAME = "ml_assets"
REPOSITORY_NAME = "__repository__"  # what dg.Definitions is loaded as
DEFINITIONS_MODULE = "ml_assets.definitions"
HOST_TAG = "ml_assets/host"
# A daemon whose heartbeat is older than this is not running.
DAEMON_HEARTBEAT_S = 60


def daemon_is_running(instance: dg.DagsterInstance) -> bool:
    """Whether a daemon (and so its run monitoring) sent a heartbeat recently."""
    beats = instance.get_daemon_heartbeats()
    return any(time.time() - beat.timestamp < DAEMON_HEARTBEAT_S for beat in beats.values())


def run_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The process that started executing the run (its RUN_START event's pid)."""
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1
    ).records
    event = records[0].event_log_entry.dagster_event if records else None
    return event.pid if event else None


def process_alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` is a live process that existed at ``since`` (a reused pid is not it)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return since is None or process.create_time() <= since + 1
    except psutil.NoSuchProcess:
        return False


def ours_to_check(instance: dg.DagsterInstance, run: dg.DagsterRun, daemon: bool) -> bool:
    """Whether this process may judge the run by its pid. Runs our commands executed in process
    carry this machine's name: always (no run launcher knows them). Other runs only when no daemon
    runs (its run monitoring asks the run launcher) and the instance is a local sqlite file (a
    pid means nothing on another machine)."""
    if HOST_TAG in run.tags:
        return run.tags[HOST_TAG] == socket.gethostname()
    return not daemon and type(instance.run_storage).__name__.startswith("Sqlite")


def reap_dead_runs(instance: dg.DagsterInstance, echo: Callable[[str], None]) -> list[str]:
    """Mark failed the runs whose process is gone and free their pool slots; say so per run."""
    daemon = daemon_is_running(instance)
    reaped = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE)):
        if not ours_to_check(instance, run, daemon):
            continue
        pid = run_pid(instance, run)
        if pid is None or pid == os.getpid():
            continue
        record = instance.get_run_record_by_id(run.run_id)
        started = record.start_time if record else None
        if process_alive(pid, started):
            continue
        message = (
            f"the process of run {run.run_id} ({run.job_name}, {run.status.value}), pid {pid}, "
            "no longer exists (killed or crashed): marked failed, its pool slots freed"
        )
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        echo(message)
        reaped.append(run.run_id)
    return reaped


def slot_wait_message(instance: dg.DagsterInstance, run_id: str, pools: tuple[str, ...]) -> str:
    """What this run's steps wait for: the pool, its limit and the runs holding its slots;
    empty when nothing waits."""
    lines = []
    for pool in pools:
        info = instance.event_log_storage.get_concurrency_info(pool)
        waiting = [
            p.step_key
            for p in info.pending_steps
            if p.run_id == run_id and p.assigned_timestamp is None
        ]
        holders = sorted({(c.run_id, c.step_key) for c in info.claimed_slots if c.run_id != run_id})
        if waiting and holders:
            held = ", ".join(f"run {r} (step {s})" for r, s in holders)
            lines.append(
                f"{', '.join(waiting)} waits for a slot of pool {pool} "
                f"(limit {info.slot_count}) held by {held}"
            )
    return "; ".join(lines)


@contextlib.contextmanager
def echoing_slot_waits_in_thread(
    instance: dg.DagsterInstance,
    run_id: str,
    echo: Callable[[str], None],
    pools: tuple[str, ...] = ("gpu",),
    every: float = 5.0,
) -> Iterator[None]:
    """Starts a thread that echoes, each time it changes, which run holds the slot a step of
    ``run_id`` waits for; stops it on exit."""
    done = threading.Event()

    def watch() -> None:
        said = ""
        while not done.wait(every):
            with contextlib.suppress(Exception):  # a storage hiccup must not end the run
                message = slot_wait_message(instance, run_id, pools)
                if message and message != said:
                    echo(
                        f"{message}; it runs on until that run ends or is cancelled "
                        "(make ui, Runs page)"
                    )
                said = message

    thread = threading.Thread(target=watch, name=f"slot-waits-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=every + 1)


def show_automation_on(instance: dg.DagsterInstance) -> None:
    """Clear the pause flag of Dagster's pre-sensor automation daemon. Automation here runs
    through ``automation_sensor``, which ignores that flag, but the UI's job and asset pages
    read it and said "Auto-materialize off / Automation condition evaluation is paused" on a new
    instance while the sensor ran; cleared, they show what is true (the sensor's own on/off
    switch is on the Automation page)."""
    from dagster._daemon.asset_daemon import set_auto_materialize_paused

    set_auto_materialize_paused(instance, False)


def in_process_instance(folder: str) -> dg.DagsterInstance:
    """The instance in ``folder`` for runs executed in this process. Their stdout and stderr stay
    on the terminal instead of being captured as compute logs: the capture's helper processes
    (``tail`` and a watcher per run) share the terminal's process group, and on Ctrl-C each
    printed its own traceback. Event logs, metadata and checks are recorded as always."""
    from dagster._core.instance.ref import InstanceRef

    no_capture = {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
    ref = InstanceRef.from_dir(folder, overrides={"compute_logs": no_capture})
    return dg.DagsterInstance.from_ref(ref)


def location_job_origin(job_name: str):
    """The origin a run of ``job_name`` launched from the UI of ``make ui`` records."""
    import sys

    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name=DEFINITIONS_MODULE,
            working_directory=os.getcwd(),
        ),
        location_name=LOCATION_NAME,
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY_NAME), job_name)


def execute_as_location(
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    partition_key: str | dg.MultiPartitionKey | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    echo: Callable[[str], None] = print,
):
    """Execute a job of the code location in this process, its steps in this process too, as a
    run the UI knows as its own; returns the execution result."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import execute_run

    repository = ReconstructableRepository.for_module(
        DEFINITIONS_MODULE, "defs", working_directory=os.getcwd()
    )
    recon_job = repository.get_reconstructable_job(job_name)
    job_def = recon_job.get_definition()
    run_tags = {**(tags or {}), HOST_TAG: socket.gethostname()}
    if partition_key is not None:
        run_tags.update(
            job_def.get_tags_for_partition_key(
                partition_key,
                selected_asset_keys=set(asset_selection) if asset_selection else None,
            )
        )
    # Steps run in this process (the job's executor otherwise starts one process per step).
    config = {"execution": {"config": {"in_process": {}}}, **(run_config or {})}
    run = instance.create_run_for_job(
        job_def=job_def,
        run_config=config,
        tags=run_tags,
        asset_selection=frozenset(asset_selection) if asset_selection else None,
        remote_job_origin=location_job_origin(job_name),
        job_code_origin=recon_job.get_python_origin(),
    )
    with echoing_slot_waits_in_thread(instance, run.run_id, echo):
        result = execute_run(recon_job, run, instance)
    if any(INTERRUPTED in error for error in step_errors(result).values()):
        raise KeyboardInterrupt  # Dagster turned Ctrl-C into a failed step: it was a Ctrl-C
    return result


INTERRUPTED = "DagsterExecutionInterruptedError"


def step_errors(result) -> dict[str, str]:
    """Each failed step of an execution result with its error in one line (the innermost
    cause's class and first line of message)."""
    errors = {}
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name.startswith("DagsterExecutionStep"):
                error = error.cause
            lines = (error.message or "").strip().splitlines()
            first = lines[0].split(f"{error.cls_name}: ", 1)[-1] if lines else ""
            errors[event.step_key] = f"{error.cls_name}: {first}".strip()
    return errors
