"""Real public data nobody here wrote, through the paths a user takes (issue 14): the landing
sensor, `ml-assets ingest` then `ml-assets demo` / `ml-assets train`. Ultralytics' coco8,
coco8-seg and imagenet10 (copies of ../shared/data/real) and scikit-learn's digits."""

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner
from pipelines import INGEST, LOCATION_SETTINGS
from real_sets import write_digits

from ml_assets.cli import main
from ml_assets.data.tables import has_masks, splits, task_of
from ml_assets.defs import automation, datasets
from ml_assets.defs.models import build_pipeline
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome, MLflowTracking, TrainingDevice
from ml_assets.train.kinds import refusal
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]

REAL = ("coco8", "coco8-seg", "imagenet10")


def sensor_tick(instance, home: MLAssetsHome, cursor=None):
    # Entered: the context closes what it opened (an instance it enters on first use) on exit.
    resources = {"home": home}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return automation.landing_sensor(context)


@pytest.fixture(scope="module")
def landed_real(tmp_path_factory, real_data, digits):
    """A landing folder holding coco8, coco8-seg, imagenet10 and the digits, each in a folder
    of its own as `ml-assets ingest` puts them; the landing sensor registers them (two ticks)
    and each version is ingested. Yields the instance, the home and {dataset: version}."""
    tmp = tmp_path_factory.mktemp("landed_real")
    landing = tmp / "landing"
    for name in REAL:
        shutil.copytree(real_data / name, landing / name)
    shutil.copytree(digits, landing / "digits")
    home = MLAssetsHome(root=str(tmp / "home"), landing=str(landing))
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, home)
        assert not first.run_requests  # a new listing waits one tick to settle
        second = sensor_tick(instance, home, first.cursor)
        versions = {r.tags["ml_assets/dataset"]: r.partition_key for r in second.run_requests}
        instance.add_dynamic_partitions(dataset_versions.name, list(versions.values()))
        for key in versions.values():
            result = dg.materialize(
                INGEST, partition_key=key, resources={"home": home}, instance=instance
            )
            assert result.success
            assert all(check.passed for check in result.get_asset_check_evaluations())
        yield instance, home, versions


def test_the_sensor_reads_each_real_dataset_as_its_tool_wrote_it(landed_real):
    _, home, versions = landed_real
    assert sorted(versions) == ["coco8", "coco8-seg", "digits", "imagenet10"]
    tables = {name: datasets.load_version(home, key) for name, key in versions.items()}

    coco8 = tables["coco8"]  # YOLO boxes, named by coco8.yaml (not data.yaml)
    assert (len(coco8.images), len(coco8.annotations), len(coco8.categories)) == (8, 30, 80)
    assert task_of(coco8) == "detect" and not has_masks(coco8.annotations)
    assert Counter(splits(coco8.images)) == {"train": 4, "val": 4}
    assert coco8.category_names[0] == "person" and coco8.category_names[79] == "toothbrush"
    # The whole image is no box: every one is smaller than its image.
    sized = coco8.annotations.merge(coco8.images, on="image_id")
    assert ((sized["w"] < sized["width"]) | (sized["h"] < sized["height"])).all()

    seg = tables["coco8-seg"]
    assert (len(seg.images), len(seg.annotations)) == (8, 30) and task_of(seg) == "segment"
    assert seg.annotations["segmentation"].map(bool).sum() == 30

    imagenet = tables["imagenet10"]  # train/<class>/*.JPEG + val/<class>/*.JPEG
    assert (len(imagenet.images), len(imagenet.categories)) == (20, 10)
    assert task_of(imagenet) == "classify"
    assert Counter(splits(imagenet.images)) == {"train": 10, "val": 10}
    assert imagenet.annotations.groupby("category_id").size().tolist() == [2] * 10

    digits = tables["digits"]
    assert (len(digits.images), task_of(digits)) == (1797, "classify")
    assert sorted(digits.category_names.values()) == [str(d) for d in range(10)]


def test_each_kind_refuses_the_real_versions_it_cannot_learn_from(landed_real):
    _, home, versions = landed_real
    refused = {
        (name, kind): reason is not None
        for name, key in versions.items()
        for kind, reason in (
            (k, refusal(KINDS[k], datasets.load_version(home, key))) for k in KINDS
        )
    }
    can = {
        name: sorted(k for (n, k), no in refused.items() if n == name and not no)
        for name in versions
    }
    assert can["coco8"] == ["image_classifier", "lora_classifier", "lora_detector", "yolo_detector"]
    assert can["coco8-seg"] == sorted(KINDS)
    for classification in ("digits", "imagenet10"):
        assert can[classification] == ["image_classifier", "lora_classifier"]


def test_a_refused_model_asset_trains_nothing_and_says_why(landed_real):
    """The detector on the digits: the partition stays unmaterialized, its evaluation is
    skipped, the run succeeds, and an observation on the partition says why."""
    instance, home, versions = landed_real
    pipeline = build_pipeline(YOLO_DETECTOR, LOCATION_SETTINGS)
    key = dg.MultiPartitionKey({"version": versions["digits"], "fold": "0"})
    result = dg.materialize(
        [pipeline.model, pipeline.model_checks, pipeline.evaluation],
        partition_key=key,
        resources={
            "home": home,
            "training_device": TrainingDevice(device="cpu"),
            "mlflow_tracking": MLflowTracking(enabled=False),
        },
        instance=instance,
    )
    assert result.success
    assert not result.asset_materializations_for_node("yolo_detector")
    assert not result.asset_materializations_for_node("detector_evaluation")
    assert not result.get_asset_check_evaluations()
    (observation,) = result.asset_observations_for_node("yolo_detector")
    assert observation.partition == str(key)
    reason = observation.metadata["not_trained"].value
    assert reason == (
        "yolo_detector learns from boxes; this version is a classification set (one "
        "whole-image label per image)"
    )
    assert not home.model_dir("yolo_detector", versions["digits"], 0).exists()


def test_register_applies_the_landing_rule(tmp_path, home, real_data, digits):
    landing = tmp_path / "landing"
    shutil.copytree(real_data / "coco8", landing / "coco8")
    write_digits(landing / "digits", per_class=3)
    done = CliRunner().invoke(main, ["register", str(landing)])
    assert done.exit_code == 0, done.output
    lines = dict(line.split("\t") for line in done.output.splitlines())
    assert sorted(lines) == ["coco8", "digits"]  # two datasets, never one of two "classes"
    manifest = orjson.loads(
        (home / "store" / "versions" / lines["digits"] / "manifest.json").read_bytes()
    )
    assert len(manifest["files"]) == 30 and manifest["landing"] == str(landing / "digits")


@pytest.mark.slow
def test_ingest_then_demo_reads_real_data_right(tmp_path, home, real_data, tree_digest):
    """The two misreads a user met: the digits ingested by name trained as one class, and
    coco8 as an image folder whose "boxes" were the whole images (its gate passed). Now each
    is its own version, read as its tool wrote it, and the detector refuses the digits."""
    write_digits(tmp_path / "digits", per_class=12)
    runner = CliRunner()
    for path, name in ((tmp_path / "digits", "digits"), (real_data / "coco8", "coco8")):
        done = runner.invoke(main, ["ingest", str(path), "--name", name])
        assert done.exit_code == 0, done.output
    before = tree_digest(home / "landing")
    demo = ["demo", "--models", "classifier,yolo", "--folds", "2", "--epochs", "1"]
    done = runner.invoke(main, demo)
    assert done.exit_code == 0, done.output
    output = done.output
    assert "already holds data" in output and "wrote" not in output  # no sample data added
    assert (
        "yolo_detector on digits, version " in output
        and ": not trained: yolo_detector learns from boxes; this version is a classification "
        "set (one whole-image label per image)"
        in output
    )
    assert "image_classifier on digits" in output and "yolo_detector on coco8" in output
    assert "image_classifier digits" not in output  # progress names the version, not the set
    assert output.count(" epoch 1/1: ") == 6  # classifier on both sets, detector on coco8
    versions = {
        name: orjson.loads(p.read_bytes())
        for name, p in (
            (p.parent.name, p) for p in (home / "store" / "versions").glob("*/manifest.json")
        )
    }
    by_landing = {Path(m["landing"]).name: key for key, m in versions.items()}
    assert sorted(by_landing) == ["coco8", "digits"]
    classifier = home / "models" / "image_classifier" / by_landing["digits"] / "fold-0"
    lineage = orjson.loads((classifier / "model.json").read_bytes())
    assert [c["name"] for c in lineage["classes"]] == [str(d) for d in range(10)]
    detector = home / "models" / "yolo_detector" / by_landing["coco8"] / "fold-0"
    assert len(orjson.loads((detector / "model.json").read_bytes())["classes"]) == 80
    assert not (home / "models" / "yolo_detector" / by_landing["digits"]).exists()
    assert tree_digest(home / "landing") == before


@pytest.mark.slow
def test_the_digits_learn_with_the_classifiers_default_settings(tmp_path, home, digits):
    """`ml-assets ingest` then `ml-assets train` on 1,797 real digits, 3 folds, the classifier's
    default settings: mean macro F1 at least 0.95 (scikit-learn's SVC reaches about 0.99)."""
    env = {**os.environ, "ML_ASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    command = str(Path(sys.executable).parent / "ml-assets")
    ingest = [command, "ingest", str(digits), "--name", "digits"]
    subprocess.run(ingest, cwd=ROOT, env=env, check=True, capture_output=True)
    train = [command, "train", "--dataset", "digits", "--models", "classifier", "--folds", "3"]
    done = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "image_classifier on digits" in done.stdout and "promotion gate: passed" in done.stdout
    (report,) = (home / "reports" / "image_classifier").glob("*/report.json")
    found = orjson.loads(report.read_bytes())
    assert found["mean"]["macro_f1"] >= 0.95, found["mean"]
