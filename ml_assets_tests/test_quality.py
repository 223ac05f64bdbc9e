"""Data quality from the folds: planted label errors found, image issues, version diffs."""

import json
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from pipelines import ingested_version, metadata_of, train_fold_assets

from ml_assets.data.tables import Dataset
from ml_assets.defs import quality
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome, TrainingDevice
from ml_assets.evaluate.detection import iou
from ml_assets.evaluate.quality import (
    detection_issues,
    diff_line,
    diverse_order,
    image_hashes,
    image_issues,
    uncertainty,
    version_diff,
    xyxy_iou,
)
from ml_assets.evaluate.report import data_change
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER


def precision_at(found: pd.DataFrame, planted: set, n: int) -> float:
    return len(set(found.head(n)["key"]) & planted) / n


def test_classifier_label_issues_rank_planted_swaps_first(tmp_path, digits, monkeypatch):
    """A seeded 5% of the digits moved into another digit's folder: the label_issues asset,
    from two real folds' out-of-fold probabilities, ranks them first; the CLI prints the same."""
    rng = np.random.default_rng(0)
    landing = tmp_path / "landing"
    files = sorted(digits.rglob("*.png"))
    kept = [f for f in files if int(f.stem) < 400]  # 400 images, about 40 per digit
    swap = set(rng.choice(len(kept), size=len(kept) // 20, replace=False).tolist())
    planted = set()
    for n, source in enumerate(kept):
        digit = int(source.parent.name)
        label = (digit + int(rng.integers(1, 10))) % 10 if n in swap else digit
        target = landing / str(label) / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        if n in swap:
            planted.add(f"{label}/{source.name}")
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    settings = {"epochs": 12, "img_size": 16, "batch_size": 32, "label_smoothing": 0.0}
    with ingested_version(landing, home) as (instance, key):
        for fold in (0, 1):
            assert train_fold_assets(instance, home, key, IMAGE_CLASSIFIER, settings, fold).success
        asset, check = quality.build_label_issues(IMAGE_CLASSIFIER)
        done = dg.materialize(
            [asset, check], partition_key=key, resources={"home": home}, instance=instance
        )
        found = pd.read_parquet(
            home.quality_dir(asset.key.to_user_string(), key) / "label_issues.parquet"
        )
        meta = metadata_of(done, asset.key.to_user_string())
        (result,) = done.get_asset_check_evaluations()
    found["key"] = found["file"].str.split("/").str[-2:].str.join("/")
    n = len(planted)
    assert n == 20
    precision = precision_at(found, planted, n)
    print(f"classifier: precision@{n} of planted swaps = {precision:.2f}; flagged {len(found)}")
    assert precision >= 0.7
    # the clean images' rows are few: at most as many as the planted errors
    assert (~found["key"].isin(planted)).sum() <= n
    top = found.iloc[0]
    assert top["record"]  # the annotation record the image folder reader named
    assert top["given"] != top["suggested"]
    assert meta["issues"] == len(found) and meta["issues_label"] == len(found)
    assert meta["share"] == pytest.approx(len(found) / 400, abs=1e-4)
    assert meta["gallery"].startswith("![")
    assert result.severity == dg.AssetCheckSeverity.WARN and not result.passed  # 5% > default

    from ml_assets.cli import main

    monkeypatch.setenv("ML_ASSETS_HOME", home.root)
    out = CliRunner().invoke(main, ["label-issues", key, "--kind", "classifier", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["file"] for r in rows] == found["file"].tolist()
    assert set(rows[0]) == {"file", "record", "type", "score", "given", "suggested"}


def boxes_dataset(rng, images: int = 60, per_image: int = 3, side: int = 64) -> Dataset:
    """Images of ``per_image`` separate boxes of two classes (files exist for the gallery)."""
    rows, image_rows = [], []
    for i in range(images):
        image_rows.append(
            {"image_id": i, "file_name": f"{i}.png", "width": side, "height": side, "sha256": ""}
        )
        for j in range(per_image):
            rows.append(
                {
                    "annotation_id": len(rows),
                    "image_id": i,
                    "category_id": int(rng.integers(2)),
                    "x": 2.0 + 20 * j,
                    "y": float(rng.integers(2, 40)),
                    "w": 16.0,
                    "h": 16.0,
                    "area": 256.0,
                    "iscrowd": 0,
                    "segmentation": None,
                }
            )
    return Dataset(
        pd.DataFrame(image_rows),
        pd.DataFrame(rows),
        pd.DataFrame({"category_id": [0, 1], "name": ["circle", "square"]}),
    )


def test_detection_issues_rank_planted_boxes_first(tmp_path):
    """Real cleanlab on constructed out-of-fold detections (the truth found with confident
    scores and a little jitter): 5% of boxes class-swapped, 5% moved by half their size, 5%
    deleted from the labels rank first in their type."""
    rng = np.random.default_rng(1)
    truth = boxes_dataset(rng)
    detections = truth.annotations[["image_id", "category_id", "x", "y", "w", "h"]].copy()
    detections[["x", "y"]] += rng.normal(0, 0.7, (len(detections), 2))
    detections["score"] = rng.uniform(0.6, 0.95, len(detections))
    noise = detections.sample(frac=0.3, random_state=1).copy()  # weak wrong-class detections
    noise["category_id"] = 1 - noise["category_id"]
    noise["score"] = rng.uniform(0.05, 0.3, len(noise))
    detections = pd.concat([detections, noise], ignore_index=True)

    given = truth.annotations.copy()
    n = len(given) // 20
    order = rng.permutation(given["annotation_id"].to_numpy())
    swapped, moved, deleted = set(order[:n]), set(order[n : 2 * n]), set(order[2 * n : 3 * n])
    rows = given["annotation_id"].isin(swapped)
    given.loc[rows, "category_id"] = 1 - given.loc[rows, "category_id"]
    rows = given["annotation_id"].isin(moved)
    given.loc[rows, "x"] += given.loc[rows, "w"] / 2
    given.loc[rows, "y"] += given.loc[rows, "h"] / 2
    lost = given[given["annotation_id"].isin(deleted)]
    given = given[~given["annotation_id"].isin(deleted)]
    ds = Dataset(truth.images, given, truth.categories, tmp_path)
    for i in ds.images["image_id"]:
        Image.new("RGB", (64, 64), "gray").save(tmp_path / f"{i}.png")

    found = detection_issues(ds, detections, ds.images["image_id"].tolist())

    def precision(kind: str, planted_keys: set, key) -> float:
        rows = found[found["type"] == kind].head(n)
        return sum(key(r) in planted_keys for r in rows.itertuples()) / n

    lost_ids = {(r.image_id, r.annotation_id) for r in lost.itertuples()}
    lost_boxes = lost.set_index("annotation_id")

    def place(r):  # an overlooked row's box is the detection's: the lost box it covers
        for image_id, a in lost_ids:
            b = lost_boxes.loc[a]
            if (
                image_id == r.image_id
                and iou(np.array([b.x, b.y, b.w, b.h]), np.array([[r.x, r.y, r.w, r.h]]))[0] > 0.5
            ):
                return a
        return None

    figures = {
        "swapped": precision("swapped", swapped, lambda r: r.annotation_id),
        "badly_located": precision("badly_located", moved, lambda r: r.annotation_id),
        "overlooked": precision("overlooked", deleted, place),
    }
    print(f"detection precision@{n}: {figures}")
    assert figures["swapped"] >= 0.7
    assert figures["badly_located"] >= 0.5 and figures["overlooked"] >= 0.5
    row = found[found["type"] == "swapped"].iloc[0]
    assert row["given"] != row["suggested"] and row["record"] == f"annotation {row.annotation_id}"
    assert (found["file"].str.endswith(".png")).all()
    assert found["score"].is_monotonic_decreasing
    from ml_assets.evaluate.quality import gallery_png

    assert gallery_png(ds, found, 8)[:4] == b"\x89PNG"


def test_iou_of_half_moved_box_is_a_third_or_less():
    box = np.array([0.0, 0.0, 10.0, 10.0])  # cleanlab's x1, y1, x2, y2
    assert xyxy_iou(box, np.array([[5.0, 0.0, 15.0, 10.0]]))[0] == pytest.approx(1 / 3)
    assert xyxy_iou(box, np.zeros((0, 4))).shape == (0,)


def small_version(tmp_path, name: str) -> Dataset:
    rng = np.random.default_rng(2)
    ds = boxes_dataset(rng, images=6, per_image=2)
    ds.images["sha256"] = [f"hash{i}" for i in ds.images["image_id"]]
    ds.root = tmp_path / name
    return ds


def test_version_diff_is_exact(tmp_path):
    before = small_version(tmp_path, "a")
    after = small_version(tmp_path, "b")
    images, ann = after.images, after.annotations
    # renamed but the same content: no change; image 5 removed; a new image 9 added
    images.loc[0, "file_name"] = "renamed.png"
    images.loc[1, "sha256"] = "other"  # same name, new content: changed
    after.images = images[images["image_id"] != 5].copy()
    after.images.loc[len(after.images)] = [9, "9.png", 64, 64, "hash9"]
    ann = ann[ann["image_id"] != 5].copy()
    ann.loc[ann["annotation_id"] == 2, "category_id"] = 1 - ann.loc[2, "category_id"]  # relabel
    ann.loc[ann["annotation_id"] == 4, "x"] += 8  # moved by half its width
    ann = ann[ann["annotation_id"] != 6]  # removed from image 3
    extra = ann.iloc[[0]].assign(annotation_id=100, image_id=9)
    new_box = ann.iloc[[0]].assign(annotation_id=101, image_id=2, x=45.0, y=45.0)
    after.annotations = pd.concat([ann, extra, new_box], ignore_index=True)

    found = version_diff(before, after)
    assert found["counts"] == {
        "images_added": 1,
        "images_removed": 1,
        "images_changed": 1,
        "annotations_added": 2,  # on the new image and a new box on image 2
        "annotations_removed": 3,  # two with image 5, one from image 3
        "annotations_relabelled": 1,
        "annotations_moved": 1,
    }
    changes = found["annotations"].set_index("change")
    assert changes.loc["relabelled", "before_annotation"] == 2
    assert changes.loc["moved", "iou"] == pytest.approx(1 / 3)
    assert found["histogram"]["shift"].sum() == len(after.annotations) - len(before.annotations)
    line = diff_line(found["counts"], "ab12cd34ef56")
    assert line.startswith("1 images added, 1 images removed, 1 images changed, 2 annotations")
    assert line.endswith("1 relabelled, 1 moved since ab12cd34ef56")
    assert version_diff(before, before)["counts"] == dict.fromkeys(found["counts"], 0)


def test_version_diff_asset_compares_with_the_previous_version(tmp_path, tiny_sample):
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample, landing)
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    with ingested_version(landing, home) as (instance, first):
        done = dg.materialize(
            [quality.version_diff],
            partition_key=first,
            resources={"home": home},
            instance=instance,
        )
        assert metadata_of(done, "version_diff")["summary"] == "first version of this dataset"
        doc = json.loads((landing / "annotations.json").read_text())
        doc["annotations"][0]["category_id"] = next(
            c["id"] for c in doc["categories"] if c["id"] != doc["annotations"][0]["category_id"]
        )
        (landing / "annotations.json").write_text(json.dumps(doc))
        second = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [second])
        from pipelines import DATA

        assert dg.materialize(
            [*DATA, quality.version_diff],
            partition_key=second,
            resources={"home": home},
            instance=instance,
        ).success
        meta = metadata_of(
            dg.materialize(
                [quality.version_diff],
                partition_key=second,
                resources={"home": home},
                instance=instance,
            ),
            "version_diff",
        )
    assert meta["summary"] == f"1 relabelled since {first}"
    assert meta["annotations_relabelled"] == 1 and meta["images_added"] == 0
    # the line the version's reports open with
    assert data_change(home.quality_dir("version_diff", second)) == meta["summary"]
    assert data_change(home.quality_dir("version_diff", first)) == "first version of this dataset"


def test_image_issues_find_near_duplicates_across_folds(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(12):
        pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        pixels = np.kron(pixels[:12, :12], np.ones((4, 4, 1), dtype=np.uint8))  # blocky
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append(i)
    source = np.asarray(Image.open(tmp_path / "0.png"))
    Image.fromarray(np.clip(source.astype(int) + 3, 0, 255).astype(np.uint8)).save(
        tmp_path / "near.png"
    )
    Image.new("RGB", (48, 48), "black").save(tmp_path / "dark.png")
    names = [f"{i}.png" for i in rows] + ["near.png", "dark.png"]
    images = pd.DataFrame(
        {"image_id": range(len(names)), "file_name": names, "width": 48, "height": 48, "sha256": ""}
    )
    ds = Dataset(images=images, root=tmp_path)
    assignment = pd.DataFrame({"image_id": images["image_id"], "fold": [0] * 13 + [1]})
    assignment.loc[assignment["image_id"] == 12, "fold"] = 1  # near.png in the other fold
    found = image_issues(ds, assignment)
    near = found[found["type"] == "near_duplicates"]
    assert set(near["file"]) == {"0.png", "near.png"} and near["leak"].all()
    assert "dark.png" in set(found.loc[found["type"] == "dark", "file"])


def noise_images(folder, count: int, seed: int = 0) -> list:
    """``count`` distinct random 32x32 images (blocky, so their perceptual hashes differ)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = folder / f"{n}.png"
        Image.fromarray(blocks).resize((32, 32), Image.NEAREST).save(path)
        paths.append(path)
    return paths


def near_copy(source, target) -> None:
    """``source`` a little brighter: another file, the same picture to a perceptual hash."""
    array = np.asarray(Image.open(source)).astype(int)
    Image.fromarray(np.clip(array + 6, 0, 255).astype(np.uint8)).save(target)


def test_to_label_next_ranks_unsure_first_and_pushes_near_duplicates_down(tmp_path):
    """Constructed predictions: the classifier's smallest margins come first, the detector's
    images without detections then its least confident; a near copy of the most unsure image
    goes behind every distinct one."""
    a, b, d = (str(p) for p in noise_images(tmp_path, 3))
    c = str(tmp_path / "b_copy.png")
    near_copy(b, c)
    probs = {a: [0.95, 0.05], b: [0.5, 0.5], c: [0.52, 0.48], d: [0.75, 0.25]}
    predictions = pd.DataFrame(
        [{"file": f, "predicted": "x", "p_x": p, "p_y": q} for f, (p, q) in probs.items()]
    )
    ranked = uncertainty(predictions, [a, b, c, d])
    assert ranked["file"].tolist() == [b, c, d, a]
    assert ranked["margin"].tolist() == pytest.approx([0.0, 0.04, 0.5, 0.9])
    hashes = image_hashes(ranked["file"])
    assert hashes[0] - hashes[1] <= 6 < min(hashes[0] - hashes[2], hashes[0] - hashes[3])
    diverse = diverse_order(ranked, hashes, distance=6)
    assert diverse["file"].tolist() == [b, d, a, c]
    assert diverse["duplicate_of"].tolist() == ["", "", "", b]

    boxes = pd.DataFrame(
        {"file": [a, a, d, b], "score": [0.9, 0.2, 0.8, 0.6], "category_id": 0}
    )  # c: no detection
    ranked = uncertainty(boxes, [a, b, c, d])
    assert ranked["file"].tolist() == [c, a, b, d]
    assert ranked["detections"].tolist() == [0, 2, 1, 1]
    assert ranked["uncertainty"].tolist() == pytest.approx([1.0, 0.8, 0.4, 0.2])


def test_to_label_next_asset_with_a_trained_champion(tmp_path):
    """A real tiny classifier champion ranks the version's images without annotations (and a
    near copy of one of them): every unlabelled image listed once, the copy behind its
    original, a gallery, the champion's version in the metadata."""
    from test_serve import champion

    from ml_assets.data.formats import read_dataset
    from ml_assets.data.sample import write_sample
    from ml_assets.train.classifier import ClassifierConfig

    landing = write_sample(tmp_path / "landing", 12, seed=5, size=48)
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    champion(
        home, IMAGE_CLASSIFIER, read_dataset(landing),
        ClassifierConfig(img_size=32, epochs=1, batch_size=8), "v1",
    )  # fmt: skip
    doc = json.loads((landing / "annotations.json").read_text())
    bare = {i["id"] for i in doc["images"][:4]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] not in bare]
    first = doc["images"][0]
    near_copy(landing / "images" / first["file_name"], landing / "images" / "copy.png")
    doc["images"].append(first | {"id": max(bare | {i["id"] for i in doc["images"]}) + 1,
                                  "file_name": "copy.png"})  # fmt: skip
    (landing / "annotations.json").write_text(json.dumps(doc))
    with ingested_version(landing, home) as (instance, key):
        done = dg.materialize(
            [quality.to_label_next],
            partition_key=key,
            resources={"home": home, "training_device": TrainingDevice(device="cpu")},
            instance=instance,
            run_config={"ops": {"to_label_next": {"config": {"kind": "image_classifier"}}}},
        )
        meta = metadata_of(done, "to_label_next")
    out = home.quality_dir("to_label_next", key)
    listed = (out / "to_label_next.txt").read_text().splitlines()
    ranked = pd.read_parquet(out / "to_label_next.parquet")
    names = [p.rsplit("/", 1)[-1] for p in listed]
    assert sorted(names) == sorted([*(i["file_name"] for i in doc["images"][:4]), "copy.png"])
    assert listed == ranked["file"].tolist()
    copies = ranked.loc[ranked["duplicate_of"] != ""]
    assert len(copies) == 1 and copies.index[0] == len(ranked) - 1
    assert {copies.iloc[0]["file"].rsplit("/", 1)[-1], copies.iloc[0]["duplicate_of"].rsplit("/", 1)[-1]} == {"copy.png", first["file_name"]}  # fmt: skip
    kept = ranked.loc[ranked["duplicate_of"] == ""]
    assert kept["margin"].is_monotonic_increasing
    assert meta["champion_version"] == "v1" and meta["images"] == 5
    assert meta["near_duplicates"] == 1
    assert (out / "gallery.png").read_bytes().startswith(b"\x89PNG")


def test_a_new_version_gets_its_diff_and_image_issues_and_label_issues_wait_for_the_folds(landed):
    """Automation: once ingested, a version's version_diff and image_issues are due; its label
    issues only once every fold's evaluation is there."""
    from pipelines import LOCATION as defs

    landing, home = landed
    # The evaluations are in the selection, as the automation sensor evaluates the whole graph.
    selection = dg.AssetSelection.assets(
        "version_diff", "image_issues", "classifier_evaluation", "image_classifier_label_issues"
    )
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        idle = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection
        )
        assert idle.total_requested == 0  # nothing ingested yet
        from pipelines import INGEST

        assert dg.materialize(  # with the data checks: the gates
            INGEST, partition_key=key, resources={"home": home}, instance=instance
        ).success
        due = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=idle.cursor
        )
        assert due.get_requested_partitions(dg.AssetKey("version_diff")) == {key}
        assert due.get_requested_partitions(dg.AssetKey("image_issues")) == {key}
        assert due.get_requested_partitions(dg.AssetKey("image_classifier_label_issues")) == set()
        for fold in "01":  # as if both folds were evaluated
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "classifier_evaluation",
                    partition=dg.MultiPartitionKey({"version": key, "fold": fold}),
                    tags={"dagster/data_version": f"scores of fold {fold}"},  # as evaluations do
                )
            )
        later = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=due.cursor
        )
        assert later.get_requested_partitions(dg.AssetKey("image_classifier_label_issues")) == {key}


def test_label_issues_before_every_fold_is_evaluated_name_the_missing_fold(landed):
    landing, home = landed
    with ingested_version(landing, home) as (_, key):
        with pytest.raises(FileNotFoundError, match="no predictions of fold 0; materialize"):
            quality.find_label_issues(home, IMAGE_CLASSIFIER, key)
        from ml_assets.train.kinds.lora_segmenter import LORA_SEGMENTER

        with pytest.raises(ValueError, match="lora_segmenter has no label issues"):
            quality.find_label_issues(home, LORA_SEGMENTER, key)
