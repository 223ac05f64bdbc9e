"""Models per (dataset version, fold): trained on the other folds, in the GPU pool."""

import dagster as dg
from pydantic import Field

from ml_assets.data.folds import TEST_FOLD
from ml_assets.defs.datasets import folds, load_folds, load_version
from ml_assets.defs.partitions import version_fold, version_folds
from ml_assets.defs.resources import MLAssetsHome, TrainingDevice

# On Kubernetes (dagster-k8s run launcher), each training step asks for one GPU.
GPU_OP_TAGS = {
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
}
# Run when an upstream partition is new or updated, but only once its blocking checks passed:
# a failed gate in another run (ingest_job's checks) must stop automation too.
ON_NEW_UPSTREAM = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
)


class ClassifierTrainingConfig(dg.Config):
    model_name: str = Field(
        default="resnet10t", description="Any timm architecture, built without weights"
    )
    img_size: int = Field(
        default=48, gt=0, description="Side of the square object crops, in pixels"
    )
    epochs: int = Field(default=12, gt=0, description="Passes over the training crops")
    batch_size: int = Field(default=32, gt=0, description="Crops per optimizer step")
    lr: float = Field(
        gt=0, default=3e-3, description="Peak learning rate of the one-cycle schedule (AdamW)"
    )
    weight_decay: float = Field(default=0.05, description="AdamW weight decay")
    label_smoothing: float = Field(default=0.1, description="Cross-entropy label smoothing")
    seed: int = Field(default=0, description="Seed for weights init, shuffling and augmentation")


def class_list(ds) -> list[dict]:
    """Classes in category-id order: index i of the model is ``classes[i]``."""
    cats = ds.categories.sort_values("category_id")
    return [
        {"id": int(c), "name": str(n)}
        for c, n in zip(cats["category_id"], cats["name"], strict=True)
    ]


@dg.asset(
    partitions_def=version_folds,
    deps=[folds],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    automation_condition=ON_NEW_UPSTREAM,
    description="A timm classifier of object crops, trained on every fold but this one.",
)
def image_classifier(
    context: dg.AssetExecutionContext,
    config: ClassifierTrainingConfig,
    home: MLAssetsHome,
    training_device: TrainingDevice,
) -> dg.MaterializeResult:
    from ml_assets.train.classifier import (
        ClassifierConfig,
        extract_crops,
        save_classifier,
        train_classifier,
    )
    from ml_assets.train.tracking import mlflow_run, run_url

    version, fold = version_fold(context)
    ds = load_version(home, version)
    assignment, folds_digest = load_folds(home, version)
    train_ids = assignment.loc[~assignment["fold"].isin([fold, TEST_FOLD]), "image_id"]
    classes = class_list(ds)
    spec = ClassifierConfig(**config.model_dump())
    crops = extract_crops(ds, train_ids, [c["id"] for c in classes], size=spec.img_size)
    device = training_device.torch_device()
    context.log.info(f"training {spec.model_name} on {len(crops.labels)} crops, device {device}")
    tags = {"dagster_run_id": context.run_id, "version": version, "fold": str(fold)}
    with mlflow_run(home.mlflow_dir, "image_classifier", f"{version}-fold{fold}", tags) as run:
        import mlflow

        mlflow.log_params(
            {**config.model_dump(), "device": str(device), "train_crops": len(crops.labels)}
        )
        model, history = train_classifier(
            crops,
            [c["name"] for c in classes],
            spec,
            device,
            on_epoch=lambda epoch, row: mlflow.log_metrics(row, step=epoch),
        )
        run_dir = save_classifier(
            model,
            home.model_dir("image_classifier", version, fold),
            spec,
            classes,
            {
                "version": version,
                "fold": fold,
                "folds_digest": folds_digest,
                "mlflow_run_id": run.info.run_id,
            },
        )
        mlflow.log_artifacts(str(run_dir), artifact_path="model")
    last = history.iloc[-1]
    return dg.MaterializeResult(
        metadata={
            "train_images": len(train_ids),
            "train_crops": len(crops.labels),
            "epochs": spec.epochs,
            "final_train_loss": float(last["train_loss"]),
            "final_train_accuracy": float(last["train_accuracy"]),
            "train_seconds": float(history["seconds"].sum()),
            "device": str(device),
            "history": dg.MetadataValue.md(history.round(4).to_markdown(index=False)),
            "path": dg.MetadataValue.path(str(run_dir)),
            "mlflow_run": dg.MetadataValue.url(run_url(run)),
        }
    )
