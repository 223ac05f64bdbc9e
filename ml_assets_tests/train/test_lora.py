"""The LoRA classifier kind without Dagster: only the adapter is stored, it reloads onto its base
and predicts the same, the trainable count is what the LoRA configuration implies, the loss falls
on a learnable task, and an interrupted run resumes."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pipelines import fit_and_save
from safetensors import safe_open

from ml_assets.cli import main
from ml_assets.data.formats import read_dataset
from ml_assets.data.store import Store
from ml_assets.data.tables import class_list
from ml_assets.train import classifier as timm_recipe
from ml_assets.train import lora
from ml_assets.train.base_models import describe_base_model, snapshot_base_model
from ml_assets.train.kinds.lora_classifier import LORA_CLASSIFIER

CPU = torch.device("cpu")
TINY = {"epochs": 1, "batch_size": 8, "augment": "none"}


def tiny_base(folder, arch: str):
    """A tiny base model made the way users make one, snapshotted into a store beside it."""
    result = CliRunner().invoke(main, ["base-model", "init", str(folder), "--arch", arch, "--tiny"])
    assert result.exit_code == 0, result.output
    return snapshot_base_model(folder, Store(folder.parent / "store"))


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("base") / "vit", "vit")


@pytest.fixture(scope="module")
def shapes(tiny_sample):
    ds = read_dataset(tiny_sample)
    ids = ds.images["image_id"].tolist()
    return ds, ids[:8], ids[8:]


@pytest.fixture(scope="module")
def trained(vit, shapes, tmp_path_factory):
    ds, train_ids, val_ids = shapes
    run_dir = tmp_path_factory.mktemp("run")
    config = lora.LoraClassifierConfig(**TINY)
    return fit_and_save(
        LORA_CLASSIFIER,
        ds,
        train_ids,
        val_ids,
        config,
        CPU,
        run_dir,
        None,
        {"base_model": vit.folder},
    )


def test_only_the_adapter_and_head_are_saved(vit, trained):
    fit, model_dir = trained
    with safe_open(str(model_dir / lora.ADAPTER_WEIGHTS), "pt") as f:
        keys = list(f.keys())
        values = sum(f.get_tensor(k).numel() for k in keys)
    assert keys and all(".lora_" in k or ".classifier." in k for k in keys)
    assert values == fit.summary["trainable_parameters"]
    # The file is the trainable float32 values plus a small header: no base weights in it.
    size = (model_dir / lora.ADAPTER_WEIGHTS).stat().st_size
    assert 4 * values <= size < 4 * values + 4096
    assert size < (vit.folder / "model.safetensors").stat().st_size / 4
    assert fit.summary["adapter_size_mb"] == size / 1e6
    assert not list(model_dir.glob("model.safetensors"))
    meta = lora.read_meta(model_dir)
    assert meta["base_model"] == {"name": "vit", "hash": vit.hash, "folder": str(vit.folder)}


def test_the_adapter_reloads_onto_its_base_and_predicts_the_same(shapes, trained):
    ds, _, val_ids = shapes
    fit, model_dir = trained
    expected = LORA_CLASSIFIER.outputs(fit.model, ds, val_ids, CPU)
    reloaded = LORA_CLASSIFIER.load(model_dir, CPU)
    assert expected.shape[1] == 4
    np.testing.assert_array_equal(LORA_CLASSIFIER.outputs(reloaded, ds, val_ids, CPU), expected)
    # The merged model (for export) is a plain transformers model giving the same logits.
    merged, _ = lora.merged_model(model_dir, CPU)
    assert "peft" not in type(merged).__module__
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(
            merged(pixel_values=x).logits.numpy(),
            reloaded.model(pixel_values=x).logits.numpy(),
            atol=1e-5,
        )
    scores = LORA_CLASSIFIER.score(model_dir, ds, val_ids, CPU)
    assert 0 <= scores.metrics["macro_f1"] <= 1 and scores.metrics["samples"] == len(expected)


def test_score_refuses_an_adapter_whose_base_snapshot_changed(shapes, trained, tmp_path):
    import shutil

    import orjson

    ds, _, val_ids = shapes
    _, model_dir = trained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    meta = lora.read_meta(copy)
    meta["base_model"]["hash"] = "0" * 12
    (copy / lora.META).write_bytes(orjson.dumps(meta))
    with pytest.raises(ValueError, match="adapter says 000000000000"):
        LORA_CLASSIFIER.score(copy, ds, val_ids, CPU)


def expected_trainable(info: dict, config, arch: str, classes: int) -> int:
    """LoRA adds r * (in + out) per adapted linear layer; the new head trains in full."""
    if arch == "convnext":
        width = info["hidden_sizes"]
        blocks = [(w, d) for w, d in zip(width, info["depths"], strict=True)]
        per_layer = {"pwconv1": lambda w: w + 4 * w, "pwconv2": lambda w: 4 * w + w}
        adapters = sum(
            d * config.rank * per_layer[t](w)
            for w, d in blocks
            for t in lora.target_modules(config, "convnext")
        )
        return adapters + width[-1] * classes + classes
    hidden, layers = info["hidden_size"], info["num_hidden_layers"]
    adapters = layers * len(lora.target_modules(config, arch)) * config.rank * 2 * hidden
    return adapters + hidden * classes + classes


@pytest.mark.parametrize(
    ("arch", "settings"),
    [
        ("vit", {"rank": 4}),
        ("vit", {"rank": 2, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
        ("convnext", {"rank": 8}),
    ],
)
def test_trainable_parameters_are_what_the_lora_configuration_implies(
    tmp_path, shapes, arch, settings
):
    import orjson

    ds = shapes[0]
    base = tiny_base(tmp_path / arch, arch)
    config = lora.LoraClassifierConfig(**settings)
    classes = class_list(ds)
    model = lora.build_lora_model(base.folder, classes, config)
    counts = lora.parameter_counts(model)
    info = orjson.loads((base.folder / "config.json").read_bytes())
    expected = expected_trainable(info, config, arch, len(classes))
    assert counts["trainable_parameters"] == expected
    assert counts["trainable_parameters"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    assert describe_base_model(base.folder).parameters < counts["total_parameters"]


def two_colours(folder, per_class: int = 12):
    """An image folder whose two classes differ at a glance: reddish and bluish noise."""
    rng = np.random.default_rng(0)
    for name, channel in (("blue", 2), ("red", 0)):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 100, size=(32, 32, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return read_dataset(folder)


def test_training_loss_falls_on_a_learnable_task(vit, tmp_path):
    ds = two_colours(tmp_path / "colours")
    ids = ds.images["image_id"].tolist()
    config = lora.LoraClassifierConfig(
        epochs=4, batch_size=8, lr=1e-2, warmup_epochs=0, label_smoothing=0, augment="none"
    )
    fit = LORA_CLASSIFIER.fit(
        ds, ids, [], config, CPU, tmp_path / "run", inputs={"base_model": vit.folder}
    )
    losses = fit.history["train_loss"].tolist()
    assert losses[-1] < 0.5 * losses[0], losses
    assert fit.history["train_accuracy"].iloc[-1] == 1.0


def test_an_interrupted_run_resumes_from_its_checkpoint(vit, shapes, tmp_path):
    ds, train_ids, val_ids = shapes
    config = lora.LoraClassifierConfig(**(TINY | {"epochs": 2}))
    inputs = {"base_model": vit.folder}
    epochs = []

    def power_cut(epoch, total, row):
        epochs.append(epoch)
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        LORA_CLASSIFIER.fit(ds, train_ids, val_ids, config, CPU, tmp_path, power_cut, inputs)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    # The checkpoint holds adapters and head only, never the frozen base weights.
    assert all(".lora_" in k or ".classifier." in k for k in checkpoint["model"])
    first = checkpoint["state"]["history"][0]

    fit = LORA_CLASSIFIER.fit(
        ds, train_ids, val_ids, config, CPU, tmp_path, lambda *a: epochs.append(a[0]), inputs
    )
    assert fit.resumed_from == 2 and epochs == [1, 2]
    assert fit.history["epoch"].tolist() == [1, 2]
    assert fit.history.iloc[0]["train_loss"] == first["train_loss"]


def test_fit_needs_its_base_model_and_known_target_modules(shapes, tmp_path, vit):
    ds, train_ids, val_ids = shapes
    config = lora.LoraClassifierConfig(**TINY)
    with pytest.raises(ValueError, match="needs the base model's snapshot folder"):
        LORA_CLASSIFIER.fit(ds, train_ids, val_ids, config, CPU, tmp_path)
    with pytest.raises(ValueError, match="no default LoRA target modules for a 'beit'"):
        lora.target_modules(config, "beit")


def test_the_merged_adapter_exports_to_onnx_that_agrees_with_pytorch(shapes, trained, tmp_path):
    import orjson

    from ml_assets.train.export import check_onnx

    ds, _, _ = shapes
    _, model_dir = trained
    out = LORA_CLASSIFIER.export(model_dir, tmp_path / "export")
    info = orjson.loads((out / "export.json").read_bytes())
    assert info["kind"] == "lora_classifier" and (out / "model.onnx").is_file()
    images = LORA_CLASSIFIER.load(model_dir, CPU).ml_assets_img_size
    crops = np.random.default_rng(0).integers(0, 255, (3, images, images, 3), dtype=np.uint8)
    found = check_onnx(LORA_CLASSIFIER, out, crops)
    assert found["passed"] and found["max_abs_diff"] <= 1e-4


def test_the_adapter_predicts_whole_images_and_scores_like_the_classifier(
    shapes, trained, tiny_sample
):
    ds, _, val_ids = shapes
    _, model_dir = trained
    images = sorted((tiny_sample / "images").iterdir())[:5]
    frame = LORA_CLASSIFIER.predict(model_dir, images, CPU)
    assert frame["file"].tolist() == [str(p) for p in images]
    probabilities = frame[[c for c in frame if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    # Whole images are resized as training crops and the export's preprocessing are: bilinear.
    model = LORA_CLASSIFIER.load(model_dir, CPU)
    side = model.ml_assets_img_size
    pixels = []
    for path in images:
        with Image.open(path) as image:
            assert image.size != (side, side)  # so the resize matters
            resized = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
            pixels.append(np.asarray(resized))
    expected = timm_recipe.predict(model, np.stack(pixels), CPU, tta=False)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    scores = LORA_CLASSIFIER.score(model_dir, ds, val_ids, CPU)
    assert {"weighted_f1", "ece", "top1_accuracy"} <= set(scores.metrics)
    assert scores.plots["reliability"].startswith(b"\x89PNG")
