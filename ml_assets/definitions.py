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

from ml_assets.defs import automation, base_models, datasets, exports, quality, shards
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


def deployed_kinds() -> list:
    """The model kinds this code location builds: ``ML_ASSETS_KINDS`` (comma-separated names or
    short names, e.g. ``classifier``), read when it loads; every registered kind by default."""
    from ml_assets.train.registry import kind

    names = [n.strip() for n in os.environ.get("ML_ASSETS_KINDS", "").split(",") if n.strip()]
    return [kind(n) for n in names] if names else list(KINDS.values())


def step_executor():
    """``k8s_job_executor`` (each step in its own pod, with the GPU request the training assets
    declare in their op_tags) when ``ML_ASSETS_EXECUTOR=k8s``, read when the code location
    loads (deploy/k8s sets it); otherwise Dagster's default."""
    if os.environ.get("ML_ASSETS_EXECUTOR", "") != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor


kinds = deployed_kinds()
pipelines = [build_pipeline(kind) for kind in kinds]
promotions = [build_promotion(kind, p.report) for kind, p in zip(kinds, pipelines, strict=True)]

defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[
            *described(
                dg.load_assets_from_modules([datasets, exports, base_models, shards, quality])
            ),
            *described([predictions]),
        ],
        asset_checks=dg.load_asset_checks_from_modules([datasets, quality]),
        jobs=[
            automation.ingest_job,
            automation.training_job,
            automation.report_job,
            automation.quality_job,
        ],
        sensors=[automation.landing_sensor, automation.automation_sensor],
        schedules=[automation.weekly_retraining],
        executor=step_executor(),
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
    *(dg.Definitions(assets=described([a]), asset_checks=[c]) for a, c in quality.per_kind(kinds)),
)
