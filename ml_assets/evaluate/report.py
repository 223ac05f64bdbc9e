"""Evaluations per fold, reports per version and the promotion gate's rule, for every kind.

An evaluation scores the model that lineage names (the same version and fold) on its held-out
fold and writes ``metrics.json`` (the record reports read), ``predictions.parquet`` and its plots
into one folder atomically. A report reads every fold's record, refuses records of another fold
assignment, and writes the mean and standard deviation of each metric across folds with the
baseline of the kind's primary metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.tables import Dataset
from ml_assets.train.kinds import ModelKind, Scores
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
        (tmp / "metrics.json").write_bytes(
            orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        for name, png in scores.plots.items():
            (tmp / f"{name}.png").write_bytes(png)
    return record, scores


def read_fold_records(folders: dict[int, Path], folds_digest: str) -> list[dict]:
    """Every fold's evaluation record (fold -> evaluation folder), all of one fold assignment."""
    records = []
    for fold, folder in sorted(folders.items()):
        path = Path(folder) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"fold {fold} has no evaluation at {path}")
        record = orjson.loads(path.read_bytes())
        if record.get("folds_digest") != folds_digest:
            raise ValueError(
                f"{path}: fold {fold} was evaluated on another fold assignment than the current "
                f"one ({folds_digest}); retrain and evaluate it before reporting"
            )
        records.append(record)
    return records


def per_fold_table(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r["metrics"] for r in records], index=[r["fold"] for r in records])


def summarize(kind: ModelKind, version: str, records: list[dict]) -> dict:
    """Mean and standard deviation (ddof=1, 0 for one fold) of every metric across folds."""
    table = per_fold_table(records)
    stats = table.agg(["mean", "std"]).T.fillna({"std": 0.0})
    return {
        "kind": kind.name,
        "version": version,
        "primary_metric": kind.primary_metric,
        "baseline": float(kind.baseline(records)),
        "folds": records,
        "mean": {k: float(v) for k, v in stats["mean"].items()},
        "std": {k: float(v) for k, v in stats["std"].items()},
    }


def summed_confusion(records: list[dict]) -> np.ndarray | None:
    """The confusion matrix summed over the held-out folds, for kinds that record one."""
    if not all("confusion" in r.get("extra", {}) for r in records):
        return None
    return np.sum([np.asarray(r["extra"]["confusion"]) for r in records], axis=0)


def write_report(folder: Path, report: dict, plots: dict[str, bytes]) -> Path:
    """``report.json``, ``report.md`` and the plots, as one folder written atomically."""
    table = per_fold_table(report["folds"]).round(4)
    table.index = [f"fold {i}" for i in table.index]
    stats = pd.DataFrame({"mean": report["mean"], "std": report["std"]}).round(4)
    images = "".join(f"\n![{name}]({name}.png)\n" for name in plots)
    with atomic_dir(folder, overwrite=True) as tmp:
        for name, png in plots.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        (tmp / "report.md").write_text(
            f"# {report['kind']} report, version {report['version']}\n\n"
            f"{table.to_markdown()}\n\n{stats.to_markdown()}\n\n"
            f"Primary metric {report['primary_metric']}: baseline {report['baseline']:.4f}\n"
            f"{images}"
        )
    return Path(folder)


def promotion_decision(report: dict, floor: float) -> tuple[bool, dict[str, float]]:
    """The gate's rule: the mean primary metric across folds reaches ``floor`` and beats the
    kind's baseline (a trivial model on the same held-out folds)."""
    metric = report["primary_metric"]
    score = float(report["mean"][metric])
    baseline = float(report["baseline"])
    return score >= floor and score > baseline, {
        f"mean_{metric}": score,
        "baseline": baseline,
        "floor": floor,
    }
