"""The readers on real public data nobody here wrote: Ultralytics' coco8, coco8-seg and
imagenet10 (copies of ../shared/data/real, the ``real_data`` fixture, skipped where the folder is
missing) and scikit-learn's digits written as class folders (the ``digits`` fixture)."""

from __future__ import annotations

import shutil
from collections import Counter

import orjson
import pytest
from click.testing import CliRunner
from formats_helpers import tree_hash

from ml_assets.cli import main
from ml_assets.data.formats import read_dataset
from ml_assets.data.tables import has_masks, splits, task_of
from ml_assets.data.validate import validate_source


def inspect(src, *options):
    done = CliRunner().invoke(main, ["inspect", str(src), *options])
    assert done.exit_code == 0, done.output
    return orjson.loads(done.stdout)


def test_coco8_is_read_as_ultralytics_reads_it(real_data):
    ds = read_dataset(real_data / "coco8")
    assert (len(ds.images), len(ds.annotations), len(ds.categories)) == (8, 30, 80)
    assert (ds.attrs["layout"], ds.attrs["yaml"], task_of(ds)) == ("yolo", "coco8.yaml", "detect")
    assert not has_masks(ds.annotations)
    assert Counter(splits(ds.images)) == {"train": 4, "val": 4}
    assert (ds.category_names[0], ds.category_names[79]) == ("person", "toothbrush")
    assert ds.attrs["warnings"] == []
    summary = inspect(real_data / "coco8")
    assert (summary["yaml"], summary["task"], summary["splits"]) == (
        "coco8.yaml",
        "detect",
        {"train": 4, "val": 4},
    )
    assert (summary["images"], summary["annotations"], summary["categories"]) == (8, 30, 80)


def test_coco8_seg_is_read_as_polygons(real_data):
    ds = read_dataset(real_data / "coco8-seg")
    assert (len(ds.images), len(ds.annotations)) == (8, 30)
    assert ds.annotations["segmentation"].map(bool).sum() == 30
    assert (ds.attrs["yaml"], task_of(ds)) == ("coco8-seg.yaml", "segment")
    assert inspect(real_data / "coco8-seg")["task"] == "segment"


@pytest.mark.parametrize("fmt", ["auto", "imagefolder"])
def test_imagenet10_is_a_classification_set_with_splits(real_data, fmt):
    ds = read_dataset(real_data / "imagenet10", fmt)
    assert (len(ds.images), len(ds.categories), task_of(ds)) == (20, 10, "classify")
    assert ds.attrs["layout"] == "imagefolder-splits"
    assert Counter(splits(ds.images)) == {"train": 10, "val": 10}
    assert list(ds.category_names.values()) == sorted(ds.category_names.values())
    assert ds.annotations.groupby("category_id").size().tolist() == [2] * 10
    first = ds.images.iloc[0]
    assert (first["file_name"], first["split"]) == ("train/cock/n01514668_23019.JPEG", "train")
    summary = inspect(real_data / "imagenet10", "--from", fmt)
    assert (summary["layout"], summary["task"]) == ("imagefolder-splits", "classify")
    assert summary["splits"] == {"train": 10, "val": 10}


def test_imagenet10_round_trips_through_coco_and_yolo(real_data, tmp_path):
    """imagefolder-splits -> coco -> imagefolder (through the command) gives the same tree:
    every split, class and image where it was."""
    src = real_data / "imagenet10"
    runner = CliRunner()
    for there, to in (("coco", "coco"), ("yolo", "yolo")):
        done = runner.invoke(main, ["convert", str(src), str(tmp_path / there), "--to", to])
        assert done.exit_code == 0 and "20 images, 20 image labels" in done.output, done.output
        back = tmp_path / f"back-{there}"
        done = runner.invoke(
            main, ["convert", str(tmp_path / there), str(back), "--to", "imagefolder"]
        )
        assert done.exit_code == 0, done.output
        assert tree_hash(back) == tree_hash(src)
        ds = read_dataset(back)
        assert ds.attrs["layout"] == "imagefolder-splits"
        assert Counter(splits(ds.images)) == {"train": 10, "val": 10}
    coco = read_dataset(tmp_path / "coco")
    assert coco.attrs["layout"] == "coco-splits" and len(coco.categories) == 10


def test_digits_written_as_class_folders_are_ten_classes(digits):
    ds = read_dataset(digits)
    assert (len(ds.images), len(ds.categories), task_of(ds)) == (1797, 10, "classify")
    assert ds.attrs["layout"] == "imagefolder" and "split" not in ds.images
    assert sorted(ds.category_names.values()) == [str(d) for d in range(10)]
    assert (ds.images["width"] == 8).all() and (ds.images["height"] == 8).all()


@pytest.mark.parametrize("fmt", ["auto", "imagefolder"])
def test_a_folder_of_datasets_is_refused_with_the_candidates(real_data, fmt):
    message = (
        "coco8/ holds coco8.yaml, images/, labels/: it looks like a YOLO export (a dataset), not "
        "a class; coco8-seg/ holds coco8-seg.yaml, images/, labels/: it looks like a YOLO export "
        "(a dataset), not a class; imagenet10/ holds train/, val/: it looks like a classification "
        "set with splits (a dataset), not a class. Read each dataset from its own folder "
        f"(ml-assets inspect {real_data / 'coco8'})"
    )
    with pytest.raises(ValueError) as refused:
        read_dataset(real_data, fmt)
    assert message in str(refused.value)
    done = CliRunner().invoke(main, ["inspect", str(real_data), "--from", fmt])
    assert done.exit_code == 1 and message in done.stderr
    (finding,) = [f for f in validate_source(real_data, fmt) if f.severity == "error"]
    assert (finding.code, finding.file) == ("not-a-class", ".") and message in finding.message


def test_a_class_beside_a_dataset_is_refused_naming_only_the_dataset(real_data, digits, tmp_path):
    src = tmp_path / "mixed"
    shutil.copytree(digits / "3", src / "three")
    shutil.copytree(real_data / "coco8", src / "coco8")
    with pytest.raises(ValueError, match=r": coco8/ holds coco8\.yaml, images/, labels/") as error:
        read_dataset(src)
    assert "three" not in str(error.value)
