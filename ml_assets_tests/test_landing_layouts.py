"""The landing folder takes a labelling tool's export as it is (issue 6, item 5)."""

import sys
from pathlib import Path

import dagster as dg
import pytest

from ml_assets.defs import datasets
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the layout builders live there
from formats_helpers import boxes_by_image, tree_hash  # noqa: E402
from layout_builders import BUILDERS, CLASSES, expected_boxes  # noqa: E402

ASSETS = [
    datasets.raw_dataset,
    datasets.annotations,
    datasets.annotations_checks,
]


@pytest.mark.parametrize(("layout", "fmt"), [("roboflow-coco", "coco"), ("roboflow-yolo", "yolo")])
def test_a_roboflow_export_dropped_as_it_is_becomes_tables(tmp_path, layout, fmt):
    landing = BUILDERS[layout](tmp_path / "landing")
    before = tree_hash(landing)
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        result = dg.materialize(
            ASSETS, partition_key=key, resources={"home": home}, instance=instance
        )
        assert result.success
        assert all(check.passed for check in result.get_asset_check_evaluations())
        raw = result.asset_materializations_for_node("raw_dataset")[0].metadata
        assert raw["format"].value == fmt
    tables = datasets.load_version(home, key)
    assert sorted(tables.category_names.values()) == sorted(CLASSES)  # no placeholder class
    found = boxes_by_image(tables)
    for name, boxes in expected_boxes().items():
        assert [b[0] for b in found[name]] == [b[0] for b in boxes]
        for got, want in zip(found[name], boxes, strict=True):
            assert max(abs(p - q) for p, q in zip(got[1:], want[1:], strict=True)) <= 1e-6 * 64
    assert (tables.root / tables.images["file_name"].iloc[0]).is_file()
    assert tree_hash(landing) == before
