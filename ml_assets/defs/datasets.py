"""Data assets per dataset version: the stored files, the canonical tables, the folds."""

import warnings
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ml_assets.data.folds import (
    TEST_FOLD,
    assign_folds,
    assignment_digest,
    fold_histograms,
    fold_problems,
    read_folds,
)
from ml_assets.data.tables import Dataset, load_tables, save_tables, tables_digest
from ml_assets.defs.partitions import (
    blocking_checks,
    checked_partition,
    dataset_versions,
    selected,
)
from ml_assets.defs.resources import MLAssetsHome
from ml_assets.evaluate.plots import markdown_image

# Checks of partitioned assets are partitioned the same way (so Execute in the UI runs for the
# chosen partition): a preview feature in Dagster 1.13 that warns once per check definition.
warnings.filterwarnings(
    "ignore", "Specifying a partitions_def on an AssetCheckSpec", dg.PreviewWarning
)


def md_table(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown())


def readable(number: float | int) -> float | int:
    """A metadata number rounded to what a person reads (kept a number: the UI plots it)."""
    return round(number, 4) if isinstance(number, float) else number


def is_quantiles(value) -> bool:
    return isinstance(value, dict) and all(k.startswith("q") and k[1:].isdigit() for k in value)


@dg.asset(
    partitions_def=dataset_versions,
    group_name="data",
    kinds={"filesystem"},
    description="Every file of one dataset version, stored once by content and snapshotted as a "
    "read-only folder of links. The partition key is the hash of the version's manifest.",
)
def raw_dataset(context: dg.AssetExecutionContext, home: MLAssetsHome) -> dg.MaterializeResult:
    from ml_assets.data.formats import detect_format
    from ml_assets.data.landing import open_landing

    version = context.partition_key
    if not home.store.manifest_path(version).exists():  # a key typed into "Add a partition"
        raise dg.Failure(
            description=f"{version!r} is not a dataset version: a version's key is the hash of "
            "the manifest of its files, made when data is registered. Put the data in the "
            "landing location (`ml-assets ingest PATH`) and the landing sensor registers it and "
            "starts its ingest (or run `ml-assets demo`); then delete this partition from the "
            "asset's Partitions tab."
        )
    landing = open_landing(home.store.landing_of(version), home.s3_client)
    stats = home.store.ingest(version, landing.opener)
    files = home.store.files_dir(version)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),  # the version key is the content's hash
        metadata={
            "files": stats.files,
            "bytes": stats.bytes,
            "new_objects": stats.new_objects,
            "reused_objects": stats.reused_objects,
            "format": detect_format(files),
            "path": dg.MetadataValue.path(str(files)),
            "manifest": dg.MetadataValue.path(str(home.store.manifest_path(version))),
        },
    )


def read_version(home: MLAssetsHome, version: str) -> Dataset:
    """Read a version's snapshot into canonical tables whose file names are relative to the
    snapshot folder, with each image's sha256 taken from the version manifest.

    Unreadable files fail here, naming file and record; questionable records (a box outside its
    image, an unknown class) are kept for the ``annotations_findings`` check to report in full.
    """
    from ml_assets.data.formats import read_dataset

    files = home.store.files_dir(version)
    ds = read_dataset(files, strict=False)
    names = [
        (Path(ds.root) / name).relative_to(files).as_posix() for name in ds.images["file_name"]
    ]
    sha = {e.path: e.sha256 for e in home.store.manifest(version)}
    ds.images["file_name"] = names
    ds.images["sha256"] = [sha.get(name, "") for name in names]
    ds.root = files
    return ds


def load_version(home: MLAssetsHome, version: str) -> Dataset:
    """The tables the ``annotations`` asset wrote for ``version``."""
    return load_tables(home.tables_dir(version), home.store.files_dir(version))


@dg.asset(
    partitions_def=dataset_versions,
    deps=[raw_dataset],
    group_name="data",
    kinds={"pandas"},
    description="The canonical images / annotations / categories tables of a dataset version.",
)
def annotations(context: dg.AssetExecutionContext, home: MLAssetsHome) -> dg.MaterializeResult:
    from ml_assets.data.inspect import summarize, summary_plot_png

    version = context.partition_key
    ds = read_version(home, version)
    folder = save_tables(ds, home.tables_dir(version))
    summary = summarize(ds)
    histogram = pd.Series(summary.pop("class_histogram"), name="objects", dtype="int64")
    # Quantiles (q5 ... q100 of box and image sizes) are one table, a row per quantity.
    quantiles = {n: summary.pop(n) for n, v in list(summary.items()) if is_quantiles(v)}
    numbers = {
        f"{name}_{part}" if isinstance(value, dict) else name: readable(number)
        for name, value in summary.items()
        for part, number in (value.items() if isinstance(value, dict) else [("", value)])
    }
    return dg.MaterializeResult(
        data_version=dg.DataVersion(tables_digest(folder)),
        metadata={
            **numbers,
            "boxes_from_masks": int(ds.attrs.get("boxes_from_masks", 0)),
            "size_quantiles": md_table(pd.DataFrame(quantiles).T.round(4)),
            "class_histogram": md_table(histogram.to_frame()),
            "summary_plot": dg.MetadataValue.md(markdown_image(summary_plot_png(ds), "summary")),
            "path": dg.MetadataValue.path(str(folder)),
        },
    )


@dg.multi_asset_check(
    **blocking_checks(
        annotations,
        {
            "annotations_schema": "Pandera schemas of the three tables.",
            "annotations_findings": "Data findings (boxes outside images, unknown classes, "
            "duplicates, ...): errors block everything downstream, warnings are shown but let "
            "it run.",
        },
    )
)
def annotations_checks(context: dg.AssetCheckExecutionContext, home: MLAssetsHome):
    version = checked_partition(context)
    if version is None:
        return
    ds = load_version(home, version)
    if selected(context, "annotations_schema"):
        yield schema_check(ds)
    if selected(context, "annotations_findings"):
        yield findings_check(ds)


def schema_check(ds: Dataset) -> dg.AssetCheckResult:
    import pandera.errors

    try:
        ds.validated()
    except (pandera.errors.SchemaErrors, ValueError) as err:
        cases = getattr(err, "failure_cases", None)
        detail = cases.head(50).to_markdown() if cases is not None else str(err)
        return dg.AssetCheckResult(
            check_name="annotations_schema",
            passed=False,
            metadata={"failures": dg.MetadataValue.md(detail)},
        )
    return dg.AssetCheckResult(
        check_name="annotations_schema", passed=True, metadata={"rows": len(ds.annotations)}
    )


def findings_check(ds: Dataset) -> dg.AssetCheckResult:
    from ml_assets.data.validate import findings_frame, validate_dataset

    findings = validate_dataset(ds, check_files=True)
    frame = findings_frame(findings)
    errors = int((frame["severity"] == "error").sum()) if len(frame) else 0
    warnings = len(frame) - errors
    return dg.AssetCheckResult(
        check_name="annotations_findings",
        passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
        metadata={
            "errors": errors,
            "warnings": warnings,
            "findings": dg.MetadataValue.md(
                frame.head(200).to_markdown(index=False) if len(frame) else "none"
            ),
        },
    )


class FoldsConfig(dg.Config):
    seed: int = Field(
        default=0, description="Seed of the stratified shuffle: same seed, same folds"
    )
    test_fraction: float = Field(
        default=0.0,
        description="Share of images held out as a test split before the k folds (0 for none)",
    )


# What every asset read from a version's tables is: per version, after them, in the data group.
FROM_ANNOTATIONS = {"partitions_def": dataset_versions, "deps": [annotations], "group_name": "data"}


def build_folds(k: int) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """The ``folds`` asset for ``k`` folds (``Settings.folds``) and its blocking check."""

    @dg.asset(
        **FROM_ANNOTATIONS,
        kinds={"pandas", "scikitlearn"},
        description="The fold of every image: stratified by class (iteratively for multi-label "
        "images), copies of the same content always together; -1 marks a held-out test split.",
    )
    def folds(
        context: dg.AssetExecutionContext, config: FoldsConfig, home: MLAssetsHome
    ) -> dg.MaterializeResult:
        version = context.partition_key
        return folds_result(home, version, k, config)

    @dg.multi_asset_check(
        **blocking_checks(
            folds,
            {
                "folds_are_disjoint": "Every image has exactly one fold and no image content "
                "sits in two folds."
            },
        )
    )
    def folds_are_disjoint(context: dg.AssetCheckExecutionContext, home: MLAssetsHome):
        version = checked_partition(context)
        if version is None:
            return
        images = load_version(home, version).images
        problems = fold_problems(images, load_folds(home, version, k)[0])
        yield dg.AssetCheckResult(
            check_name="folds_are_disjoint", passed=not any(problems.values()), metadata=problems
        )

    return folds, folds_are_disjoint


def folds_result(home: MLAssetsHome, version: str, k: int, config: FoldsConfig):
    """Assign and write ``version``'s folds; the materialization that says so."""
    from ml_assets.data.atomic import write_bytes

    ds = load_version(home, version)
    assignment = assign_folds(ds, k=k, seed=config.seed, test_fraction=config.test_fraction)
    path = home.folds_path(version)
    data = assignment.to_parquet(index=False)
    write_bytes(path, data)
    sizes = assignment["fold"].value_counts().sort_index()
    # The same assignment (same data, seed and k) is the same data version: nothing is due.
    return dg.MaterializeResult(
        data_version=dg.DataVersion(assignment_digest(data)),
        metadata={
            "k": k,
            "seed": config.seed,
            "test_images": int((assignment["fold"] == TEST_FOLD).sum()),
            "min_fold_images": int(sizes.drop(TEST_FOLD, errors="ignore").min()),
            "max_fold_images": int(sizes.drop(TEST_FOLD, errors="ignore").max()),
            "images_per_fold": md_table(sizes.rename("images").to_frame()),
            "objects_per_class_and_fold": md_table(fold_histograms(ds, assignment)),
            "path": dg.MetadataValue.path(str(path)),
        },
    )


def load_folds(home: MLAssetsHome, version: str, k: int | None = None) -> tuple[pd.DataFrame, str]:
    """The fold assignment of ``version`` and its digest, refused unless it has ``k`` folds
    (None: the folds it was split into)."""
    return read_folds(home.folds_path(version), k)
