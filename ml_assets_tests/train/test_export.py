"""Exports of a tiny timm classifier and a tiny YOLO detector: ONNX and TorchScript agree with
PyTorch, a corrupted export fails the check, and the folder's own description of its
preprocessing reproduces the model's predictions in onnxruntime."""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import orjson
import pytest
from onnx import numpy_helper
from pipelines import fit_and_save

from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.train.classifier import (
    ClassifierConfig,
    Crops,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from ml_assets.train.export import (
    CLASSES_FILE,
    EXPORT_FILE,
    ONNX_FILE,
    OPENVINO_FILE,
    PREPROCESSING_FILE,
    TORCHSCRIPT_FILE,
    check_onnx,
    preprocess,
)
from ml_assets.train.kinds import prepare_run_dir
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
from ml_assets.train.yolo import YoloConfig

CLASSES = [{"id": 3, "name": "red"}, {"id": 5, "name": "green"}, {"id": 9, "name": "blue"}]


def colour_crops(n: int, size: int, seed: int) -> Crops:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    for k in range(3):
        images[labels == k, :, :, k] += 180
    return Crops(images, labels.astype(np.int64), np.arange(n))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("classifier")
    config = ClassifierConfig(img_size=24, epochs=1, batch_size=8, tta=False)
    model, _, _ = train_classifier(colour_crops(24, 24, 0), 3, config, torch.device("cpu"))
    model_dir = save_classifier(model, root / "model", config, CLASSES)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    out = IMAGE_CLASSIFIER.export(model_dir, root / "export")
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # only read
    return model_dir, out


def test_classifier_folder_holds_what_a_server_needs(classifier):
    _, out = classifier
    files = {p.name for p in out.iterdir()}
    assert files == {ONNX_FILE, TORCHSCRIPT_FILE, CLASSES_FILE, PREPROCESSING_FILE, EXPORT_FILE,
                     "openvino"}  # fmt: skip
    assert orjson.loads((out / CLASSES_FILE).read_bytes()) == [
        {"index": i, **c} for i, c in enumerate(CLASSES)
    ]
    info = orjson.loads((out / EXPORT_FILE).read_bytes())
    assert info["kind"] == "image_classifier" and info["opset"] == 18
    assert info["tolerance"] == 1e-4
    pre = orjson.loads((out / PREPROCESSING_FILE).read_bytes())
    assert pre["size"] == [24, 24] and pre["channel_order"] == "RGB"
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_classifier_check_passes_on_the_export_with_any_batch(classifier):
    _, out = classifier
    for n in (1, 5):  # the batch axis is dynamic
        found = check_onnx(IMAGE_CLASSIFIER, out, colour_crops(n, 24, 1).images)
        assert found["passed"], found
        assert found["max_abs_diff"] <= 1e-4 and found["outputs"] == ["logits"]
        assert found["samples"] == n
        assert found["torchscript_max_abs_diff"] <= 1e-5


def test_classifier_check_fails_on_a_corrupted_export(classifier, tmp_path):
    import shutil

    _, out = classifier
    broken = shutil.copytree(out, tmp_path / "broken")
    model = onnx.load(str(broken / ONNX_FILE))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(largest).copy()
    values.flat[: values.size // 2] += 0.5  # change bytes of one weight tensor
    largest.CopyFrom(numpy_helper.from_array(values, largest.name))
    onnx.save(model, str(broken / ONNX_FILE))
    found = check_onnx(IMAGE_CLASSIFIER, broken, colour_crops(4, 24, 2).images)
    assert not found["passed"] and found["max_abs_diff"] > 1e-2


def test_onnxruntime_with_the_described_preprocessing_predicts_like_the_classifier(classifier):
    """A server that knows only the export folder: resize, scale, normalize as
    preprocessing.json says, run model.onnx, softmax; same probabilities as ``predict``."""
    import onnxruntime
    import torch
    from PIL import Image

    model_dir, out = classifier
    pre = orjson.loads((out / PREPROCESSING_FILE).read_bytes())
    big = colour_crops(6, 40, 3).images  # another size: the server resizes
    resized = np.stack(
        [np.asarray(Image.fromarray(i).resize((24, 24), Image.Resampling.BILINEAR)) for i in big]
    )
    x = (resized.astype(np.float32) * pre["scale"] - np.float32(pre["mean"])) / np.float32(
        pre["std"]
    )
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    np.testing.assert_allclose(preprocess(pre, list(big)), x, atol=1e-6)
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    model, _ = load_classifier(model_dir, torch.device("cpu"))
    np.testing.assert_allclose(
        probabilities, predict(model, resized, torch.device("cpu")), atol=1e-5
    )


def test_a_folder_without_a_model_or_of_another_kind_is_refused(tmp_path, classifier):
    with pytest.raises(FileNotFoundError):
        IMAGE_CLASSIFIER.export(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        check_onnx(IMAGE_CLASSIFIER, tmp_path, np.zeros((1, 8, 8, 3), np.uint8))
    _, out = classifier
    with pytest.raises(ValueError, match="an export of a image_classifier, not of a yolo_detector"):
        check_onnx(YOLO_DETECTOR, out, np.zeros((1, 8, 8, 3), np.uint8))


def test_letterbox_matches_ultralytics():
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(0)
    pre = {
        "resize": "letterbox",
        "size": [64, 64],
        "pad_value": 114,
        "scale": 1 / 255,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    }
    for shape in [(30, 50, 3), (64, 64, 3), (77, 41, 3), (10, 100, 3)]:
        image = rng.integers(0, 256, shape).astype(np.uint8)
        theirs = LetterBox(new_shape=(64, 64), auto=False)(image=image)
        ours = preprocess(pre, [image])[0]
        np.testing.assert_allclose(ours, theirs.transpose(2, 0, 1) / np.float32(255), atol=1e-7)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("yolo")
    ds = read_dataset(write_sample(root / "shapes", 12, seed=5, size=48))
    ids = ds.images["image_id"].tolist()
    run_dir = root / "run"
    prepare_run_dir(run_dir, "key")
    config = YoloConfig(epochs=1, imgsz=64, batch=8, workers=0)
    _, model_dir = fit_and_save(
        YOLO_DETECTOR, ds, ids[:9], ids[9:], config, torch.device("cpu"), run_dir
    )
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    commands = []

    def no_subprocess(args, *rest, **kwargs):  # ultralytics' AutoUpdate runs pip through this
        commands.append(args)
        raise AssertionError(f"the export ran {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "check_output", no_subprocess)
        patch.setattr(subprocess, "run", no_subprocess)
        out = YOLO_DETECTOR.export(model_dir, root / "export")
    assert commands == []  # nothing installed, nothing run
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # only read
    return ds, ids, model_dir, out


def test_a_missing_export_requirement_is_an_error_not_an_install(detector, tmp_path, monkeypatch):
    import ultralytics.utils.checks as checks

    asked = []

    def check_requirements(requirements, install=True, **kwargs):
        asked.append(install)
        return False

    monkeypatch.setattr(checks, "check_requirements", check_requirements)
    _, _, model_dir, _ = detector
    with pytest.raises(RuntimeError, match="needs onnx.*installed"):
        YOLO_DETECTOR.export(model_dir, tmp_path / "export")
    assert asked == [False] and not (tmp_path / "export").exists()
    assert checks.AUTOINSTALL is False  # ml_assets.runtime turned ultralytics' AutoUpdate off


def test_yolo_folder_and_check(detector):
    _, _, _, out = detector
    files = {p.name for p in out.iterdir()}
    assert files == {ONNX_FILE, TORCHSCRIPT_FILE, CLASSES_FILE, PREPROCESSING_FILE, EXPORT_FILE,
                     "openvino"}  # fmt: skip
    info = orjson.loads((out / EXPORT_FILE).read_bytes())
    assert info["kind"] == "yolo_detector" and info["outputs"] == ["output0"]
    assert [c["name"] for c in orjson.loads((out / CLASSES_FILE).read_bytes())] == [
        "circle",
        "square",
        "triangle",
        "cross",
    ]
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 60, 3)).astype(np.uint8)
    found = check_onnx(YOLO_DETECTOR, out, images)
    assert found["passed"], found
    assert found["outputs"] == ["output0"] and found["samples"] == 3
    assert found["torchscript_max_abs_diff"] <= 1e-3


def test_yolo_export_in_onnxruntime_matches_the_detector_outputs(detector):
    """The folder's preprocessing on the dataset's images, run in onnxruntime, gives the raw
    output the detector kind computes with ultralytics' own letterbox."""
    import onnxruntime
    import torch
    from PIL import Image

    ds, ids, model_dir, out = detector
    pre = orjson.loads((out / PREPROCESSING_FILE).read_bytes())
    files = ds.images.set_index("image_id")["file_name"]
    images = [np.asarray(Image.open(ds.image_path(files[i])).convert("RGB")) for i in ids[:2]]
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": preprocess(pre, images)})[0]
    cpu = torch.device("cpu")
    expected = YOLO_DETECTOR.outputs(YOLO_DETECTOR.load(model_dir, cpu), ds, ids[:2], cpu)
    assert exported.shape == expected.shape
    np.testing.assert_allclose(exported, expected, atol=1e-3)


def test_yolo_check_fails_on_a_corrupted_export(detector, tmp_path):
    import shutil

    _, _, _, out = detector
    broken = shutil.copytree(out, tmp_path / "broken")
    model = onnx.load(str(broken / ONNX_FILE))
    # the class head's last biases (one per class): the scores must move
    heads = [t for t in model.graph.initializer if t.name.endswith("bias") and t.dims == [4]]
    assert heads
    for tensor in heads:
        values = numpy_helper.to_array(tensor) + 5.0
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(broken / ONNX_FILE))
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    found = check_onnx(YOLO_DETECTOR, broken, images)
    assert not found["passed"], found


# --- OpenVINO ------------------------------------------------------------------------------------


def test_formats_made_and_refused_are_listed(classifier, detector):
    for out in (classifier[1], detector[3]):
        info = orjson.loads((out / EXPORT_FILE).read_bytes())
        assert info["formats"] == ["onnx", "torchscript", "openvino"]
        assert info["openvino"] == OPENVINO_FILE and info["openvino_error"] is None
        assert {p.name for p in (out / OPENVINO_FILE).parent.iterdir()} == {
            "model.xml",
            "model.bin",
        }
        assert "no CUDA GPU" in info["refused"]["tensorrt"]  # this machine: no GPU, Linux
        assert "macOS" in info["refused"]["coreml"]


def test_classifier_openvino_matches_pytorch(classifier):
    _, out = classifier
    for n in (1, 5):  # the batch axis stays dynamic in the IR
        found = check_onnx(IMAGE_CLASSIFIER, out, colour_crops(n, 24, 4).images)
        print(f"classifier, batch {n}: openvino_max_abs_diff {found['openvino_max_abs_diff']:.2e}")
        assert found["passed"] and found["openvino_max_abs_diff"] <= 1e-4, found


def test_yolo_openvino_matches_pytorch(detector):
    _, _, _, out = detector
    for n in (1, 3):
        images = np.random.default_rng(n).integers(0, 256, (n, 48, 60, 3)).astype(np.uint8)
        found = check_onnx(YOLO_DETECTOR, out, images)
        print(f"detector, batch {n}: openvino_max_abs_diff {found['openvino_max_abs_diff']:.2e}")
        assert found["passed"] and found["openvino_max_abs_diff"] <= 1e-3, found


def test_a_corrupted_openvino_model_fails_the_check(classifier, tmp_path):
    import shutil

    _, out = classifier
    broken = shutil.copytree(out, tmp_path / "broken")
    weights = broken / OPENVINO_FILE.replace(".xml", ".bin")
    values = np.frombuffer(weights.read_bytes(), np.float32).copy()
    values[: values.size // 2] += 0.5  # the ONNX file is untouched: only OpenVINO's weights
    weights.write_bytes(values.tobytes())
    found = check_onnx(IMAGE_CLASSIFIER, broken, colour_crops(4, 24, 2).images)
    assert found["max_abs_diff"] <= 1e-4 and found["openvino_max_abs_diff"] > 1e-2
    assert not found["passed"]
