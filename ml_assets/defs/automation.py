"""Jobs, the landing sensor, the retraining schedule and the sensor that trains what is stale.

New data: ``landing_sensor`` lists the landing location (a folder or an S3 prefix; see
``ml_assets.data.landing`` for which datasets it holds) and, once two listings of a dataset agree,
registers its version as a dynamic partition and runs ``ingest_job`` for it. Training, evaluation and the report run when an upstream partition is new
or updated and its blocking checks passed (``eager() & all_deps_blocking_checks_passed()``), so
``automation_sensor`` requests every fold of every model kind for a new version once its folds
exist and pass their check, and each kind's report once its folds are evaluated; the version's
diff and image issues once ingested and its label issues once evaluated. On schedule: ``weekly_retraining`` retrains
every fold of the newest version whose ingest went through.
"""

from functools import partial

import dagster as dg

from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.policies import INGEST_RUN_TAGS, in_flight_runs, training_run_tags
from ml_assets.defs.resources import MLAssetsHome
from ml_assets.defs.settings import Settings
from ml_assets.train.registry import KINDS

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("data"),
    tags=INGEST_RUN_TAGS,
    description="Store, read, validate, split and export one dataset version.",
)
quality_job = dg.define_asset_job(
    "quality_job",
    selection=dg.AssetSelection.groups("quality") - dg.AssetSelection.assets("to_label_next"),
    description="What one version's data and folds show: its diff, image issues, label issues.",
)
report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.groups("reports"),
    description="Summarize every fold of one version per model kind and apply the gates.",
)


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each dataset in the landing location (a folder or s3://bucket/prefix; "
    "the root itself or one per top-level folder) as a dataset version and ingests it, once two "
    "listings 30 s apart agree (a copy in progress is not a version).",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, home: MLAssetsHome
) -> dg.SensorResult | dg.SkipReason:
    import orjson

    from ml_assets.data.landing import check

    landing = home.open_landing()
    if not landing.exists():
        return dg.SkipReason(f"landing folder {landing.url} does not exist")
    cursor = read_cursor(context.cursor)
    known = partial(context.instance.has_dynamic_partition, dataset_versions.name)
    tick = check(landing, home.store, cursor, known)
    requests, keys = [], []
    for drop, key in tick.registered:
        if key not in keys:  # two folders with the same content are one version
            keys.append(key)
            tags = {"ml_assets/dataset": drop.label, "ml_assets/landing": drop.url}
            requests.append(dg.RunRequest(partition_key=key, run_key=f"ingest-{key}", tags=tags))
    seen = f"{landing.url}: " + "; ".join(tick.seen or ["nothing"])
    context.log.info(seen)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[dataset_versions.build_add_request(keys)] if keys else [],
        skip_reason=None if requests else seen,
        cursor=orjson.dumps(tick.cursor).decode(),
    )


def read_cursor(text: str | None) -> dict[str, list]:
    """The landing sensor's cursor: {dataset: [listing fingerprint, version key]}. The cursor of
    the older one-dataset sensor (a bare version key) reads as empty: it looks once more."""
    import orjson

    try:
        cursor = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return cursor if isinstance(cursor, dict) else {}


def newest_ingested_version(instance: dg.DagsterInstance) -> str | None:
    """The most recently registered version whose folds exist (its ingest passed its gates)."""
    for version in reversed(instance.get_dynamic_partitions(dataset_versions.name)):
        flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey("folds"), asset_partitions=[version])
        if instance.fetch_materializations(flt, limit=1).records:
            return version
    return None


def build_automation(settings: Settings) -> dg.Definitions:
    """The jobs, sensors and the retraining schedule, with ``settings``' fold count, cron, time
    zone and training runtime limit."""
    run_tags = training_run_tags(settings.max_runtime_hours)
    training_job = dg.define_asset_job(
        "training_job",
        selection=dg.AssetSelection.groups("training", "evaluation"),
        tags=run_tags,
        description="Train and evaluate every model kind for one (version, fold).",
    )
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "automation_sensor",
        # to_label_next (quality) has no automation condition: it runs when asked.
        target=dg.AssetSelection.groups(
            "training", "evaluation", "reports", "promotion", "quality"
        ),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        run_tags=run_tags,
        description="Trains, evaluates and reports whatever a new dataset version made stale, "
        "and checks its quality (diff, image issues, label issues).",
    )
    return dg.Definitions(
        jobs=[ingest_job, training_job, report_job, quality_job],
        sensors=[landing_sensor, automation_sensor],
        schedules=[retraining_schedule(settings, training_job)],
    )


def retraining_schedule(settings: Settings, job) -> dg.ScheduleDefinition:
    """``weekly_retraining``: every fold of the newest ingested version, at ``settings``'
    cron in its time zone (ML_ASSETS_RETRAIN_CRON, ML_ASSETS_RETRAIN_TIMEZONE)."""
    cron, zone = settings.retrain_cron, settings.retrain_timezone

    @dg.schedule(
        name="weekly_retraining",
        job=job,
        cron_schedule=cron,
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"At cron {cron!r} ({zone}; ML_ASSETS_RETRAIN_CRON and "
        "ML_ASSETS_RETRAIN_TIMEZONE), retrain every fold of the newest ingested version; a "
        "fold already queued or training with the same config is skipped.",
    )
    def weekly_retraining(context: dg.ScheduleEvaluationContext):
        return retraining_requests(context, settings.folds)

    return weekly_retraining


def retraining_requests(context: dg.ScheduleEvaluationContext, k: int):
    newest = newest_ingested_version(context.instance)
    if newest is None:
        return dg.SkipReason("no dataset version has been ingested yet")
    stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    requests, busy = [], []
    for fold in map(str, range(k)):
        key = dg.MultiPartitionKey({"version": newest, "fold": fold})
        running = in_flight_runs(context.instance, TRAINING_JOBS, key, {})
        if running:
            busy.append(f"fold {fold} (run {running[0].run_id}, {running[0].status.value})")
            continue
        requests.append(
            dg.RunRequest(
                partition_key=key,
                run_key=f"retrain-{newest}-{fold}-{stamp}",
                tags={"ml_assets/trigger": "schedule"},
            )
        )
    reason = f"version {newest}: already queued or training: {', '.join(busy)}" if busy else None
    if reason:
        context.log.info(reason)
    return requests or dg.SkipReason(reason)


# Jobs that train a (version, fold): the schedule's, each kind's own, and the implicit asset job
# that the automation sensor launches its runs under.
TRAINING_JOBS = {"training_job", "__ASSET_JOB", *(f"{name}_job" for name in KINDS)}
