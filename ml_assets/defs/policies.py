"""Run policies of the code location: the tags its runs carry and which runs are in flight.

- :func:`training_run_tags` and :data:`INGEST_RUN_TAGS`: a training run's runtime limit and a
  queue priority below ingest's.
- :func:`in_flight_runs` lets the schedule skip a training request for a partition and
  configuration that is already queued or running.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

# Statuses of a run that has a process (or is about to get one).
ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
IN_FLIGHT = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, *ACTIVE]


def training_run_tags(max_runtime_hours: float) -> dict[str, str]:
    """Tags of every training run: a runtime limit that run monitoring enforces (the daemon's
    ``run_monitoring``; ``Settings.max_runtime_hours``) and a queue priority below ingest's, so
    a new drop is validated before long training runs take the queue's slots."""
    return {"dagster/max_runtime": str(int(max_runtime_hours * 3600)), "dagster/priority": "-1"}


INGEST_RUN_TAGS = {"dagster/priority": "1"}


def in_flight_runs(
    instance: dg.DagsterInstance, job_names: set[str], partition_key: str, run_config: Mapping
) -> list[dg.DagsterRun]:
    """Queued or running runs of these jobs for this partition whose ops (assets) have this
    configuration; how a run executes or logs (``execution``, ``loggers``) does not matter."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={"dagster/partition": str(partition_key)})
    )
    ops = dict(run_config.get("ops", {}))
    return [r for r in runs if r.job_name in job_names and r.run_config.get("ops", {}) == ops]
