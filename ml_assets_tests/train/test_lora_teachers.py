"""The LoRA teachers train for real on tiny data with tiny base models made by their init
functions: Grounding DINO (lora_detector) and SAM (lora_segmenter)."""

import json
import struct

import numpy as np
import pytest
import torch
from pipelines import fit_and_save

from ml_assets.data.coco import read_coco
from ml_assets.data.sample import write_sample
from ml_assets.data.store import Store
from ml_assets.train import lora_teachers as lt
from ml_assets.train import teacher_models as tm
from ml_assets.train.base_models import init_base_model, snapshot_base_model, snapshot_hash
from ml_assets.train.kinds import ModelKind
from ml_assets.train.kinds.lora_detector import LORA_DETECTOR
from ml_assets.train.kinds.lora_segmenter import LORA_SEGMENTER

KINDS = {"lora_detector": LORA_DETECTOR, "lora_segmenter": LORA_SEGMENTER}
ARCH = {"lora_detector": "grounding-dino", "lora_segmenter": "sam"}
INIT = {"lora_detector": tm.init_grounding_dino, "lora_segmenter": tm.init_sam}
# One optimizer step per epoch on the same 8 images, so the loss can be compared across epochs.
SETTINGS = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "rank": 4, "alpha": 8.0, "dropout": 0.0}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Ten 48-pixel images of shapes with polygons and boxes, and their image ids."""
    ds = read_coco(
        write_sample(tmp_path_factory.mktemp("s") / "shapes", images=10, seed=5, size=48)
    )
    ids = sorted(ds.images["image_id"])
    return ds, ids[:8], ids[8:]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Tiny base models of both teachers, snapshotted into a store (name -> snapshot)."""
    root = tmp_path_factory.mktemp("bases")
    store = Store(root / "store")
    return {
        name: snapshot_base_model(init_base_model(root / name, ARCH[name], tiny=True), store)
        for name in KINDS
    }


@pytest.fixture(scope="module")
def trained(shapes, bases, tmp_path_factory):
    """Each kind trained for SETTINGS on the first eight images: (kind, fit result, model dir)."""
    ds, train_ids, val_ids = shapes
    out = {}
    for name, kind in KINDS.items():
        run_dir = tmp_path_factory.mktemp(name)
        config = kind.config_class(**SETTINGS)
        out[name] = (
            kind,
            *fit_and_save(
                kind,
                ds,
                train_ids,
                val_ids,
                config,
                torch.device("cpu"),
                run_dir,
                None,
                {"base_model": bases[name].folder},
            ),
        )
    return out


def safetensors_names(path):
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return [k for k in json.loads(handle.read(length)) if k != "__metadata__"]


def test_init_writes_tiny_teachers_offline(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    dino = tm.init_grounding_dino(tmp_path / "dino", tiny=True)
    sam = tm.init_sam(tmp_path / "sam", tiny=True)
    assert AutoConfig.from_pretrained(dino).model_type == "grounding-dino"
    assert AutoConfig.from_pretrained(sam).model_type == "sam"
    tokenizer = AutoProcessor.from_pretrained(dino).tokenizer
    ids = tokenizer(["circle . square ."])["input_ids"][0]
    # BERT's ids for [CLS], ".", [SEP], which Grounding DINO's code hard-codes; no [UNK] (100).
    assert ids[0] == 101 and ids[-1] == 102 and ids.count(1012) == 2 and 100 not in ids
    assert AutoProcessor.from_pretrained(sam).image_processor.size["longest_edge"] == tm.TINY_SIDE
    with pytest.raises(FileExistsError):
        tm.init_sam(tmp_path / "sam", tiny=True)  # never overwrites a base model


def test_prompt_has_one_phrase_per_class(bases):
    from transformers import AutoConfig, AutoProcessor

    base = bases["lora_detector"].folder
    classes = [{"id": 3, "name": "traffic_light"}, {"id": 7, "name": "St. Bernard"}]
    assert lt.prompt_text([c["name"] for c in classes]) == "traffic light . st bernard ."
    _, _, label_map = lt._prompt(
        AutoProcessor.from_pretrained(base), AutoConfig.from_pretrained(base), classes
    )
    assert label_map.shape[0] == 2 and (label_map.sum(dim=1) > 0).all()


def test_masks_from_polygons_and_rle_and_images_without_masks(shapes):
    from pycocotools import mask as mask_utils

    ds, _, _ = shapes
    ds = type(ds)(ds.images, ds.annotations.copy(), ds.categories, ds.root)
    ann = ds.annotations
    ids = sorted(set(ann["image_id"]))[:2]  # two images with objects
    first, second = ann.index[ann["image_id"] == ids[0]][:1], ann.index[ann["image_id"] == ids[1]]
    polygon = ann.loc[first[0], "segmentation"]
    truth = lt.decode_mask(polygon, 48, 48)
    rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    ann.at[first[0], "segmentation"] = {"size": [48, 48], "counts": rle["counts"].decode()}
    for i in second:
        ann.at[i, "segmentation"] = None  # an image whose objects have no masks
    records, left_out = lt.segmenter_records(ds, ids)
    assert [r["image_id"] for r in records] == [ids[0]]
    assert np.array_equal(records[0]["masks"][0], truth)
    assert left_out == {"images_without_masks": 1, "objects_without_masks": len(second)}


def test_boundary_iou_and_box_baseline():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    assert lt.mask_iou(truth, truth) == 1.0 == lt.boundary_iou(truth, truth)
    shifted = np.roll(truth, 2, axis=1)
    assert lt.boundary_iou(shifted, truth) < lt.mask_iou(shifted, truth) < 1
    assert lt.mask_iou(lt.box_mask([10, 10, 20, 20], 40, 40), truth) == 1.0


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_provides_the_protocol(name):
    kind = KINDS[name]
    methods = ("fit", "score", "baseline", "load", "module", "outputs")
    for attribute in [*ModelKind.__annotations__, *methods]:
        assert hasattr(kind, attribute), attribute
    assert [(spec.asset, spec.reads) for spec in kind.inputs] == [("base_model", "weights")]
    for field in kind.config_class.model_fields.values():
        assert field.description


@pytest.mark.parametrize("name", sorted(KINDS))
def test_adapter_only_is_saved_and_reloads_identically(trained, shapes, bases, name):
    kind, fit, model_dir = trained[name]
    ds, _, val_ids = shapes
    adapter = model_dir / "adapter_model.safetensors"
    base_weights = bases[name].folder / "model.safetensors"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "lora.json",
    ]
    names = safetensors_names(adapter)
    heads = ["bbox_embed."] if name == "lora_detector" else lt.SEGMENTER_HEADS
    # LoRA matrices and the trained head only: no frozen base weight.
    assert names and all("lora_" in n or any(h in n for h in heads) for n in names)
    assert any("lora_" not in n for n in names)  # the head is there
    assert adapter.stat().st_size < base_weights.stat().st_size / 3
    assert fit.summary["adapter_size_mb"] == pytest.approx(adapter.stat().st_size / 1e6)
    reloaded = kind.load(model_dir, torch.device("cpu"))
    before = kind.outputs(fit.model, ds, val_ids, torch.device("cpu"))
    after = kind.outputs(reloaded, ds, val_ids, torch.device("cpu"))
    assert before.size and np.abs(before - after).max() <= 1e-5
    merged, meta = lt.merged_model(model_dir, torch.device("cpu"))
    assert type(merged).__name__ in ("GroundingDinoForObjectDetection", "SamModel")
    assert not any("lora_" in n for n, _ in merged.named_parameters())


@pytest.mark.parametrize("name", sorted(KINDS))
def test_trainable_ratio_is_what_the_lora_config_implies(trained, name):
    kind, fit, _ = trained[name]
    model = fit.model.peft.get_base_model()
    rank = SETTINGS["rank"]
    targets = lt.DETECTOR_TARGETS if name == "lora_detector" else lt.SEGMENTER_TARGETS
    lora = sum(
        rank * (m.base_layer.in_features + m.base_layer.out_features)
        for n, m in model.named_modules()
        if hasattr(m, "base_layer") and n.split(".")[-1] in targets
    )
    heads = {id(p): p.numel() for n, p in model.named_parameters() if "modules_to_save" in n}
    expected = lora + sum(heads.values())
    assert fit.summary["trainable_parameters"] == expected
    assert fit.summary["trainable_ratio"] == pytest.approx(
        expected / fit.summary["total_parameters"]
    )
    assert 0 < fit.summary["trainable_ratio"] < 0.5


@pytest.mark.parametrize("name", sorted(KINDS))
def test_training_loss_falls(trained, name):
    _, fit, _ = trained[name]
    losses = fit.history["train_loss"].tolist()
    assert len(losses) == SETTINGS["epochs"] and losses[-1] < losses[0]


def test_detector_scores_coco_metrics(trained, shapes):
    kind, _, model_dir = trained["lora_detector"]
    ds, _, val_ids = shapes
    scores = kind.score(model_dir, ds, val_ids, torch.device("cpu"))
    assert {"AP", "AP50", "AR100"} <= set(scores.metrics)
    assert 0 <= scores.metrics["AP"] <= 1 and kind.baseline([]) == 0.0
    found = scores.predictions
    assert len(found) == scores.metrics["detections"] > 0
    assert set(found["category_id"]) <= set(ds.categories["category_id"])
    assert set(found["image_id"]) <= set(val_ids) and found["score"].between(0, 1).all()
    # Boxes are in the image's own pixels (the processor resized it): inside the 48-px image.
    assert (found[["x", "y"]] >= -1e-3).all().all() and (found[["w", "h"]] > 0).all().all()
    assert (found["x"] + found["w"] <= 48 + 1e-3).all() and (
        found["y"] + found["h"] <= 48 + 1e-3
    ).all()
    config = kind.config_class(**lt.read_meta(model_dir)["config"])
    assert found.groupby("image_id").size().max() <= config.max_detections
    assert scores.extra["base_model_hash"] == snapshot_hash(
        lt.read_meta(model_dir)["base_model"]["folder"]
    )


def test_segmenter_scores_mask_and_boundary_iou_against_box_baseline(trained, shapes):
    kind, _, model_dir = trained["lora_segmenter"]
    ds, _, val_ids = shapes
    scores = kind.score(model_dir, ds, val_ids, torch.device("cpu"))
    m = scores.metrics
    assert m["objects"] == len(scores.predictions) > 0
    for key in ("mask_iou", "boundary_iou", "box_mask_iou", "box_boundary_iou"):
        assert 0 <= m[key] <= 1
    assert m["box_mask_iou"] > 0.3  # filling the box is a meaningful trivial answer
    found = scores.predictions
    for key in ("mask_iou", "boundary_iou", "box_mask_iou"):
        assert m[key] == pytest.approx(found[key].mean())
    # One row per held-out object with a mask, its true area that of its decoded polygon.
    truth = ds.annotations.set_index("annotation_id").loc[found["annotation_id"]]
    assert len(found) == ds.annotations["image_id"].isin(val_ids).sum()  # the sample's all have
    areas = [lt.decode_mask(seg, 48, 48).sum() for seg in truth["segmentation"]]
    assert found["true_area"].tolist() == areas
    record = {"metrics": m, "extra": scores.extra}
    assert kind.baseline([record, record]) == pytest.approx(m["box_mask_iou"])


def test_base_hash_is_recorded_and_follows_the_base(trained, bases, shapes, tmp_path):
    kind, fit, model_dir = trained["lora_segmenter"]
    assert fit.model.base_hash == bases["lora_segmenter"].hash
    assert lt.read_meta(model_dir)["base_model"]["hash"] == bases["lora_segmenter"].hash
    other = snapshot_base_model(
        tm.init_sam(tmp_path / "sam2", tiny=True, seed=1), Store(tmp_path / "s")
    )
    assert other.hash != bases["lora_segmenter"].hash
    ds, train_ids, val_ids = shapes
    config = kind.config_class(**SETTINGS | {"epochs": 1})
    refit, refit_dir = fit_and_save(
        kind,
        ds,
        train_ids[:2],
        val_ids,
        config,
        torch.device("cpu"),
        tmp_path / "run",
        None,
        {"base_model": other.folder},
    )
    assert refit.model.base_hash == other.hash
    assert kind.load(refit_dir, torch.device("cpu")).base_hash == other.hash


@pytest.mark.parametrize("name", sorted(KINDS))
def test_interrupted_training_resumes_after_its_last_epoch(shapes, bases, tmp_path, name):
    kind = KINDS[name]
    ds, train_ids, val_ids = shapes
    config = kind.config_class(**SETTINGS | {"epochs": 2, "batch_size": 4})
    inputs = {"base_model": bases[name].folder}
    cpu = torch.device("cpu")

    def crash(epoch, epochs, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kind.fit(ds, train_ids[:4], val_ids, config, cpu, tmp_path / "run", crash, inputs)
    resumed = kind.fit(ds, train_ids[:4], val_ids, config, cpu, tmp_path / "run", None, inputs)
    straight = kind.fit(ds, train_ids[:4], val_ids, config, cpu, tmp_path / "once", None, inputs)
    assert resumed.resumed_from == 2 and straight.resumed_from is None
    assert resumed.history["epoch"].tolist() == [1, 2]
    assert resumed.history["train_loss"].tolist() == pytest.approx(
        straight.history["train_loss"].tolist(), rel=1e-4
    )
