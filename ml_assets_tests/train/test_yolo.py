"""The YOLO detector kind on tiny data: training, publishing, reloading, scoring, resuming.

Two epochs at 64 px from scratch: mAP stays near 0, so scores are checked for range and shape,
never for quality (the slow tier checks learning).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import orjson
import pytest
from pipelines import fit_and_save
from pydantic import ValidationError

from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.data.store import Store
from ml_assets.data.tables import class_list
from ml_assets.data.weights import NotPulledError
from ml_assets.train.kinds import prepare_run_dir
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.weights import resolve_weights
from ml_assets.train.yolo import YoloConfig, device_argument, link_folds

CONFIG = YoloConfig(epochs=2, imgsz=64, batch=8, workers=0)
METRICS = ["map50", "map50_95", "precision", "recall"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    ds = read_dataset(write_sample(tmp_path_factory.mktemp("det") / "shapes", 16, seed=5, size=64))
    ids = ds.images["image_id"].tolist()
    return ds, ids[:12], ids[12:]


@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory):
    import torch

    ds, train_ids, val_ids = sample
    run_dir = tmp_path_factory.mktemp("yolo_run") / "run"
    prepare_run_dir(run_dir, "key")
    rows = []
    result, _ = fit_and_save(
        YOLO_DETECTOR,
        ds,
        train_ids,
        val_ids,
        CONFIG,
        torch.device("cpu"),
        run_dir,
        on_epoch=lambda epoch, epochs, row: rows.append((epoch, epochs, row)),
    )
    return run_dir, result, rows


def test_fit_trains_and_publishes_the_model(trained, sample):
    ds, train_ids, val_ids = sample
    run_dir, result, rows = trained
    model_dir = run_dir / "model"
    assert {"best.pt", "detector.json", "results.csv"} <= {p.name for p in model_dir.iterdir()}
    meta = orjson.loads((model_dir / "detector.json").read_bytes())
    assert meta["classes"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"},
        {"id": 4, "name": "cross"},
    ]
    assert meta["imgsz"] == 64 and meta["config"] == CONFIG.model_dump()
    assert (meta["train_images"], meta["val_images"]) == (12, 4)
    assert result.resumed_from is None
    assert result.history["epoch"].tolist() == [1, 2]
    assert {*METRICS, "box_loss", "val_box_loss", "seconds"} <= set(result.history.columns)
    assert (result.history["seconds"] > 0).all()
    assert [(epoch, epochs) for epoch, epochs, _ in rows] == [(1, 2), (2, 2)]
    assert {*METRICS, "box_loss", "cls_loss", "seconds"} <= set(rows[0][2])
    assert set(result.summary) == {*METRICS, "epochs", "train_seconds"}
    assert result.summary["epochs"] == 2
    assert all(0 <= result.summary[m] <= 1 for m in METRICS)


def test_fold_folder_links_the_export_and_holds_its_own_label_cache(trained):
    run_dir, _, _ = trained
    data, export = run_dir / "data", run_dir / "yolo"  # fit made the export itself (no inputs)
    linked = sorted((data / "images" / "val").iterdir())
    assert [p.stem for p in linked] == ["13", "14", "15", "16"]  # named by image id
    export_inodes = {p.stat().st_ino for p in (export / "images").rglob("*.png")}
    assert {p.stat().st_ino for p in linked} <= export_inodes  # links, not copies
    assert (data / "labels" / "train.cache").exists()
    assert not list(export.rglob("*.cache"))  # the shared export is never written


def test_reloaded_model_predicts_like_the_trained_one(trained, sample):
    import torch

    ds, _, val_ids = sample
    run_dir, result, _ = trained
    cpu = torch.device("cpu")
    reloaded = YOLO_DETECTOR.load(run_dir / "model", cpu)
    before = YOLO_DETECTOR.outputs(result.model, ds, val_ids[:2], cpu)
    assert before.shape[0] == 2 and np.isfinite(before).all()
    np.testing.assert_array_equal(YOLO_DETECTOR.outputs(reloaded, ds, val_ids[:2], cpu), before)
    # outputs() leaves the model as it was: a second call gives the same numbers
    np.testing.assert_array_equal(YOLO_DETECTOR.outputs(result.model, ds, val_ids[:2], cpu), before)
    module = YOLO_DETECTOR.module(reloaded)
    assert isinstance(module, torch.nn.Module)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_score_gives_metrics_per_class_and_predictions(trained, sample):
    import torch

    ds, _, val_ids = sample
    run_dir, _, _ = trained
    scores = YOLO_DETECTOR.score(run_dir / "model", ds, val_ids, torch.device("cpu"))
    exact = ["AP", "AP50", "AP75", "AR1", "AR10", "AR100", "VOC_AP50"]
    theirs = ["ultralytics_map50", "ultralytics_map50_95", "precision", "recall"]
    assert {*exact, *theirs, "images", "instances", "detections"} <= set(scores.metrics)
    assert all(0 <= scores.metrics[m] <= 1 for m in theirs)
    # The exact metrics are COCO's on the detections the kind returns, for the held-out images.
    from ml_assets.evaluate.detection import detection_scores

    recomputed = detection_scores(ds, val_ids, scores.predictions)
    assert {m: scores.metrics[m] for m in exact} == {m: recomputed.metrics[m] for m in exact}
    held_out = ds.annotations[ds.annotations["image_id"].isin(val_ids)]
    assert scores.metrics["images"] == 4
    assert scores.metrics["instances"] == (held_out["iscrowd"] == 0).sum()
    assert scores.per_class.index.tolist() == ["circle", "square", "triangle", "cross"]
    assert {"AP", "AP50", "VOC_AP50", "ground_truth", "precision", "recall"} <= set(
        scores.per_class.columns
    )
    assert scores.per_class["ground_truth"].sum() == scores.metrics["instances"]
    assert {"pr_curves", "samples"} <= set(scores.plots)
    predictions = scores.predictions
    assert predictions.columns.tolist() == ["image_id", "category_id", "x", "y", "w", "h", "score"]
    assert set(predictions["image_id"]) <= set(val_ids)
    assert set(predictions["category_id"]) <= {1, 2, 3, 4}
    assert ((predictions["x"] >= 0) & (predictions["x"] + predictions["w"] <= 64.01)).all()
    assert scores.extra["classes"][0] == {"id": 1, "name": "circle"}
    assert YOLO_DETECTOR.baseline([]) == 0.0


def test_score_refuses_a_dataset_with_other_classes(trained, sample):
    import torch

    ds, _, val_ids = sample
    run_dir, _, _ = trained
    renamed = copy.copy(ds)
    renamed.categories = ds.categories.assign(name=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="detector.json: the model's classes"):
        YOLO_DETECTOR.score(run_dir / "model", renamed, val_ids, torch.device("cpu"))


def test_score_reads_a_given_export_through_symlinks_where_hard_links_fail(
    trained, sample, tmp_path, monkeypatch
):
    import torch

    ds, _, val_ids = sample
    run_dir, _, _ = trained
    export = run_dir / "yolo"

    def cross_device(src, dst, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    data = link_folds(ds, export, {"val": val_ids[:2]}, tmp_path / "data", class_list(ds))
    linked = sorted((data.parent / "images" / "val").iterdir())
    assert all(p.is_symlink() and p.resolve().parent.parent == export / "images" for p in linked)
    inputs = {"yolo_dataset": export}
    scores = YOLO_DETECTOR.score(run_dir / "model", ds, val_ids[:2], torch.device("cpu"), inputs)
    assert scores.metrics["images"] == 2
    assert scores.metrics["instances"] > 0  # the labels were found through the links
    assert set(scores.predictions["image_id"]) <= set(val_ids[:2])


class Crash(Exception):
    pass


def test_interrupted_training_resumes_and_a_new_configuration_restarts(sample, tmp_path):
    import torch

    ds, train_ids, val_ids = sample
    cpu, run_dir = torch.device("cpu"), tmp_path / "run"

    def crash_after_first(epoch, epochs, row):
        if epoch == 1:
            raise Crash

    assert not prepare_run_dir(run_dir, "same")
    with pytest.raises(Crash):
        YOLO_DETECTOR.fit(ds, train_ids, val_ids, CONFIG, cpu, run_dir, crash_after_first)
    assert (run_dir / "train" / "weights" / "last.pt").exists()
    assert not (run_dir / "model").exists()

    epochs_seen = []
    assert prepare_run_dir(run_dir, "same")
    result, _ = fit_and_save(
        YOLO_DETECTOR,
        ds,
        train_ids,
        val_ids,
        CONFIG,
        cpu,
        run_dir,
        lambda e, n, r: epochs_seen.append(e),
    )
    assert result.resumed_from == 2
    assert epochs_seen == [2]
    assert result.history["epoch"].tolist() == [1, 2]
    assert result.history["seconds"].notna().all()  # epoch 1's time survived the crash
    assert (run_dir / "model" / "best.pt").exists()

    assert not prepare_run_dir(run_dir, "another configuration")
    epochs_seen.clear()
    restarted = YOLO_DETECTOR.fit(
        ds,
        train_ids,
        val_ids,
        CONFIG.model_copy(update={"epochs": 1}),
        cpu,
        run_dir,
        lambda e, n, r: epochs_seen.append(e),
    )
    assert restarted.resumed_from is None
    assert epochs_seen == [1]
    assert restarted.history["epoch"].tolist() == [1]


def test_a_crash_after_the_last_epoch_needs_no_more_training(sample, tmp_path):
    import torch

    ds, train_ids, val_ids = sample
    cpu, run_dir = torch.device("cpu"), tmp_path / "run"
    one_epoch = CONFIG.model_copy(update={"epochs": 1})

    def crash(epoch, epochs, row):
        raise Crash

    prepare_run_dir(run_dir, "k")
    with pytest.raises(Crash):
        YOLO_DETECTOR.fit(ds, train_ids, val_ids, one_epoch, cpu, run_dir, crash)
    epochs_seen = []
    result, model_dir = fit_and_save(
        YOLO_DETECTOR,
        ds,
        train_ids,
        val_ids,
        one_epoch,
        cpu,
        run_dir,
        lambda e, n, r: epochs_seen.append(e),
    )
    assert epochs_seen == [] and result.resumed_from == 2
    assert result.history["epoch"].tolist() == [1]
    assert set(result.summary) >= set(METRICS)
    assert (model_dir / "detector.json").exists()
    # the weights found finished load as their published copy: the reload check holds
    reloaded = YOLO_DETECTOR.load(model_dir, cpu)
    ids = val_ids[:2]
    np.testing.assert_allclose(
        YOLO_DETECTOR.outputs(reloaded, ds, ids, cpu),
        YOLO_DETECTOR.outputs(result.model, ds, ids, cpu),
        atol=1e-5,
    )


def test_models_that_would_download_are_pulled_names_never_downloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no yolov8n.pt in the working folder
    with pytest.raises(ValidationError, match="never downloads; pull it once"):
        YoloConfig(model="https://example.com/yolov8n.pt")
    store = Store(tmp_path / "store")
    for name in ("yolov8n.pt", "yolov8n"):  # what ultralytics would fetch from its hub
        config = YoloConfig(model=name)
        assert config.pinned_names() == {"model": name}
        with pytest.raises(NotPulledError, match=f"run `ml-assets weights pull {name}`"):
            resolve_weights(config, store)


def test_a_local_weights_file_and_model_yamls_are_accepted(tmp_path):
    weights = tmp_path / "detector.pt"
    weights.write_bytes(b"")
    assert YoloConfig(model=str(weights)).model == str(weights)
    assert YoloConfig(model=str(weights)).pinned_names() == {}  # loads as it is
    for name in ("yolov8n.yaml", "yolo11s.yaml", "yolo26n.yaml"):
        assert YoloConfig(model=name).model == name
        assert YoloConfig(model=name).pinned_names() == {}
    with pytest.raises(ValidationError):
        YoloConfig(epochs=0)


@pytest.mark.parametrize(
    ("device", "expected"), [("cpu", "cpu"), ("cuda", "0"), ("cuda:1", "1"), ("mps", "mps")]
)
def test_device_argument(device, expected):
    import torch

    assert device_argument(torch.device(device)) == expected


def test_an_unreadable_checkpoint_starts_afresh(sample, tmp_path):
    import torch

    ds, train_ids, val_ids = sample
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, "k")
    last = run_dir / "train" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 cut short by a crash")
    epochs_seen = []
    result = YOLO_DETECTOR.fit(
        ds,
        train_ids,
        val_ids,
        CONFIG.model_copy(update={"epochs": 1}),
        torch.device("cpu"),
        run_dir,
        lambda e, n, r: epochs_seen.append(e),
    )
    assert result.resumed_from is None and epochs_seen == [1]
    assert "time" not in result.history.columns


def test_the_detector_is_a_complete_model_kind():
    from ml_assets.train.kinds import ModelKind

    assert all(hasattr(YOLO_DETECTOR, name) for name in ModelKind.__annotations__)
    assert YOLO_DETECTOR.config_class is YoloConfig
    assert [spec.asset for spec in YOLO_DETECTOR.inputs] == ["yolo_dataset"]
    assert YOLO_DETECTOR.primary_metric == "AP"
