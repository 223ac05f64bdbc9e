"""Evaluations per fold, reports per version and the promotion gate's rule, for every kind.

An evaluation (``ml_assets.train.evaluation.evaluate_fold``) scores the model that lineage names
(the same version and fold) on its held-out fold and writes ``metrics.json`` (the record reports
read), ``predictions.parquet`` and its plots into one folder atomically. A report reads every fold's record, refuses records of another fold
assignment, and writes the mean and standard deviation of each metric across folds with the
baseline of the kind's primary metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.tables import Dataset


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
    kind: str,
    version: str,
    records: list[dict],
    primary_metric: str,
    baseline: float,
    previous: dict | None = None,
) -> dict:
    """The report of ``kind`` (its name) on ``version``: mean and standard deviation (ddof=1, 0
    for one fold) of every metric across folds, each class's means, the ``primary_metric`` and
    its ``baseline`` (a trivial model on the same held-out folds), and the change against
    ``previous`` (the report of the dataset version before this one) when there is one."""
    table = per_fold_table(records)
    stats = table.agg(["mean", "std"]).T.fillna({"std": 0.0})
    classes = per_class_means(records)
    report = {
        "kind": kind,
        "version": version,
        "primary_metric": primary_metric,
        "baseline": float(baseline),
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


def class_table(report: dict) -> pd.DataFrame:
    """A report's per-class means as a table indexed by class."""
    classes = pd.DataFrame(report.get("per_class", []))
    return classes.set_index(classes.columns[0]) if len(classes.columns) else classes


def markdown_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A table as Markdown, numbers rounded to 4 places, missing ones (NaN) as n/a."""
    rounded = frame.round(4)
    return rounded.astype(object).where(rounded.notna(), "n/a").to_markdown(index=index)


def data_change(folder: Path) -> str | None:
    """The line of a version_diff folder ("3 relabelled since ab12cd34ef56"), None when
    version_diff has not run for the version."""
    path = Path(folder) / "summary.json"
    return orjson.loads(path.read_bytes())["summary"] if path.exists() else None


def report_markdown(report: dict, images: str = "", decision: str = "") -> str:
    """The report as Markdown: the ``decision`` line (see :func:`decision_line`) when given, folds,
    mean and std, classes, the change since the last version; undefined values read n/a."""
    table = per_fold_table(report["folds"])
    table.index = [f"fold {i}" for i in table.index]
    stats = pd.DataFrame({"mean": report["mean"], "std": report["std"]}, dtype=float)
    metric = report["primary_metric"]
    parts = [
        f"# {report['kind']} report, version {report['version']}",
        *([f"**{decision}**"] if decision else []),
        *([f"Data: {report['data_change']}"] if report.get("data_change") else []),
        f"Primary metric {metric}: mean {_number(report['mean'][metric]):.4f}, "
        f"baseline {report['baseline']:.4f}",
        "## Folds\n\n" + markdown_table(table),
        "## Across folds\n\n" + markdown_table(stats),
    ]
    if report.get("per_class"):
        parts.append("## Per class (mean over folds)\n\n" + markdown_table(class_table(report)))
    change = report.get("change")
    if change:
        deltas = markdown_table(pd.Series(change["metrics"], name="change", dtype=float).to_frame())
        parts.append(
            f"## Since version {change['previous_version']}\n\n{deltas}\n\n"
            f"Better ({change['class_metric']}): {', '.join(change['better_classes']) or 'none'}"
            f"\n\nWorse ({change['class_metric']}): {', '.join(change['worse_classes']) or 'none'}"
        )
    if images:
        parts.append(images)
    return "\n\n".join(parts) + "\n"


def write_report(folder: Path, report: dict, plots: dict[str, bytes], decision: str = "") -> Path:
    """``report.json``, ``report.md``, a standalone ``report.html`` (plots embedded) and the
    plots as PNG files, as one folder written atomically; ``decision`` (the gate's verdict as
    :func:`decision_line` words it) comes first after the title."""
    import markdown_it

    from ml_assets.evaluate.plots import markdown_image

    files = "".join(f"\n![{name}]({name}.png)\n" for name in plots)
    embedded = "".join(f"\n{markdown_image(png, name)}\n" for name, png in plots.items())
    body = (
        markdown_it.MarkdownIt("commonmark")
        .enable("table")
        .render(report_markdown(report, embedded, decision))
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
        (tmp / "report.md").write_text(report_markdown(report, files, decision))
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
    score = _number(report["mean"][metric])
    baseline = float(report["baseline"])
    found: dict = {f"mean_{metric}": score, "baseline": baseline, "floor": floor}
    reasons = []
    if math.isnan(score):  # no fold defines it (COCO's -1): nothing to promote on
        reasons.append(f"mean {metric} is undefined on every fold")
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


# --- What the UI shows: the decision first --------------------------------------------------
# Dagster shows metadata in insertion order, so these functions return ordered dicts of plain
# values: numbers stay numbers (the UI plots them across materializations), text is text, and
# ``Markdown``, ``Link`` and ``Path`` values say how the Dagster layer wraps them
# (``MetadataValue.md``, ``.url``, ``.path``).

UNDEFINED = "n/a: no objects of that size"
"""What COCO's -1 means (no ground truth in that area range: AP_large without large objects)."""


class Markdown(str):
    """Metadata text the UI renders as Markdown: a table, an embedded plot."""


class Link(str):
    """Metadata text that is an address to open."""


def _number(value) -> float:
    """A stored number as a float; None (how JSON keeps NaN) as NaN."""
    return float("nan") if value is None else float(value)


def _shown(value) -> float | int | str:
    """A number as the UI shows it: rounded to what a person reads; COCO's -1 and NaN as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _number(value)
    if number == -1:
        return UNDEFINED
    return "n/a: undefined" if math.isnan(number) else round(number, 4)


def _table(frame: pd.DataFrame, index: bool = True) -> Markdown:
    return Markdown(markdown_table(frame, index))


def _links(links: dict[str, str | Path] | None) -> dict[str, Link | Path]:
    return {k: v if isinstance(v, Path) else Link(v) for k, v in (links or {}).items()}


def decision_line(report: dict, floor: float) -> tuple[bool, str]:
    """The gate's verdict on ``report`` at ``floor`` (:func:`promotion_decision`, the one home
    of the rule) as one line: ``promotable: macro_f1 0.952 ± 0.004 over 3 folds; floor 0.50,
    baseline 0.147``, or ``not promotable: <the reasons> (<the same numbers>)``."""
    passed, found = promotion_decision(report, floor)
    metric = report["primary_metric"]
    folds = len(report["folds"])
    mean, std = (_number(report[s].get(metric)) for s in ("mean", "std"))
    spread = "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"
    headline = (
        f"{metric} {spread} over {folds} fold{'s' * (folds != 1)}; floor {floor:.2f}, "
        f"baseline {report['baseline']:.3f}"
    )
    if passed:
        return True, f"promotable: {headline}"
    return False, f"not promotable: {found['reasons']} ({headline})"


def cross_fold_values(report: dict) -> dict[str, float | str]:
    """``mean_<metric>`` and ``std_<metric>`` of every metric, side by side. Where folds left a
    metric undefined (COCO's -1, NaN), text says so instead of a number: both read
    :data:`UNDEFINED` when no fold has objects of that size, and the deviation reads n/a when
    only one of several folds defines the metric (not a deviation of 0)."""
    raw = pd.DataFrame([r["metrics"] for r in report["folds"]])
    defined = per_fold_table(report["folds"]).notna().sum()
    folds = len(raw)
    values: dict[str, float | str] = {}
    for metric, mean in report["mean"].items():
        sentinel = metric in raw and bool((raw[metric] == -1).any())
        count = int(defined.get(metric, 0))
        if count == 0:
            values[f"mean_{metric}"] = values[f"std_{metric}"] = (
                UNDEFINED if sentinel else "n/a: undefined on every fold"
            )
            continue
        values[f"mean_{metric}"] = round(_number(mean), 4)
        if count == 1 and folds > 1:
            why = " (the others have no objects of that size)" if sentinel else ""
            values[f"std_{metric}"] = f"n/a: defined on 1 of {folds} folds{why}"
        else:
            values[f"std_{metric}"] = round(_number(report["std"].get(metric)), 4)
    return values


def report_view(
    report: dict,
    plots: dict[str, bytes],
    floor: float,
    links: dict[str, str | Path] | None = None,
) -> dict:
    """A report's metadata in the order a person decides by: the ``decision`` line, the primary
    metric's mean and std, the baseline and the floor; the per-class table and the ``plots``;
    the folds and the per-fold table, the change since the previous version, the ``links``
    (an address: ``Link``; a ``Path``: a file); then every other ``mean_*``/``std_*``.
    ``report`` is :func:`summarize`'s (or :func:`read_report`'s); ``floor`` the gate's."""
    from ml_assets.evaluate.plots import markdown_image

    metric = report["primary_metric"]
    values = cross_fold_values(report)
    view: dict = {
        "decision": decision_line(report, floor)[1],
        **({"data_change": report["data_change"]} if report.get("data_change") else {}),
        f"mean_{metric}": values.pop(f"mean_{metric}"),
        f"std_{metric}": values.pop(f"std_{metric}"),
        "baseline": round(float(report["baseline"]), 4),
        "floor": float(floor),
    }
    classes = class_table(report)
    if len(classes):
        view["per_class"] = _table(classes)
    view |= {name: Markdown(markdown_image(png, name)) for name, png in plots.items()}
    view["folds"] = len(report["folds"])
    view["per_fold"] = _table(per_fold_table(report["folds"]))
    change = report.get("change")
    if change:
        view["previous_version"] = change["previous_version"]
        delta = _number(change["metrics"].get(metric))  # a difference: -1 is a number here
        view[f"change_{metric}"] = "n/a: undefined" if math.isnan(delta) else round(delta, 4)
        view["better_classes"] = ", ".join(change["better_classes"]) or "none"
        view["worse_classes"] = ", ".join(change["worse_classes"]) or "none"
    return view | _links(links) | values


def evaluation_view(
    primary_metric: str,
    scores,
    links: dict[str, str | Path] | None = None,
) -> dict:
    """A fold's evaluation metadata: the primary metric first, the per-class table and the
    plots, every other metric, then the ``links``. ``scores``: what the kind's ``score``
    returned (metrics, per_class, plots); COCO's -1 reads :data:`UNDEFINED`."""
    from ml_assets.evaluate.plots import markdown_image

    values = {k: _shown(v) for k, v in scores.metrics.items()}
    view = {primary_metric: values.pop(primary_metric)} if primary_metric in values else {}
    if len(scores.per_class):
        view["per_class"] = _table(scores.per_class)
    view |= {name: Markdown(markdown_image(png, name)) for name, png in scores.plots.items()}
    return view | values | _links(links)


LINKS = ("path", "mlflow_run", "registered_model")
"""The model asset's metadata that leads elsewhere: shown last."""


def trained_view(metadata: dict, primary_metric: str) -> dict:
    """A fold model's metadata reordered: epochs run and the numbers naming the primary metric
    (``best_val_macro_f1``) first, then the rest as given, then :data:`LINKS`."""
    words = primary_metric.split("_")

    def names_it(key: str) -> bool:
        parts = key.split("_")
        return any(parts[i : i + len(words)] == words for i in range(len(parts)))

    first = [k for k in metadata if k == "epochs_run"] + [k for k in metadata if names_it(k)]
    last = [k for k in LINKS if k in metadata]
    rest = [k for k in metadata if k not in first and k not in last]
    return {k: metadata[k] for k in [*first, *rest, *last]}


# --- The plots a report has: every fold at once ---------------------------------------------


def read_fold_predictions(folders: dict[int, Path]) -> pd.DataFrame | None:
    """Every fold's ``predictions.parquet`` as one table with a ``fold`` column; None when a
    fold has none (an evaluation written without predictions)."""
    parts = []
    for fold, folder in sorted(folders.items()):
        path = Path(folder) / "predictions.parquet"
        if not path.exists():
            return None
        parts.append(pd.read_parquet(path).assign(fold=fold))
    return pd.concat(parts, ignore_index=True) if parts else None


def pooled_reliability(predictions: pd.DataFrame) -> pd.DataFrame:
    """The reliability table (:func:`ml_assets.evaluate.classification.calibration`'s) of every
    fold's predictions together, from each one's ``confidence`` and whether it was right."""
    from ml_assets.evaluate.classification import calibration

    right = (predictions["true"] == predictions["predicted"]).to_numpy()
    confidence = predictions["confidence"].to_numpy(dtype=float)
    # calibration() bins each sample's top probability and checks whether its class is the
    # true one: rows [confidence, 0] with true class 0 exactly when right give it both.
    probabilities = np.column_stack([confidence, np.zeros_like(confidence)])
    return calibration(np.where(right, 0, 1), probabilities)[1]


def report_plots(
    records: list[dict],
    folders: dict[int, Path],
    ds: Dataset | Callable[[], Dataset] | None = None,
    assignment: pd.DataFrame | None = None,
) -> dict[str, bytes]:
    """The plots of a report, over every held-out fold at once, chosen by what the evaluations
    saved: a confusion matrix summed over folds and the reliability diagram of all predictions
    (classifiers); precision-recall curves of all folds' detections scored together and a few
    held-out images with their detections (detectors); the distribution of per-object mask IoU
    against the box-filling baseline (segmenters). ``folders``: fold -> evaluation folder;
    ``ds`` the version's dataset (or a function that reads it, called only when needed) and
    ``assignment`` its folds (which images each held out), needed for detectors."""
    from ml_assets.data.folds import held_out_ids
    from ml_assets.evaluate.detection import DETECTION_COLUMNS, detection_scores
    from ml_assets.evaluate.plots import confusion_png, histograms_png, reliability_png

    plots = {}
    confusion = summed_confusion(records)
    if confusion is not None:
        names = records[0]["extra"]["classes"]
        plots["confusion_matrix"] = confusion_png(confusion, names, "all folds, summed")
    predictions = read_fold_predictions(folders)
    columns = set() if predictions is None else set(predictions.columns)
    if {"true", "predicted", "confidence"} <= columns:
        plots["reliability"] = reliability_png(pooled_reliability(predictions), "all folds")
    if set(DETECTION_COLUMNS) <= columns:
        if ds is None or assignment is None:
            raise ValueError("detections are scored over all folds: pass the dataset and folds")
        held_out = [i for r in records for i in held_out_ids(assignment, r["fold"])]
        ds = ds() if callable(ds) else ds
        pooled = detection_scores(ds, held_out, predictions[DETECTION_COLUMNS])
        plots["pr_curves"] = pooled.plots["pr_curves"]
        plots["sample_detections"] = pooled.plots["samples"]
    if {"mask_iou", "box_mask_iou"} <= columns:
        plots["mask_iou"] = histograms_png(
            {"model": predictions["mask_iou"], "box-filling baseline": predictions["box_mask_iou"]},
            "per-object mask IoU, all folds",
            "mask IoU",
        )
    return plots
