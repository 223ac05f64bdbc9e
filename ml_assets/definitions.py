"""The one place that assembles the code location: what `dagster dev` and every run load.

``build_defs(settings)`` builds it from a :class:`~ml_assets.defs.settings.Settings` value;
``defs``, what Dagster loads, reads those settings from the environment when it is called, never
when this module is imported. Data assets come from their modules; each registered model kind adds
its own pipeline (model, evaluation, report, checks and jobs) through one factory, like Dagster's
rss_pipeline_factory example merges one pipeline per feed.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import dagster as dg

from ml_assets.defs import automation, base_models, datasets, exports, quality, shards
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.promotion import build_promotion, predictions
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
from ml_assets.defs.settings import Settings
from ml_assets.train.registry import KINDS, kind


@dg.definitions
def defs() -> dg.Definitions:
    """The code location Dagster loads (``dagster dev``, the code server, each run's process):
    built from the ``ML_ASSETS_*`` variables of the loading process (``Settings.from_env``)."""
    return build_defs(Settings.from_env())


@cache
def build_defs(settings: Settings) -> dg.Definitions:
    """The code location for ``settings``: data assets from their modules, and each deployed
    model kind's pipeline (model, evaluation, report, checks, jobs), promotion and label
    issues through one factory each. Built once per settings in a process."""
    kinds = deployed_kinds(settings)
    pipelines = [build_pipeline(k, settings) for k in kinds]
    promotions = [
        build_promotion(k, p.report, settings.folds) for k, p in zip(kinds, pipelines, strict=True)
    ]
    folds = datasets.build_folds(settings.folds)
    data = dg.load_assets_from_modules([datasets, exports, base_models, shards, quality])
    return dg.Definitions.merge(
        dg.Definitions(
            assets=described(settings, [*data, folds[0], predictions]),
            asset_checks=[*dg.load_asset_checks_from_modules([datasets, quality]), folds[1]],
            executor=step_executor(settings),
            resources={
                "home": MLAssetsHome(),
                "training_device": TrainingDevice(device=settings.device),
                "mlflow_tracking": MLflowTracking(),
            },
        ),
        automation.build_automation(settings),
        *(
            dg.Definitions(assets=described(settings, p.assets), asset_checks=p.checks, jobs=p.jobs)
            for p in pipelines
        ),
        *(
            dg.Definitions(assets=described(settings, assets), asset_checks=checks)
            for assets, checks in promotions
        ),
        *(
            dg.Definitions(assets=described(settings, [a]), asset_checks=[c])
            for a, c in quality.per_kind(kinds)
        ),
    )


def described(settings: Settings, assets: list) -> list:
    """Assets with their owners and a reference to the code that defines them: the file and
    line, or a link to it on the Git host when ``settings.git_url`` is set."""
    owners = list(settings.owners)
    with warnings.catch_warnings():  # code references are a beta feature in Dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = dg.with_source_code_references(
            [a.map_asset_specs(lambda spec: spec.replace_attributes(owners=owners)) for a in assets]
        )
        if settings.git_url:
            assets = dg.link_code_references_to_git(
                assets,
                git_url=settings.git_url,
                git_branch=settings.git_branch,
                file_path_mapping=dg.AnchorBasedFilePathMapping(
                    local_file_anchor=Path(__file__).parents[1], file_anchor_path_in_repository=""
                ),
            )
    return list(assets)


def deployed_kinds(settings: Settings) -> list:
    """The model kinds the code location builds (``settings.kinds``: names or short names, e.g.
    ``classifier``); every registered kind when it names none."""
    return [kind(n) for n in settings.kinds] if settings.kinds else list(KINDS.values())


def step_executor(settings: Settings):
    """``k8s_job_executor`` (each step in its own pod, with the GPU request the training assets
    declare in their op_tags) when ``settings.executor`` is ``k8s`` (deploy/k8s sets
    ``ML_ASSETS_EXECUTOR``); otherwise Dagster's default."""
    if settings.executor != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor
