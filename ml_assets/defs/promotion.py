"""From a cross-validated version to the champion, per model kind.

    <report>[v] -> <kind>_final[v]               trained on every fold with the CV configuration
                     checks: weights_finite, reloads_identically,
                             beats_champion (blocking: floor, baseline, and the champion)
                -> promoted_<kind>[v]            moves the MLflow alias "champion" to it

The champion is recorded in ``models/<kind>/champion.json`` (version, cross-fold score, MLflow
model version, the champion it replaced) and, when tracking is on, as the registered model's
``champion`` alias. A candidate that fails ``beats_champion`` is never promoted: the champion
stays as it was and the check's metadata says why.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from ml_assets.defs.datasets import load_version
from ml_assets.defs.models import (
    GPU_OP_TAGS,
    KIND_TAG,
    ON_CHANGE,
    check_metadata,
    code_version,
    input_assets,
    model_checks,
    numbers,
    promotion_config,
    train_on_change,
    train_partition,
)
from ml_assets.defs.partitions import (
    blocking_checks,
    checked_partition,
    dataset_versions,
)
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
from ml_assets.train.kinds import ModelKind

CHAMPION_ALIAS = "champion"


def read_champion(home: MLAssetsHome, kind: ModelKind) -> dict | None:
    from ml_assets.train.runs import read_champion as read_record

    return read_record(home.champion_path(kind.name))


def model_version(home: MLAssetsHome, kind: ModelKind, version: str) -> dg.DataVersion:
    """The data version of what is made from a version's final model (the champion, its
    export): the final model's fingerprint."""
    from ml_assets.train.runs import read_lineage

    return dg.DataVersion(read_lineage(home.model_dir(kind.name, version, None))["fingerprint"])


def decide(home: MLAssetsHome, kind: ModelKind, version: str, config) -> tuple[bool, dict]:
    """The champion gate's decision for ``version``: its report against the floor, the
    baseline and the current champion (none when the candidate is the champion itself)."""
    from ml_assets.evaluate.report import promotion_decision, read_report

    champion = read_champion(home, kind)
    if champion is not None and champion["version"] == version:
        champion = None  # re-promoting the champion itself: compare with floor and baseline
    report = read_report(home.report_dir(kind.name, version))
    passed, found = promotion_decision(report, config.floor, champion, config.tolerance)
    if champion is None:
        found["champion_version"] = "none yet"
    return passed, found | {"score": float(report["mean"][kind.primary_metric])}


def build_promotion(kind: ModelKind, report: dg.AssetsDefinition, k: int):
    """The final model (with the configuration the ``k`` folds' models agree on), its checks
    and the promoted champion of one kind (and its export when the kind declares an exporter):
    (assets, checks)."""
    tags = {KIND_TAG: kind.name}
    final = final_asset(kind, report, tags, k)
    promoted = promoted_asset(kind, final, tags)
    assets, checks = [final, promoted], [model_checks(final, kind), champion_gate(kind, final)]
    if kind.export_tolerance is not None:
        exported, matches = build_export(kind, promoted, tags)
        assets.append(exported)
        checks.append(matches)
    return assets, checks


def final_asset(
    kind: ModelKind, report: dg.AssetsDefinition, tags: dict, k: int
) -> dg.AssetsDefinition:
    """``<kind>_final[version]``: trained on every fold with the cross-validated config."""

    @dg.asset(
        name=f"{kind.name}_final",
        partitions_def=dataset_versions,
        deps=[report, *input_assets(kind)],
        group_name="promotion",
        kinds=set(kind.tags),
        tags=tags,
        pool="gpu",
        op_tags=GPU_OP_TAGS,
        automation_condition=train_on_change(kind),
        code_version=code_version(kind),
        description=f"{kind.name} trained on every fold of a version (validated on its test "
        "split when there is one) with the configuration its cross-validation used.",
        output_required=False,  # a version that cannot teach the kind is not trained
    )
    def final(
        context: dg.AssetExecutionContext,
        home: MLAssetsHome,
        training_device: TrainingDevice,
        mlflow_tracking: MLflowTracking,
    ):
        from ml_assets.train.runs import cross_validated_config

        version = context.partition_key
        folds = [home.model_dir(kind.name, version, f) for f in range(k)]
        config = cross_validated_config(kind, folds)
        yield from train_partition(
            context, kind, home, training_device, mlflow_tracking, version, None, config, k
        )

    return final


def champion_gate(kind: ModelKind, final: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """``beats_champion`` (blocking) on the final model."""
    gate = promotion_config(kind, champion=True)

    @dg.multi_asset_check(
        **blocking_checks(
            final,
            {
                "beats_champion": f"Promotion gate: the version's mean {kind.primary_metric} "
                "across folds reaches the floor, beats the baseline, and is not worse than the "
                "current champion's by more than the tolerance."
            },
            op="gate",
        )
    )
    def beats_champion(context: dg.AssetCheckExecutionContext, config: gate, home: MLAssetsHome):
        version = checked_partition(context)
        if version is None:
            return
        passed, found = decide(home, kind, version, config)
        yield dg.AssetCheckResult(
            check_name="beats_champion", passed=passed, metadata=check_metadata(found)
        )

    return beats_champion


def promoted_asset(kind: ModelKind, final: dg.AssetsDefinition, tags: dict) -> dg.AssetsDefinition:
    """``promoted_<kind>[version]``: moves the champion to this version's final model."""
    gate = promotion_config(kind, champion=True)

    @dg.asset(
        name=f"promoted_{kind.name}",
        partitions_def=dataset_versions,
        deps=[final],
        group_name="promotion",
        kinds={"mlflow"},
        tags=tags,
        automation_condition=ON_CHANGE,
        description=f"The champion {kind.name}: this version's final model, promoted because it "
        "passed beats_champion; the MLflow alias 'champion' points at it.",
    )
    def promoted(
        context: dg.AssetExecutionContext,
        config: gate,
        home: MLAssetsHome,
        mlflow_tracking: MLflowTracking,
    ) -> dg.MaterializeResult:
        from ml_assets.train.runs import promote

        version = context.partition_key
        passed, found = decide(home, kind, version, config)
        if not passed:  # a launch by hand past a failed gate: the champion stays
            raise dg.Failure(
                f"version {version} is not promoted: {found['reasons']}",
                metadata=numbers(found),
            )
        record = promote(
            kind.name,
            home.model_dir(kind.name, version, None),
            home.champion_path(kind.name),
            version,
            found["score"],
            mlflow_tracking.tracking(home.mlflow_dir),
            CHAMPION_ALIAS,
        )
        previous = record.get("previous") or {}
        return dg.MaterializeResult(
            data_version=model_version(home, kind, version),
            metadata={
                "version": version,
                f"mean_{kind.primary_metric}": round(record["score"], 4),
                "mlflow_model_version": str(record.get("mlflow_version") or "untracked"),
                "previous_champion": previous.get("version", "none"),
                "previous_mlflow_model_version": str(previous.get("mlflow_version") or "none"),
                "model": dg.MetadataValue.path(record["model"]),
            },
        )

    return promoted


def build_export(kind: ModelKind, promoted: dg.AssetsDefinition, tags: dict):
    """The deployable export of a promoted model and its check against PyTorch."""

    @dg.asset(
        name=f"exported_{kind.name}",
        partitions_def=dataset_versions,
        deps=[promoted],
        group_name="promotion",
        kinds={"onnx"},
        tags=tags,
        automation_condition=ON_CHANGE,
        description=f"The promoted {kind.name} as ONNX (and TorchScript and an OpenVINO IR where "
        "they convert; TensorRT and CoreML refused with the reason), with its class names, "
        "input size and normalization: what a server needs.",
    )
    def exported(context: dg.AssetExecutionContext, home: MLAssetsHome) -> dg.MaterializeResult:
        version = context.partition_key
        out = kind.export(
            home.model_dir(kind.name, version, None), home.exports_dir(kind.name, version)
        )
        return dg.MaterializeResult(
            data_version=model_version(home, kind, version), metadata=export_metadata(out)
        )

    @dg.multi_asset_check(
        **blocking_checks(
            exported,
            {
                "onnx_matches_pytorch": "The ONNX model in onnxruntime and the PyTorch model give "
                "the same outputs on sample images of the version, within the export's stated "
                "tolerance; so does the OpenVINO IR where the export holds one "
                "(openvino_max_abs_diff)."
            },
        )
    )
    def onnx_matches_pytorch(context: dg.AssetCheckExecutionContext, home: MLAssetsHome):
        from ml_assets.train.export import check_onnx

        version = checked_partition(context)
        if version is None:
            return
        found = check_onnx(
            kind,
            home.exports_dir(kind.name, version),
            sample_images(home, version),
            home.model_dir(kind.name, version, None),
        )
        yield dg.AssetCheckResult(
            check_name="onnx_matches_pytorch",
            passed=bool(found["passed"]),
            metadata=numbers({k: v for k, v in found.items() if k != "passed"}),
        )

    return exported, onnx_matches_pytorch


def export_metadata(out: Path) -> dict:
    """An export folder's file sizes, formats, conversion errors and refusals, ONNX opset."""
    from ml_assets.train.export import read_export

    info = read_export(out)
    sizes = {
        f"{f.stem if f.suffix != '.bin' else 'openvino'}_mb": round(f.stat().st_size / 2**20, 2)
        for f in sorted([*out.iterdir(), *out.glob("openvino/*.bin")])
        if f.suffix in {".onnx", ".pt", ".bin"}
    }
    errors = {f"{f}_error": e for f in ("torchscript", "openvino") if (e := info.get(f"{f}_error"))}
    return {
        **sizes,
        "formats": ", ".join(info.get("formats", ())),
        **errors,
        **{f"{f}_refused": reason for f, reason in info.get("refused", {}).items()},
        "opset": int(info.get("opset", 0)),
        "path": dg.MetadataValue.path(str(out)),
    }


def sample_images(home: MLAssetsHome, version: str, count: int = 4):
    """The first ``count`` images of a version as RGB uint8 arrays of one size."""
    import numpy as np
    from PIL import Image

    ds = load_version(home, version)
    files = ds.images.drop_duplicates("image_id")["file_name"].tolist()[:count]
    arrays = []
    for name in files:
        with Image.open(ds.image_path(name)) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    height, width = arrays[0].shape[:2]
    return np.stack([np.asarray(Image.fromarray(a).resize((width, height))) for a in arrays])


class PredictionsConfig(dg.Config):
    kind: str = Field(
        default="yolo_detector",
        description="Model kind whose champion predicts (image_classifier, yolo_detector, ...)",
    )
    folder: str = Field(
        default="",
        description="A folder of new images to predict on; empty: this dataset version's images",
    )


@dg.asset(
    partitions_def=dataset_versions,
    deps=["annotations"],
    group_name="inference",
    kinds={"pytorch"},
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="Batch predictions of a kind's champion over a dataset version's images (or any "
    "folder of images): COCO results JSON for detectors, class probabilities for classifiers.",
)
def predictions(
    context: dg.AssetExecutionContext,
    config: PredictionsConfig,
    home: MLAssetsHome,
    training_device: TrainingDevice,
) -> dg.MaterializeResult:
    from ml_assets.train.predictions import image_files, predictions_table, write_predictions
    from ml_assets.train.registry import kind as kind_named

    version = context.partition_key
    kind = kind_named(config.kind)
    champion = read_champion(home, kind)
    if champion is None:
        raise dg.Failure(f"{kind.name} has no champion yet: promote one (promoted_{kind.name})")
    if config.folder:
        images, ids = image_files(Path(config.folder)), None
    else:
        ds = load_version(home, version)
        unique = ds.images.drop_duplicates("image_id")
        images = [ds.image_path(f) for f in unique["file_name"]]
        ids = unique["image_id"].tolist()
    out = home.predictions_dir(kind.name, version)
    summary = write_predictions(
        kind, Path(champion["model"]), images, training_device.torch_device(), out, ids
    )
    return dg.MaterializeResult(
        metadata={
            **numbers({k: v for k, v in summary.items() if k != "per_class"}),
            "champion_version": champion["version"],
            "source": config.folder or f"dataset version {version}",
            "per_class": dg.MetadataValue.md(predictions_table(summary).to_markdown()),
            "path": dg.MetadataValue.path(str(out)),
        }
    )
