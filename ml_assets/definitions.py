"""The one place that assembles the code location: what `dagster dev` and every run load.

Data assets come from their modules; each registered model kind adds its own pipeline (model,
evaluation, report, checks and jobs) through one factory, like Dagster's rss_pipeline_factory
example merges one pipeline per feed.
"""

from __future__ import annotations

import dagster as dg

from ml_assets.defs import automation, base_models, datasets, exports, shards
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.promotion import build_promotion, predictions
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
from ml_assets.train.registry import KINDS

pipelines = [build_pipeline(kind) for kind in KINDS.values()]
promotions = [
    build_promotion(kind, p.assets[2]) for kind, p in zip(KINDS.values(), pipelines, strict=True)
]

defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[
            *dg.load_assets_from_modules([datasets, exports, base_models, shards]),
            predictions,
        ],
        asset_checks=dg.load_asset_checks_from_modules([datasets]),
        jobs=[automation.ingest_job, automation.training_job, automation.report_job],
        sensors=[automation.landing_sensor, automation.automation_sensor],
        schedules=[automation.weekly_retraining],
        resources={
            "home": MLAssetsHome(),
            "training_device": TrainingDevice(
                device=dg.EnvVar("ML_ASSETS_DEVICE").get_value("auto")
            ),
            "mlflow_tracking": MLflowTracking(),
        },
    ),
    *(dg.Definitions(assets=p.assets, asset_checks=p.checks, jobs=p.jobs) for p in pipelines),
    *(dg.Definitions(assets=assets, asset_checks=checks) for assets, checks in promotions),
)
