"""Each dataset version in every box format, as folders the owning tools read directly.

The images are hard links into the content-addressed store wherever the filesystem allows, so a
converted format costs only its label files.
"""

from pathlib import Path

import dagster as dg

from ml_assets.defs.datasets import FROM_ANNOTATIONS, load_version
from ml_assets.defs.resources import MLAssetsHome

READ_BY = {
    "coco": "pycocotools' COCO(annotations.json)",
    "voc": "Pascal VOC tools (Annotations/, JPEGImages/, ImageSets/Main/)",
    "yolo": "ultralytics (data.yaml)",
}


def tables_version(home: MLAssetsHome, version: str, what: str) -> dg.DataVersion:
    """The data version of something written from a version's tables alone (an export, the
    shards): its kind and the tables' digest."""
    from ml_assets.data.tables import tables_digest

    return dg.DataVersion(f"{what}-{tables_digest(home.tables_dir(version))}")


def count_links(folder: Path) -> tuple[int, int]:
    """(files in ``folder``, how many share their data with another path: the store's copy)."""
    total = linked = 0
    for path in folder.rglob("*"):
        if path.is_file():
            total += 1
            linked += path.stat().st_nlink > 1
    return total, linked


def export_asset(fmt: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{fmt}_dataset",
        **FROM_ANNOTATIONS,
        kinds={"filesystem"},
        description=f"The dataset version in {fmt.upper()} layout, read unchanged by {READ_BY[fmt]}.",
    )
    def _export(context: dg.AssetExecutionContext, home: MLAssetsHome) -> dg.MaterializeResult:
        from ml_assets.data.formats import write_dataset

        version = context.partition_key
        ds = load_version(home, version)
        folder = write_dataset(ds, home.export_dir(fmt, version), fmt, overwrite=True)
        files, linked = count_links(folder)
        return dg.MaterializeResult(
            data_version=tables_version(home, version, fmt),
            metadata={
                "images": len(ds.images),
                "annotations": len(ds.annotations),
                "files": files,
                "hard_linked_files": linked,
                "path": dg.MetadataValue.path(str(folder)),
            },
        )

    return _export


coco_dataset, voc_dataset, yolo_dataset = (export_asset(f) for f in ("coco", "voc", "yolo"))
