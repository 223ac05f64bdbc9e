"""Scoring a kind's fold models and summing them up, the same way for every kind, from an asset
or a test.

:func:`evaluate_fold` scores the model that lineage names (the same version and fold) on its
held-out fold with the kind's ``score`` and writes the fold's record (``metrics.json``), its
predictions and plots into one folder atomically; :func:`summarize_folds` is the kind's report
over those records (``ml_assets.evaluate.report.summarize`` with the kind's primary metric and
baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.tables import Dataset
from ml_assets.evaluate.report import summarize, write_detections
from ml_assets.evaluate.scores import Scores
from ml_assets.train.kinds import ModelKind
from ml_assets.train.runs import read_lineage


def evaluate_fold(
    kind: ModelKind,
    model_dir: Path,
    ds: Dataset,
    image_ids: Sequence[int],
    device,
    folds_digest: str,
    out_dir: Path,
    inputs: dict[str, Path] | None = None,
) -> tuple[dict, Scores]:
    """Score the model at ``model_dir`` on ``image_ids``; write and return the fold's record."""
    lineage = read_lineage(model_dir)
    if lineage.get("folds_digest") != folds_digest:
        raise ValueError(
            f"{model_dir}: this model was trained on another fold assignment "
            f"({lineage.get('folds_digest')}) than the current one ({folds_digest}); "
            f"rematerialize {kind.name} for fold {lineage.get('fold')}"
        )
    scores = kind.score(model_dir, ds, image_ids, device, inputs)
    record = {
        "kind": kind.name,
        "version": lineage.get("version"),
        "fold": lineage.get("fold"),
        "metrics": scores.metrics,
        "per_class": scores.per_class.reset_index().to_dict("records"),
        "extra": scores.extra,
        "model": str(model_dir),
        "folds_digest": folds_digest,
        "mlflow_run_id": lineage.get("mlflow_run_id"),
    }
    with atomic_dir(out_dir, overwrite=True) as tmp:
        scores.predictions.to_parquet(tmp / "predictions.parquet", index=False)
        if {"image_id", "category_id", "score"} <= set(scores.predictions.columns):
            write_detections(tmp / "results.json", scores.predictions)
        (tmp / "metrics.json").write_bytes(
            orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        for name, png in scores.plots.items():
            (tmp / f"{name}.png").write_bytes(png)
    return record, scores


def summarize_folds(
    kind: ModelKind, version: str, records: list[dict], previous: dict | None = None
) -> dict:
    """The report of ``kind`` on ``version`` from its fold ``records`` (see
    :func:`ml_assets.evaluate.report.summarize`), with the kind's baseline on those folds."""
    baseline = kind.baseline(records)
    return summarize(kind.name, version, records, kind.primary_metric, baseline, previous)
