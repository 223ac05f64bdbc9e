"""Data assets and their checks, materialized on tiny data against a test instance."""

import dagster as dg
import orjson
import pandas as pd
from pipelines import DATA, FOLDS_CHECK

from ml_assets.data.formats import read_dataset
from ml_assets.defs import datasets, exports
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

DATA_ASSETS = DATA
DATA_CHECKS = [
    datasets.annotations_checks,
    FOLDS_CHECK,
]


def ingest(instance, home: MLAssetsHome, assets=(*DATA_ASSETS, *DATA_CHECKS)):
    """Register what landed as a version and materialize ``assets`` for it; no raise on error."""
    key = home.store.register(home.landing_path)
    instance.add_dynamic_partitions(dataset_versions.name, [key])
    result = dg.materialize(
        list(assets),
        partition_key=key,
        resources={"home": home},
        instance=instance,
        raise_on_error=False,
    )
    return key, result


def latest_metadata(instance, asset: str, partition: str) -> dict:
    records = materializations(instance, asset, partition)
    assert records, f"{asset}[{partition}] was not materialized"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def materializations(instance, asset: str, partition: str) -> list:
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition])
    return instance.fetch_materializations(flt, limit=1).records


def test_data_assets_store_read_validate_and_split(landed, tree_digest):
    landing, home = landed
    before = tree_digest(landing)
    with dg.instance_for_test() as instance:
        key, result = ingest(instance, home)
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        raw = latest_metadata(instance, "raw_dataset", key)
        assert raw["files"] == len(before) and raw["format"] == "coco"
        assert raw["new_objects"] == len(before) and raw["reused_objects"] == 0
        ann = latest_metadata(instance, "annotations", key)
        doc = orjson.loads((landing / "annotations.json").read_bytes())
        assert ann["images"] == 12 and ann["annotations"] == len(doc["annotations"])
        assert ann["categories"] == 4 and "circle" in ann["class_histogram"]
        assert ann["summary_plot"].startswith("![summary](data:image/png;base64,")
        folds = latest_metadata(instance, "folds", key)
        assert folds["k"] == 2 and folds["min_fold_images"] + folds["max_fold_images"] == 12

    written = pd.read_parquet(home.folds_path(key))
    assert sorted(written["image_id"]) == list(range(1, 13)) and set(written["fold"]) == {0, 1}
    tables = datasets.load_version(home, key)
    assert tables.images["sha256"].str.len().eq(64).all()
    assert (tables.root / tables.images["file_name"].iloc[0]).is_file()
    assert tree_digest(landing) == before


def test_bad_annotations_block_the_folds(landed, tree_digest):
    landing, home = landed
    doc = orjson.loads((landing / "annotations.json").read_bytes())
    doc["annotations"][0]["bbox"] = [60.0, 60.0, 10.0, 10.0]  # wholly outside the 48-pixel image
    (landing / "annotations.json").write_bytes(orjson.dumps(doc))
    before = tree_digest(landing)
    with dg.instance_for_test() as instance:
        key, result = ingest(instance, home)
        assert not result.success
        findings = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not findings["annotations_findings"].passed
        assert findings["annotations_findings"].severity == dg.AssetCheckSeverity.ERROR
        table = findings["annotations_findings"].metadata["findings"].value
        assert f"annotation {doc['annotations'][0]['id']}" in table
        assert materializations(instance, "folds", key) == []
    assert not home.folds_path(key).exists()
    assert tree_digest(landing) == before


def test_every_format_is_exported_with_images_linked_not_copied(landed):
    from pycocotools.coco import COCO

    landing, home = landed
    assets = [*DATA_ASSETS, exports.coco_dataset, exports.voc_dataset, exports.yolo_dataset]
    with dg.instance_for_test() as instance:
        key, result = ingest(instance, home, assets)
        assert result.success
        source = read_dataset(landing)
        boxes = source.annotations.sort_values("annotation_id")[["x", "y", "w", "h"]].to_numpy()
        for fmt in ("coco", "voc", "yolo"):
            meta = latest_metadata(instance, f"{fmt}_dataset", key)
            assert meta["images"] == 12 and meta["hard_linked_files"] >= 12
            folder = home.export_dir(fmt, key)
            again = read_dataset(folder, fmt)
            assert len(again.images) == 12
            got = again.annotations.sort_values(["image_id", "x", "y"])[
                ["x", "y", "w", "h"]
            ].to_numpy()
            want = source.annotations.sort_values(["image_id", "x", "y"])[
                ["x", "y", "w", "h"]
            ].to_numpy()
            assert abs(got - want).max() < 1e-6 * 48, fmt
        assert len(COCO(str(home.export_dir("coco", key) / "annotations.json")).getAnnIds()) == len(
            boxes
        )


def test_an_unreadable_image_fails_the_findings_gate(landed, tree_digest):
    landing, home = landed
    image = landing / "images" / "shapes_000004.png"
    image.write_bytes(image.read_bytes()[:200])  # truncated
    with dg.instance_for_test() as instance:
        key, result = ingest(instance, home)
        gate = {e.check_name: e for e in result.get_asset_check_evaluations()}[
            "annotations_findings"
        ]
        assert not gate.passed and gate.metadata["errors"].value == 1
        table = gate.metadata["findings"].value
        assert "image-unreadable" in table and "images/shapes_000004.png" in table
        assert materializations(instance, "folds", key) == []
