"""Data quality per dataset version, from what the folds already know (no extra training).

    <kind>_label_issues[version]   per kind, after its evaluations: labels most likely wrong
      check: <kind>_label_issues_share (warning, non-blocking)
    version_diff[version]          what changed since the previous version of the same landing
    image_issues[version]          cleanvision's broken images and duplicates (leaks across folds)
      check: image_issues_share (warning, non-blocking)
    to_label_next[version]         unlabelled images ranked by a champion's uncertainty, diverse

The first three are automated like the rest of the graph (``ON_CHANGE``): a new version gets its
diff and image issues once ingested, its label issues once every fold's evaluation is there.
``to_label_next`` runs when asked (it reads the champion of the kind you label for).

Results are written under ``<home>/quality/<asset>/<version>`` (Parquet and a gallery PNG),
atomically; the pure logic is ``ml_assets.evaluate.quality``.
"""

from pathlib import Path

import dagster as dg
import orjson
import pandas as pd
from pydantic import Field

from ml_assets.data.folds import fold_numbers
from ml_assets.defs.datasets import load_folds, load_version
from ml_assets.defs.models import GPU_OP_TAGS, ON_CHANGE, md_frame
from ml_assets.defs.partitions import checked_partition, dataset_versions
from ml_assets.defs.promotion import PredictionsConfig, read_champion
from ml_assets.defs.resources import MLAssetsHome, TrainingDevice
from ml_assets.train.kinds import ModelKind

# What every quality asset is: per dataset version, in the quality group, written with pandas.
QUALITY = {"partitions_def": dataset_versions, "group_name": "quality", "kinds": {"pandas"}}


class LabelIssuesConfig(dg.Config):
    confident: float = Field(
        default=0.5,
        description="Least detection score that can claim an overlooked or a swapped box",
    )
    located: float = Field(
        default=0.3, description="Least detection score that may show where a box belongs"
    )
    threshold: float = Field(
        default=0.5, description="A box is an issue when cleanlab's quality is below this"
    )
    gallery: int = Field(default=12, description="Worst issues drawn in the gallery")


class ShareConfig(dg.Config):
    warn_share: float = Field(
        default=0.05, description="Warn when issues exceed this share of the version"
    )


def evaluation_folders(home: MLAssetsHome, kind: str, version: str, assignment) -> dict:
    """The evaluation folder of every fold ``version`` was split into."""
    return {f: home.evaluation_dir(kind, version, f) for f in fold_numbers(assignment)}


def find_label_issues(
    home: MLAssetsHome, kind: ModelKind, version: str, **thresholds
) -> pd.DataFrame:
    """The label issues of ``kind`` on ``version`` from every fold's evaluation (what the asset
    and ``ml-assets label-issues`` compute)."""
    from ml_assets.evaluate.quality import label_issues
    from ml_assets.evaluate.report import read_fold_predictions

    if not kind.held_out:
        raise ValueError(
            f"{kind.name} has no label issues: its held-out predictions hold neither classes "
            "nor boxes"
        )
    ds = load_version(home, version)
    assignment, _ = load_folds(home, version)
    folders = evaluation_folders(home, kind.name, version, assignment)
    predictions = read_fold_predictions(folders)
    if predictions is None:
        missing = [f for f, p in folders.items() if not (p / "predictions.parquet").exists()]
        raise FileNotFoundError(
            f"{folders[missing[0]]}: no predictions of fold {missing[0]}; materialize "
            f"{kind.evaluation_name} for every fold of {version}"
        )
    held = assignment.loc[assignment["fold"] >= 0, "image_id"].tolist()
    return label_issues(ds, predictions, kind.held_out, held, **thresholds)


def write_frame(
    folder: Path,
    frames: dict[str, pd.DataFrame],
    png: dict[str, bytes],
    texts: dict[str, str] | None = None,
) -> Path:
    from ml_assets.data.atomic import atomic_dir

    with atomic_dir(folder, overwrite=True) as tmp:
        for name, frame in frames.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        for name, data in png.items():
            (tmp / f"{name}.png").write_bytes(data)
        for name, data in (texts or {}).items():
            (tmp / name).write_text(data)
    return folder


def label_issues_name(kind: ModelKind) -> str:
    return f"{kind.name}_label_issues"


def build_label_issues(kind: ModelKind) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The label-issues asset of one kind (after its evaluations) and its warning check."""
    evaluation = dg.AssetKey(kind.evaluation_name)
    name = label_issues_name(kind)

    @dg.asset(
        name=name,
        deps=[evaluation],
        **QUALITY,
        automation_condition=ON_CHANGE,  # once every fold's evaluation is there, or changed
        tags={"ml_assets/kind": kind.name},
        description=f"Labels most likely wrong in a dataset version, from {kind.name}'s "
        "out-of-fold predictions of every fold (cleanlab): file, record, type, score, given "
        "and suggested label.",
    )
    def label_issues(
        context: dg.AssetExecutionContext, config: LabelIssuesConfig, home: MLAssetsHome
    ) -> dg.MaterializeResult:
        from ml_assets.evaluate.plots import markdown_image
        from ml_assets.evaluate.quality import gallery_png, issue_counts

        version = context.partition_key
        thresholds = config.model_dump(exclude={"gallery"})
        found = find_label_issues(home, kind, version, **thresholds)
        ds = load_version(home, version)
        png = gallery_png(ds, found, config.gallery)
        out = write_frame(
            home.quality_dir(name, version), {"label_issues": found}, {"gallery": png}
        )
        boxes = max(1, len(ds.annotations))
        return dg.MaterializeResult(
            metadata={
                "issues": len(found),
                "share": round(len(found) / boxes, 4),
                **{f"issues_{k}": v for k, v in issue_counts(found).items()},
                "worst": md_frame(
                    found.head(20)[["file", "record", "type", "score", "given", "suggested"]],
                    index=False,
                ),
                "gallery": dg.MetadataValue.md(markdown_image(png, "worst label issues")),
                "path": dg.MetadataValue.path(str(out)),
            }
        )

    text = "Warns when label issues exceed a share of the version's annotations."
    return label_issues, share_check(label_issues, f"{name}_share", "label_issues", text)


def per_kind(kinds: list[ModelKind]) -> list[tuple]:
    """``build_label_issues`` of every kind whose held-out predictions hold classes or boxes
    (``kind.held_out``): (asset, check) pairs."""
    return [build_label_issues(k) for k in kinds if k.held_out]


def share_check(
    asset: dg.AssetsDefinition, name: str, table: str, text: str
) -> dg.AssetChecksDefinition:
    """A non-blocking check of a quality asset: a warning when the rows of its ``table`` name
    more than ``warn_share`` of the version (annotations for label issues, else images)."""

    @dg.multi_asset_check(
        name=f"{asset.key.to_python_identifier()}_share_check",
        can_subset=True,
        specs=[
            dg.AssetCheckSpec(
                name,
                asset=asset,
                blocking=False,
                description=text,
                partitions_def=dataset_versions,
            )
        ],
    )
    def check(context: dg.AssetCheckExecutionContext, config: ShareConfig, home: MLAssetsHome):
        version = checked_partition(context)
        if version is None:
            return
        where = home.quality_dir(asset.key.to_user_string(), version) / f"{table}.parquet"
        found = pd.read_parquet(where)
        ds = load_version(home, version)
        by_image = table != "label_issues"
        rows = found["file"].nunique() if by_image else len(found)
        share = rows / max(1, len(ds.images if by_image else ds.annotations))
        yield dg.AssetCheckResult(
            check_name=name,
            passed=share <= config.warn_share,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"share": round(share, 4), "warn_share": config.warn_share, "rows": rows},
        )

    return check


def previous_version(
    context: dg.AssetExecutionContext, home: MLAssetsHome, version: str
) -> str | None:
    """The latest version registered before ``version`` from the same landing location whose
    tables exist."""
    versions = context.instance.get_dynamic_partitions(dataset_versions.name)
    earlier = versions[: versions.index(version)] if version in versions else []
    landing = home.store.landing_of(version)
    for candidate in reversed(earlier):
        try:
            same = home.store.landing_of(candidate) == landing
        except FileNotFoundError:
            continue
        if same and (home.tables_dir(candidate) / "images.parquet").exists():
            return candidate
    return None


class DiffConfig(dg.Config):
    iou_threshold: float = Field(
        default=0.5, description="A box overlapping its old place less than this has moved"
    )


@dg.asset(
    deps=["annotations"],
    **QUALITY,
    automation_condition=ON_CHANGE,
    description="What changed since the previous version of the same dataset (matched by "
    "content): images added, removed, changed; annotations added, removed, relabelled, moved; "
    "the class histogram's shift.",
)
def version_diff(
    context: dg.AssetExecutionContext, config: DiffConfig, home: MLAssetsHome
) -> dg.MaterializeResult:
    from ml_assets.evaluate.quality import diff_line
    from ml_assets.evaluate.quality import version_diff as diff

    version = context.partition_key
    folder = home.quality_dir("version_diff", version)
    previous = previous_version(context, home, version)
    if previous is None:
        line = "first version of this dataset"
        write_frame(folder, {}, {}, {"summary.json": orjson.dumps({"summary": line}).decode()})
        return dg.MaterializeResult(metadata={"summary": line}, data_version=dg.DataVersion(line))
    found = diff(load_version(home, previous), load_version(home, version), config.iou_threshold)
    line = diff_line(found["counts"], previous)
    summary = {"summary": line, "previous_version": previous, "counts": found["counts"]}
    out = write_frame(
        folder,
        {
            "images": found["images"],
            "annotations": found["annotations"],
            "histogram": found["histogram"].reset_index(names="class"),
        },
        {},
        {"summary.json": orjson.dumps(summary).decode()},
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(line),  # what the report shows: the same line, nothing due
        metadata={
            "summary": line,
            "previous_version": previous,
            **found["counts"],
            "class_histogram": md_frame(found["histogram"]),
            "changes": md_frame(found["annotations"].head(50), index=False),
            "path": dg.MetadataValue.path(str(out)),
        },
    )


@dg.asset(
    deps=["folds"],
    **QUALITY,
    automation_condition=ON_CHANGE,
    description="Images broken in ways labels cannot fix (cleanvision, model-free): blurry, too "
    "dark or light, low information, odd size or aspect, exact and near duplicates; duplicates "
    "in different folds are leaks.",
)
def image_issues(context: dg.AssetExecutionContext, home: MLAssetsHome) -> dg.MaterializeResult:
    from ml_assets.evaluate.quality import image_issues as find

    version = context.partition_key
    assignment, _ = load_folds(home, version)
    found = find(load_version(home, version), assignment)
    out = write_frame(home.quality_dir("image_issues", version), {"image_issues": found}, {})
    counts = {f"issues_{k}": int(v) for k, v in found["type"].value_counts().items()}
    return dg.MaterializeResult(
        metadata={
            "images_with_issues": int(found["file"].nunique()),
            **counts,
            "leaks_across_folds": int(found["leak"].sum()),
            "issues": md_frame(found.head(50), index=False),
            "path": dg.MetadataValue.path(str(out)),
        }
    )


image_issues_share = share_check(
    image_issues,
    "image_issues_share",
    "image_issues",
    "Warns when images with issues exceed a share of the version.",
)


class LabelNextConfig(PredictionsConfig):
    """The predictions' ``kind`` and ``folder`` (empty: the version's images without
    annotations), and how the ranking is shown."""

    distance: int = Field(
        default=6,
        description="Images whose perceptual hashes differ by at most this many bits (of 64) "
        "are near duplicates: all but the most uncertain are pushed to the end",
    )
    gallery: int = Field(default=12, description="Top images drawn in the gallery")


def ranked_by_uncertainty(kind, model: Path, paths: list, device, distance: int) -> pd.DataFrame:
    """``paths`` ranked by how unsure ``model`` is of them, near duplicates (within
    ``distance`` bits) after the image they copy."""
    from ml_assets.evaluate.quality import diverse_order, image_hashes, uncertainty

    if not paths:
        return pd.DataFrame(columns=["file", "uncertainty", "duplicate_of"])
    predicted = kind.predict(model, paths, device).assign(file=lambda f: f["file"].astype(str))
    ranked = uncertainty(predicted, [str(p) for p in paths])
    return diverse_order(ranked, image_hashes(ranked["file"]), distance)


@dg.asset(
    deps=["annotations"],
    **(QUALITY | {"kinds": {"pandas", "pytorch"}}),
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="The unlabelled images of a version (or of a folder) most worth labelling next: "
    "ranked by the uncertainty of the champion of config kind (classifiers: the smallest margin between the two "
    "likeliest classes; detectors: the least confident detection, images with none first), "
    "near duplicates pushed down; to_label_next.txt (one path a line) and a gallery.",
)
def to_label_next(
    context: dg.AssetExecutionContext,
    config: LabelNextConfig,
    home: MLAssetsHome,
    training_device: TrainingDevice,
) -> dg.MaterializeResult:
    from ml_assets.evaluate.plots import markdown_image
    from ml_assets.evaluate.quality import label_next_gallery, unlabelled_files
    from ml_assets.train.predictions import image_files
    from ml_assets.train.registry import kind as kind_named

    version = context.partition_key
    kind = kind_named(config.kind)
    if not kind.predicts:
        raise dg.Failure(f"{kind.name} cannot predict on image files: pick a kind that predicts")
    champion = read_champion(home, kind)
    if champion is None:
        raise dg.Failure(f"{kind.name} has no champion yet: promote one (promoted_{kind.name})")
    if config.folder:
        paths = image_files(Path(config.folder))
    else:
        ds = load_version(home, version)
        paths = [ds.image_path(f) for f in unlabelled_files(ds)]
    device = training_device.torch_device()
    ranked = ranked_by_uncertainty(kind, Path(champion["model"]), paths, device, config.distance)
    top = ranked.head(config.gallery)
    png = label_next_gallery(
        top["file"].tolist(),
        [f"{u:.3f} {Path(f).name}" for f, u in zip(top["file"], top["uncertainty"], strict=True)],
    )
    out = write_frame(
        home.quality_dir("to_label_next", version),
        {"to_label_next": ranked},
        {"gallery": png},
        {"to_label_next.txt": "".join(f"{f}\n" for f in ranked["file"])},
    )
    return dg.MaterializeResult(
        metadata={
            "images": len(ranked),
            "near_duplicates": int((ranked["duplicate_of"] != "").sum()),
            "kind": kind.name,
            "champion_version": champion["version"],
            "source": config.folder or f"unlabelled images of dataset version {version}",
            "top": md_frame(ranked.head(20), index=False),
            "gallery": dg.MetadataValue.md(markdown_image(png, "to label next")),
            "path": dg.MetadataValue.path(str(out / "to_label_next.txt")),
        }
    )
