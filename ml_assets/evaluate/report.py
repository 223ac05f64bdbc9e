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
        if {"image_id", "category_id", "score"} <= set(scores.predictions.columns):
            write_detections(tmp / "results.json", scores.predictions)
        (tmp / "metrics.json").write_bytes(
            orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        for name, png in scores.plots.items():
            (tmp / f"{name}.png").write_bytes(png)
    return record, scores


def write_detections(path: Path, detections: pd.DataFrame) -> None:
    """Detections as a COCO results file (image_id, category_id, bbox, score)."""
    from ml_assets.evaluate.coco import detections_from_arrays, write_results

    write_results(
        path,
        detections_from_arrays(
            detections["image_id"],
            detections["category_id"],
            detections[["x", "y", "w", "h"]].to_numpy(),
            detections["score"],
        ),
    )


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


# Per-class numbers that sum a class up: F1 (classifiers), AP (detectors), mask IoU (segmenter).
CLASS_METRICS = ("f1", "AP", "mask_iou")


def per_fold_table(records: list[dict]) -> pd.DataFrame:
    """One row of metrics per fold; COCO's -1 ("no ground truth in this area range") becomes
    missing, so means and deviations skip it."""
    table = pd.DataFrame([r["metrics"] for r in records], index=[r["fold"] for r in records])
    return table.mask(table == -1)


def per_class_means(records: list[dict]) -> pd.DataFrame:
    """Each class's numbers averaged over the folds (index: class name)."""
    rows = [row for r in records for row in r.get("per_class", [])]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    name = frame.columns[0]  # the index column the per-fold table was written with
    return frame.groupby(name, sort=False).mean(numeric_only=True)


def summarize(
    kind: ModelKind, version: str, records: list[dict], previous: dict | None = None
) -> dict:
    """Mean and standard deviation (ddof=1, 0 for one fold) of every metric across folds, each
    class's means, and the change against ``previous`` (the report of the dataset version before
    this one) when there is one."""
    table = per_fold_table(records)
    stats = table.agg(["mean", "std"]).T.fillna({"std": 0.0})
    classes = per_class_means(records)
    report = {
        "kind": kind.name,
        "version": version,
        "primary_metric": kind.primary_metric,
        "baseline": float(kind.baseline(records)),
        "folds": records,
        "mean": {k: float(v) for k, v in stats["mean"].items()},
        "std": {k: float(v) for k, v in stats["std"].items()},
        "per_class": classes.reset_index().to_dict("records"),
    }
    if previous is not None:
        report["change"] = compare(report, previous)
    return report


def compare(current: dict, previous: dict, noise: float = 0.01) -> dict:
    """What changed since ``previous``: every mean metric's difference, and which classes got
    better or worse (by more than ``noise``) on the per-class number that sums a class up best
    (:data:`CLASS_METRICS`, else the first one both reports have)."""
    metrics = {
        k: current["mean"][k] - previous["mean"][k]
        for k in current["mean"]
        if k in previous.get("mean", {})
    }
    now = pd.DataFrame(current.get("per_class", []))
    before = pd.DataFrame(previous.get("per_class", []))
    better, worse, column = [], [], None
    if len(now) and len(before):
        key = now.columns[0]
        shared = [c for c in now.columns[1:] if c in before.columns]
        preferred = [c for c in CLASS_METRICS if c in shared] + shared
        if preferred:
            column = preferred[0]
            joined = now.set_index(key)[[column]].join(
                before.set_index(key)[[column]], rsuffix="_before", how="inner"
            )
            delta = joined[column] - joined[f"{column}_before"]
            better = sorted(delta[delta > noise].index.tolist())
            worse = sorted(delta[delta < -noise].index.tolist())
    return {
        "previous_version": previous.get("version"),
        "metrics": metrics,
        "class_metric": column,
        "better_classes": better,
        "worse_classes": worse,
    }


def summed_confusion(records: list[dict]) -> np.ndarray | None:
    """The confusion matrix summed over the held-out folds, for kinds that record one."""
    if not all("confusion" in r.get("extra", {}) for r in records):
        return None
    return np.sum([np.asarray(r["extra"]["confusion"]) for r in records], axis=0)


def report_markdown(report: dict, images: str = "") -> str:
    """The report as Markdown: folds, mean and std, classes, the change since the last version."""
    table = per_fold_table(report["folds"]).round(4)
    table.index = [f"fold {i}" for i in table.index]
    stats = pd.DataFrame({"mean": report["mean"], "std": report["std"]}).round(4)
    parts = [
        f"# {report['kind']} report, version {report['version']}",
        f"Primary metric {report['primary_metric']}: mean "
        f"{report['mean'][report['primary_metric']]:.4f}, baseline {report['baseline']:.4f}",
        "## Folds\n\n" + table.to_markdown(),
        "## Across folds\n\n" + stats.to_markdown(),
    ]
    if report.get("per_class"):
        classes = pd.DataFrame(report["per_class"]).set_index(
            pd.DataFrame(report["per_class"]).columns[0]
        )
        parts.append("## Per class (mean over folds)\n\n" + classes.round(4).to_markdown())
    change = report.get("change")
    if change:
        deltas = pd.Series(change["metrics"], name="change").round(4).to_frame()
        parts.append(
            f"## Since version {change['previous_version']}\n\n{deltas.to_markdown()}\n\n"
            f"Better ({change['class_metric']}): {', '.join(change['better_classes']) or 'none'}"
            f"\n\nWorse ({change['class_metric']}): {', '.join(change['worse_classes']) or 'none'}"
        )
    if images:
        parts.append(images)
    return "\n\n".join(parts) + "\n"


def write_report(folder: Path, report: dict, plots: dict[str, bytes]) -> Path:
    """``report.json``, ``report.md``, a standalone ``report.html`` (plots embedded) and the
    plots as PNG files, as one folder written atomically."""
    import markdown_it

    from ml_assets.evaluate.plots import markdown_image

    files = "".join(f"\n![{name}]({name}.png)\n" for name in plots)
    embedded = "".join(f"\n{markdown_image(png, name)}\n" for name, png in plots.items())
    body = (
        markdown_it.MarkdownIt("commonmark")
        .enable("table")
        .render(report_markdown(report, embedded))
    )
    title = f"{report['kind']} report, version {report['version']}"
    html = (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}img{max-width:100%}</style></head><body>\n"
        f"{body}</body></html>\n"
    )
    with atomic_dir(folder, overwrite=True) as tmp:
        for name, png in plots.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "report.json").write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        (tmp / "report.md").write_text(report_markdown(report, files))
        (tmp / "report.html").write_text(html)
    return Path(folder)


def read_report(folder: Path) -> dict:
    """The ``report.json`` a report folder holds; a clear error when there is none yet."""
    path = Path(folder) / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"no report at {path}: materialize the report first")
    return orjson.loads(path.read_bytes())


def previous_report(folders: list[Path]) -> dict | None:
    """The newest existing report among ``folders`` (report folders of earlier versions, oldest
    first), or None."""
    for folder in reversed(folders):
        if (Path(folder) / "report.json").exists():
            return read_report(folder)
    return None


def promotion_decision(
    report: dict, floor: float, champion: dict | None = None, tolerance: float | None = None
) -> tuple[bool, dict]:
    """The gates' rule: the mean primary metric across folds reaches ``floor`` and beats the
    kind's baseline (a trivial model on the same held-out folds); with a ``champion`` record and
    a ``tolerance``, it is also not worse than the champion's cross-fold score by more than the
    tolerance. Returns whether it passes and the numbers, with the reasons it fails."""
    metric = report["primary_metric"]
    score = float(report["mean"][metric])
    baseline = float(report["baseline"])
    found: dict = {f"mean_{metric}": score, "baseline": baseline, "floor": floor}
    reasons = []
    if score < floor:
        reasons.append(f"mean {metric} {score:.4f} is below the floor {floor:.4f}")
    if score <= baseline:
        reasons.append(f"mean {metric} {score:.4f} does not beat the baseline {baseline:.4f}")
    if champion is not None and tolerance is not None:
        best = float(champion["score"])
        found |= {
            "champion_version": champion["version"],
            f"champion_{metric}": best,
            "tolerance": tolerance,
        }
        if score < best - tolerance:
            reasons.append(
                f"mean {metric} {score:.4f} is worse than the champion's {best:.4f} "
                f"(version {champion['version']}) by more than {tolerance:.4f}"
            )
    if reasons:
        found["reasons"] = "; ".join(reasons)
    return not reasons, found
