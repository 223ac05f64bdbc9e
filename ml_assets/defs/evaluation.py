"""Evaluations per (version, fold) of the model that lineage names, and reports per version."""

import dagster as dg
import numpy as np
import orjson
import pandas as pd
from pydantic import Field

from ml_assets.data.atomic import write_bytes, write_text
from ml_assets.defs.datasets import load_folds, load_version, md_table
from ml_assets.defs.partitions import dataset_versions, fold_partitions, version_fold, version_folds
from ml_assets.defs.resources import MLAssetsHome, TrainingDevice
from ml_assets.defs.training import RETRAIN, image_classifier
from ml_assets.evaluate.classification import score_classifier, summarize_folds
from ml_assets.evaluate.plots import confusion_png, markdown_image


@dg.asset(
    partitions_def=version_folds,
    deps=[image_classifier],
    group_name="evaluation",
    kinds={"pytorch"},
    automation_condition=RETRAIN,
    description="The classifier of this (version, fold) scored on the crops of its held-out fold.",
)
def classifier_evaluation(
    context: dg.AssetExecutionContext, home: MLAssetsHome, training_device: TrainingDevice
) -> dg.MaterializeResult:
    version, fold = version_fold(context)
    ds = load_version(home, version)
    assignment = load_folds(home, version)
    held_out = assignment.loc[assignment["fold"] == fold, "image_id"]
    # The model of this very partition, as lineage says: never "the latest".
    model_dir = home.model_dir("image_classifier", version, fold)
    metrics, predictions = score_classifier(model_dir, ds, held_out, training_device.torch_device())
    names = [c["name"] for c in metrics["meta"]["classes"]]
    out = home.evaluation_dir("image_classifier", version, fold)
    write_bytes(out / "predictions.parquet", predictions.to_parquet(index=False))
    summary = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "samples")}
    record = {
        **summary,
        "version": version,
        "fold": fold,
        "classes": names,
        "confusion": metrics["confusion"].tolist(),
        "model": str(model_dir),
        "mlflow_run_id": metrics["meta"].get("mlflow_run_id"),
    }
    write_bytes(out / "metrics.json", orjson.dumps(record, option=orjson.OPT_INDENT_2))
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
    records = []
    for key in fold_partitions.get_partition_keys():
        path = home.evaluation_dir("image_classifier", version, int(key)) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"fold {key} of version {version} has no evaluation at {path}")
        records.append(orjson.loads(path.read_bytes()))
    return records


@dg.asset(
    partitions_def=dataset_versions,
    deps=[classifier_evaluation],
    group_name="evaluation",
    kinds={"pandas"},
    automation_condition=RETRAIN,
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
    out = home.report_dir("image_classifier", version)
    write_bytes(out / "confusion.png", png)
    report = {
        "version": version,
        "folds": records,
        "mean": stats["mean"].to_dict(),
        "std": stats["std"].to_dict(),
    }
    write_bytes(out / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))
    write_text(
        out / "report.md",
        f"# Classifier report, version {version}\n\n{folds_table.to_markdown()}\n\n"
        f"{stats.round(4).to_markdown()}\n\n![confusion](confusion.png)\n",
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
    records = read_fold_metrics(home, context.partition_key)
    macro_f1 = float(np.mean([r["macro_f1"] for r in records]))
    confusion = np.sum([np.asarray(r["confusion"]) for r in records], axis=0)
    support = confusion.sum(axis=1)
    # Macro F1 of always answering the majority class: that class scores 2p/(1+p), others 0.
    majority_share = support.max() / support.sum()
    baseline = float(2 * majority_share / (1 + majority_share) / len(support))
    return dg.AssetCheckResult(
        passed=macro_f1 >= config.min_macro_f1 and macro_f1 > baseline,
        metadata={
            "mean_macro_f1": macro_f1,
            "majority_baseline_macro_f1": baseline,
            "bar": config.min_macro_f1,
        },
    )
