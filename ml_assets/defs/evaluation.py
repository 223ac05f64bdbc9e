"""Evaluations per (version, fold) of the model that lineage names, and reports per version."""

import dagster as dg
import numpy as np
import orjson
import pandas as pd
from pydantic import Field

from ml_assets.data.atomic import atomic_dir
from ml_assets.defs.datasets import load_folds, load_version, md_table
from ml_assets.defs.partitions import dataset_versions, fold_partitions, version_fold, version_folds
from ml_assets.defs.resources import MLAssetsHome, TrainingDevice
from ml_assets.defs.training import GPU_OP_TAGS, ON_NEW_UPSTREAM, image_classifier
from ml_assets.evaluate.classification import (
    majority_baseline_macro_f1,
    score_classifier,
    summarize_folds,
)
from ml_assets.evaluate.plots import confusion_png, markdown_image


@dg.asset(
    partitions_def=version_folds,
    deps=[image_classifier],
    group_name="evaluation",
    kinds={"pytorch"},
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    automation_condition=ON_NEW_UPSTREAM,
    description="The classifier of this (version, fold) scored on the crops of its held-out fold.",
)
def classifier_evaluation(
    context: dg.AssetExecutionContext, home: MLAssetsHome, training_device: TrainingDevice
) -> dg.MaterializeResult:
    version, fold = version_fold(context)
    ds = load_version(home, version)
    assignment, folds_digest = load_folds(home, version)
    held_out = assignment.loc[assignment["fold"] == fold, "image_id"]
    # The model of this very partition, as lineage says: never "the latest".
    model_dir = home.model_dir("image_classifier", version, fold)
    metrics, predictions = score_classifier(model_dir, ds, held_out, training_device.torch_device())
    if metrics["meta"].get("folds_digest") != folds_digest:
        raise ValueError(
            f"{model_dir}: this model was trained on another fold assignment than the current "
            f"folds of {version} ({folds_digest}); rematerialize image_classifier[{fold}|{version}]"
        )
    names = [c["name"] for c in metrics["meta"]["classes"]]
    summary = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "samples")}
    record = {
        **summary,
        "version": version,
        "fold": fold,
        "classes": names,
        "confusion": metrics["confusion"].tolist(),
        "model": str(model_dir),
        "folds_digest": folds_digest,
        "mlflow_run_id": metrics["meta"].get("mlflow_run_id"),
    }
    out = home.evaluation_dir("image_classifier", version, fold)
    with atomic_dir(out, overwrite=True) as tmp:
        predictions.to_parquet(tmp / "predictions.parquet", index=False)
        (tmp / "metrics.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    png = confusion_png(metrics["confusion"], names, f"{version} fold {fold}")
    return dg.MaterializeResult(
        metadata={
            **summary,
            "per_class": md_table(metrics["per_class"].round(4)),
            "confusion_matrix": dg.MetadataValue.md(markdown_image(png, "confusion matrix")),
            "model": dg.MetadataValue.path(record["model"]),
            "path": dg.MetadataValue.path(str(out)),
        }
    )


def read_fold_metrics(home: MLAssetsHome, version: str) -> list[dict]:
    """Every fold's evaluation of ``version``, all from the current fold assignment."""
    _, folds_digest = load_folds(home, version)
    records = []
    for key in fold_partitions.get_partition_keys():
        path = home.evaluation_dir("image_classifier", version, int(key)) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"fold {key} of version {version} has no evaluation at {path}")
        record = orjson.loads(path.read_bytes())
        if record.get("folds_digest") != folds_digest:
            raise ValueError(
                f"{path}: fold {key} was evaluated on another fold assignment than the current "
                f"one ({folds_digest}); retrain and evaluate it before reporting"
            )
        records.append(record)
    return records


@dg.asset(
    partitions_def=dataset_versions,
    deps=[classifier_evaluation],
    group_name="evaluation",
    kinds={"pandas"},
    automation_condition=ON_NEW_UPSTREAM,
    description="Cross-validated classifier quality of a dataset version: every fold, mean and "
    "standard deviation, and the confusion matrix summed over the held-out folds.",
)
def classifier_report(
    context: dg.AssetExecutionContext, home: MLAssetsHome
) -> dg.MaterializeResult:
    version = context.partition_key
    records = read_fold_metrics(home, version)
    per_fold = pd.DataFrame(records).set_index("fold")
    stats = summarize_folds(per_fold)
    names = records[0]["classes"]
    confusion = np.sum([np.asarray(r["confusion"]) for r in records], axis=0)
    png = confusion_png(confusion, names, f"{version}: all held-out folds")
    folds_table = per_fold[["accuracy", "balanced_accuracy", "macro_f1", "samples"]].round(4)
    report = {
        "version": version,
        "folds": records,
        "mean": stats["mean"].to_dict(),
        "std": stats["std"].to_dict(),
    }
    out = home.report_dir("image_classifier", version)
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "confusion.png").write_bytes(png)
        (tmp / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        (tmp / "report.md").write_text(
            f"# Classifier report, version {version}\n\n{folds_table.to_markdown()}\n\n"
            f"{stats.round(4).to_markdown()}\n\n![confusion](confusion.png)\n"
        )
    return dg.MaterializeResult(
        metadata={
            **{f"mean_{m}": float(v) for m, v in stats["mean"].items()},
            **{f"std_{m}": float(v) for m, v in stats["std"].items()},
            "folds": len(records),
            "per_fold": md_table(folds_table),
            "confusion_matrix": dg.MetadataValue.md(markdown_image(png, "confusion matrix")),
            "path": dg.MetadataValue.path(str(out)),
        }
    )


class PromotionConfig(dg.Config):
    min_macro_f1: float = Field(
        default=0.5, description="Least mean macro F1 across folds to promote"
    )


@dg.asset_check(
    asset=classifier_report,
    blocking=True,
    description="Promotion gate: mean macro F1 over held-out folds reaches the bar and beats "
    "always predicting the most common class.",
)
def classifier_promotable(
    context: dg.AssetCheckExecutionContext, config: PromotionConfig, home: MLAssetsHome
) -> dg.AssetCheckResult:
    path = home.report_dir("image_classifier", context.partition_key) / "report.json"
    records = orjson.loads(path.read_bytes())["folds"]
    macro_f1 = float(np.mean([r["macro_f1"] for r in records]))
    baseline = majority_baseline_macro_f1(np.sum([r["confusion"] for r in records], axis=0))
    return dg.AssetCheckResult(
        passed=macro_f1 >= config.min_macro_f1 and macro_f1 > baseline,
        metadata={
            "mean_macro_f1": macro_f1,
            "majority_baseline_macro_f1": baseline,
            "bar": config.min_macro_f1,
        },
    )
