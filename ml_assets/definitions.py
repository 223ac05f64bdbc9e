"""The one place that assembles the code location: what `dagster dev` and every run load."""

from __future__ import annotations

import dagster as dg

from ml_assets.defs import automation, datasets, evaluation, exports, training
from ml_assets.defs.resources import MLAssetsHome, TrainingDevice

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([datasets, exports, training, evaluation]),
    asset_checks=dg.load_asset_checks_from_modules([datasets, evaluation]),
    jobs=[automation.ingest_job, automation.training_job, automation.report_job],
    sensors=[automation.landing_sensor, automation.automation_sensor],
    schedules=[automation.weekly_retraining],
    resources={
        "home": MLAssetsHome(),
        "training_device": TrainingDevice(device=dg.EnvVar("ML_ASSETS_DEVICE").get_value("auto")),
    },
)
