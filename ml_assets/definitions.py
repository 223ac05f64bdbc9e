"""The one place that assembles the code location: what `dagster dev` and every run load.

Data assets come from their modules; each registered model kind adds its own pipeline (model,
evaluation, report, checks and jobs) through one factory, like Dagster's rss_pipeline_factory
example merges one pipeline per feed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg

from ml_assets.defs import automation, base_models, datasets, exports, shards
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.promotion import build_promotion, predictions
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
from ml_assets.train.registry import KINDS


def described(assets: list) -> list:
    """Assets with their owners (``ML_ASSETS_OWNERS``: comma-separated emails or ``team:name``,
    default ``team:ml``) and a reference to the code that defines them: the file and line, or a
    link to it on the Git host when ``ML_ASSETS_GIT_URL`` is set (``ML_ASSETS_GIT_BRANCH``,
    default main). Both are read when the code location loads."""
    owners = [o.strip() for o in os.environ.get("ML_ASSETS_OWNERS", "team:ml").split(",")]
    with warnings.catch_warnings():  # code references are a beta feature in Dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = dg.with_source_code_references(
            [a.map_asset_specs(lambda spec: spec.replace_attributes(owners=owners)) for a in assets]
        )
        if url := os.environ.get("ML_ASSETS_GIT_URL"):
            assets = dg.link_code_references_to_git(
                assets,
                git_url=url,
                git_branch=os.environ.get("ML_ASSETS_GIT_BRANCH", "main"),
                file_path_mapping=dg.AnchorBasedFilePathMapping(
                    local_file_anchor=Path(__file__).parents[1], file_anchor_path_in_repository=""
                ),
            )
    return list(assets)


pipelines = [build_pipeline(kind) for kind in KINDS.values()]
promotions = [
    build_promotion(kind, p.assets[2]) for kind, p in zip(KINDS.values(), pipelines, strict=True)
]

defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[
            *described(dg.load_assets_from_modules([datasets, exports, base_models, shards])),
            *described([predictions]),
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
    *(
        dg.Definitions(assets=described(p.assets), asset_checks=p.checks, jobs=p.jobs)
        for p in pipelines
    ),
    *(
        dg.Definitions(assets=described(assets), asset_checks=checks)
        for assets, checks in promotions
    ),
)
