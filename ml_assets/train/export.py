"""Deployable exports of a published model folder, and the check that they compute what it does.

A kind that can be exported declares it: ``export(model_dir, out_dir)`` and its
``export_tolerance`` (``ml_assets.train.kinds``); the classification kinds export through
:func:`export_classifier` and :func:`export_lora_classifier` here, the YOLO kinds through
ultralytics' exporter (``ml_assets.train.yolo``); all write the folder with
:func:`write_export_folder`, and :func:`check_onnx` compares any of them with the kind's own
model.

An export folder holds everything a server needs, and nothing else is read to use it::

    out_dir/
      model.onnx             the network (ONNX opset :data:`OPSET`, dynamic batch axis)
      model.torchscript.pt   the same traced with TorchScript, where the architecture allows
      openvino/model.xml     the same as an OpenVINO IR (with model.bin; float32 weights), where
                             the conversion works
      classes.json           [{"index": i, "id": category id, "name": ...}] in model output order
      preprocessing.json     how to turn an RGB image into the model's input (see below)
      export.json            kind, files, ``formats`` made, ``refused`` formats with the reason,
                             input and output names, opset, tolerance, versions, and the source
                             model folder (what :func:`check_onnx` compares with)

OpenVINO: the classifiers' IR is ``openvino.convert_model`` of the ONNX file; YOLO's is
ultralytics' own OpenVINO exporter (``format="openvino"``, dynamic shapes, float32), whose
requirement is checked without installing. A conversion that fails leaves the ONNX export
whole and export.json says why (``openvino_error``). TensorRT and CoreML are never made here:
``refused`` says why (TensorRT needs an NVIDIA GPU with CUDA and the ``tensorrt`` package, CoreML
macOS and ``coremltools``; see :func:`refused_formats`).

``preprocessing.json`` for the timm classifier (``"resize": "stretch"``): resize the RGB image
(a square crop around one object, the box padded by 15% per side, or the whole image for
image-folder data) to ``size`` with bilinear interpolation, scale by ``scale`` (1/255), subtract
``mean`` and divide by ``std`` per channel, lay out as ``layout`` (NCHW) ``dtype`` (float32); the
output ``logits`` give class probabilities through a softmax. For YOLO (``"resize":
"letterbox"``): scale the RGB image to fit ``size`` keeping its aspect ratio (bilinear), pad
evenly to ``size`` with ``pad_value`` (114), scale by 1/255 (mean 0, std 1), NCHW float32; the
output ``output0`` is (batch, 4 + classes, anchors): box centre x, y, width, height in input
pixels, then per-class scores (sigmoid applied), with no non-maximum suppression.
:func:`preprocess` implements both descriptions.

Folders are written atomically (``atomic_dir``): a failed export leaves nothing behind, and a
new export replaces an old one only once it is complete. The model folder is only read:
ultralytics' exporter, which writes beside its weights, works on a copy.

Nothing here downloads or installs: ``torch.onnx.export`` (the TorchScript-based exporter,
``dynamo=False``: the dynamo exporter needs onnxscript, which is not installed) for timm
models, and ultralytics' own exporter for YOLO, whose requirements are checked first with
``install=False`` (its ``check_requirements`` would otherwise try ``pip install`` when
``YOLO_AUTOINSTALL`` is on and a package is missing; :mod:`ml_assets.runtime` turns that off
too).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ml_assets.data.atomic import atomic_dir
from ml_assets.train.kinds import ModelKind

OPSET = 18
"""ONNX opset of both exports. onnxruntime 1.32 runs opsets up to 23; 18 is what ultralytics
chooses for torch >= 2.4, because its CUDA provider lacks some opset-19+ kernels (Resize-19,
ReduceMax-20) and would fall back to the CPU for them."""
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
OPENVINO_FILE = "openvino/model.xml"  # its weights: openvino/model.bin
CLASSES_FILE = "classes.json"
PREPROCESSING_FILE = "preprocessing.json"
EXPORT_FILE = "export.json"


def export_classifier(kind: ModelKind, model_dir: Path, out_dir: Path) -> Path:
    """Export a timm classifier folder (``save_classifier``) to ``out_dir``: ONNX through
    ``torch.onnx.export`` with a dynamic batch axis, and TorchScript through
    ``torch.jit.trace`` when tracing reproduces the model's logits (otherwise export.json says
    why there is none)."""
    import torch

    from ml_assets.train.classifier import ClassifierConfig, load_classifier

    model_dir = Path(model_dir).resolve()
    model, meta = load_classifier(model_dir, torch.device("cpu"))
    size = ClassifierConfig(**meta["config"]).img_size
    return _export_logits(model, size, kind, model_dir, meta, out_dir)


def export_lora_classifier(kind: ModelKind, model_dir: Path, out_dir: Path) -> Path:
    """Export a LoRA classifier: the adapter merged into the base weights (``merge_and_unload``)
    behind the same ``images -> logits`` contract as the timm classifier, so its preprocessing
    (ImageNet mean and std) and its server code are the same."""
    import torch

    from ml_assets.train.lora import load_lora

    model_dir = Path(model_dir).resolve()
    model, meta = load_lora(model_dir, torch.device("cpu"))
    model.model = model.model.merge_and_unload()  # plain transformers weights, no PEFT layers
    return _export_logits(model.eval(), model.ml_assets_img_size, kind, model_dir, meta, out_dir)


def _export_logits(
    model, size: int, kind: ModelKind, model_dir: Path, meta: dict, out_dir: Path
) -> Path:
    """An ``images -> logits`` classifier to ONNX (dynamic batch) and TorchScript."""
    import torch

    from ml_assets.train.classifier import MEAN, STD

    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    preprocessing = {
        "resize": "stretch",
        "size": [size, size],
        "interpolation": "bilinear",
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
        "mean": MEAN.tolist(),
        "std": STD.tolist(),
        "input": "a square crop around one object (its box padded by 15% per side, black "
        "outside the image) or the whole image for image-folder data",
        "output": "logits (batch, classes); softmax gives class probabilities",
    }
    with atomic_dir(Path(out_dir), overwrite=True) as tmp:
        with quiet_torch_warnings(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(tmp / ONNX_FILE),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        reason = _trace(model, example, tmp / TORCHSCRIPT_FILE)
        openvino_error = _openvino_from_onnx(tmp)
        names = {"inputs": ["input"], "outputs": ["logits"]}
        write_export_folder(
            tmp, kind, model_dir, meta, preprocessing, names, reason, openvino_error
        )
    return Path(out_dir)


def _openvino_from_onnx(tmp: Path) -> str | None:
    """The OpenVINO IR of ``tmp``'s ONNX file (float32, the dynamic batch kept) at
    :data:`OPENVINO_FILE`; None when written, else why not."""
    try:
        import openvino

        model = openvino.convert_model(str(tmp / ONNX_FILE))
        (tmp / OPENVINO_FILE).parent.mkdir()
        openvino.save_model(model, str(tmp / OPENVINO_FILE), compress_to_fp16=False)
    except Exception as err:  # an operator OpenVINO cannot convert: ONNX still serves
        shutil.rmtree(tmp / Path(OPENVINO_FILE).parent, ignore_errors=True)
        return f"{type(err).__name__}: {err}"
    return None


def refused_formats() -> dict[str, str]:
    """The deployment formats not made on this machine, each with the reason: TensorRT (needs
    an NVIDIA GPU with CUDA and the ``tensorrt`` package; an engine is built for the GPU it runs
    on, so it belongs on the serving machine) and CoreML (macOS with ``coremltools``)."""
    import importlib.util
    import platform

    import torch

    tensorrt = "TensorRT engines are built on the NVIDIA GPU that runs them"
    if not torch.cuda.is_available():
        tensorrt += ": this machine has no CUDA GPU"
    elif importlib.util.find_spec("tensorrt") is None:
        tensorrt += ": the tensorrt package is not installed"
    else:
        tensorrt += "; build one there from model.onnx (trtexec --onnx=model.onnx)"
    coreml = "CoreML export runs on macOS with coremltools"
    if platform.system() != "Darwin":
        coreml += f": this machine runs {platform.system()}"
    elif importlib.util.find_spec("coremltools") is None:
        coreml += ": coremltools is not installed"
    return {"tensorrt": tensorrt, "coreml": coreml}


def read_export(out_dir: Path) -> dict:
    """export.json of an export folder, with ``preprocessing`` and ``classes`` filled in."""
    out_dir = Path(out_dir)
    path = out_dir / EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir}: not an export folder (missing {EXPORT_FILE})")
    info = orjson.loads(path.read_bytes())
    info["preprocessing"] = orjson.loads((out_dir / PREPROCESSING_FILE).read_bytes())
    info["classes"] = orjson.loads((out_dir / CLASSES_FILE).read_bytes())
    return info


def preprocess(preprocessing: dict, images: Sequence[np.ndarray]) -> np.ndarray:
    """The model input (N, 3, H, W float32) for RGB uint8 images (H, W, 3) of any size, as
    ``preprocessing`` (a preprocessing.json) describes it."""
    height, width = preprocessing["size"]
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    batch = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if preprocessing["resize"] == "letterbox":
            image = _letterbox(image, height, width, preprocessing["pad_value"])
        elif image.shape[:2] != (height, width):
            from PIL import Image

            resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
            image = np.asarray(resized)
        x = (image.astype(np.float32) * np.float32(preprocessing["scale"]) - mean) / std
        batch.append(x.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32)


def check_onnx(
    kind: ModelKind, out_dir: Path, inputs: np.ndarray, model_dir: Path | None = None
) -> dict:
    """Run the export's ONNX model in onnxruntime and the PyTorch model it came from
    (``kind``'s model at ``model_dir``, else at the source folder export.json names) on the same
    inputs.

    ``inputs``: RGB uint8 images (N, H, W, 3), preprocessed as preprocessing.json says, or a
    ready float32 input (N, 3, H, W). Returns ``max_abs_diff`` (largest absolute difference
    over every compared output), ``outputs`` (their names), ``samples``, ``tolerance`` (the
    export's: 1e-4 for the classifier's logits, 1e-3 for YOLO's raw output, see
    the kind's ``export_tolerance``), ``passed`` (``max_abs_diff <= tolerance``, and the
    OpenVINO model's too when the folder holds one), when the folder holds TorchScript
    ``torchscript_max_abs_diff``, and when it holds an OpenVINO IR ``openvino_max_abs_diff``
    (the same outputs, run by OpenVINO's CPU plugin in float32). The caller (the export's asset
    check) fails when ``passed`` is false.
    """
    import onnxruntime
    import torch

    out_dir = Path(out_dir)
    info = read_export(out_dir)
    if info["kind"] != kind.name:
        raise ValueError(f"{out_dir} is an export of a {info['kind']}, not of a {kind.name}")
    x = _model_input(info["preprocessing"], inputs)
    session = onnxruntime.InferenceSession(
        str(out_dir / info["onnx"]), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    exported = session.run(names, {session.get_inputs()[0].name: x})
    network = _pytorch_network(kind, Path(model_dir) if model_dir else Path(info["source"]))
    with torch.inference_mode():
        reference = _outputs(network(torch.from_numpy(x)))
    compared = min(len(names), len(reference))  # the segmenter's: output0 and the prototypes
    diff = max(max_difference(exported[i], reference[i]) for i in range(compared))
    found = {
        "max_abs_diff": diff,
        "outputs": names[:compared],
        "samples": int(len(x)),
        "tolerance": info["tolerance"],
        "passed": diff <= info["tolerance"],
    }
    if info.get("torchscript"):
        with quiet_torch_warnings(), torch.inference_mode():
            traced = torch.jit.load(str(out_dir / info["torchscript"]), map_location="cpu")
            scripted = _outputs(traced(torch.from_numpy(x)))[0]
        found["torchscript_max_abs_diff"] = max_difference(scripted, reference[0])
    if info.get("openvino"):
        found["openvino_max_abs_diff"] = openvino_difference(
            out_dir / info["openvino"], x, reference
        )
        found["passed"] = found["passed"] and found["openvino_max_abs_diff"] <= info["tolerance"]
    return found


def openvino_difference(xml: Path, x: np.ndarray, reference: list[np.ndarray]) -> float:
    """Largest absolute difference between an OpenVINO IR's outputs on ``x`` (CPU, float32
    inference precision: the plugin would otherwise compute in bfloat16 where the CPU has it)
    and ``reference`` (the PyTorch outputs, in the same order)."""
    import openvino

    compiled = openvino.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x)
    found = [np.asarray(result[output]) for output in compiled.outputs]
    compared = min(len(found), len(reference))
    return max(max_difference(found[i], reference[i]) for i in range(compared))


def max_difference(found: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference; infinite when the shapes differ."""
    if found.shape != reference.shape:
        return float("inf")
    return float(np.abs(found - reference).max()) if reference.size else 0.0


# --- helpers -------------------------------------------------------------------------------------


def write_export_folder(
    tmp: Path,
    kind: ModelKind,
    source: Path,
    meta: dict,
    preprocessing: dict,
    names: dict[str, list[str]],
    torchscript_error: str | None,
    openvino_error: str | None,
) -> None:
    """classes.json, preprocessing.json and export.json beside the model files in ``tmp``;
    ``meta`` is the model folder's own (its ``classes``), ``names`` the graph's ``inputs`` and
    ``outputs``, ``torchscript_error`` and ``openvino_error`` why there is no TorchScript or
    OpenVINO file (None when there is)."""
    import onnx
    import onnxruntime
    import openvino
    import torch

    onnx.checker.check_model(str(tmp / ONNX_FILE))
    files = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE, "openvino": OPENVINO_FILE}
    made = {f: name if (tmp / name).exists() else None for f, name in files.items()}
    info = {
        "kind": kind.name,
        **made,
        "formats": [f for f, name in made.items() if name],
        "refused": refused_formats(),
        "torchscript_error": torchscript_error,
        "openvino_error": openvino_error,
        "opset": OPSET,
        **names,
        "tolerance": kind.export_tolerance,
        "source": str(source),
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
        },
    }
    indexed = [
        {"index": i, "id": c["id"], "name": c["name"]} for i, c in enumerate(meta["classes"])
    ]
    option = orjson.OPT_INDENT_2
    (tmp / CLASSES_FILE).write_bytes(orjson.dumps(indexed, option=option))
    (tmp / PREPROCESSING_FILE).write_bytes(orjson.dumps(preprocessing, option=option))
    (tmp / EXPORT_FILE).write_bytes(orjson.dumps(info, option=option))


def _trace(model: Any, example: Any, path: Path) -> str | None:
    """Save ``torch.jit.trace(model)`` at ``path`` if the traced module reproduces the model's
    output on ``example``; None when saved, else why not."""
    import torch

    try:
        with quiet_torch_warnings(), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            expected = model(example)
            again = traced(example * 0.5)  # another input: the trace must not be constant
            if not torch.allclose(traced(example), expected, atol=1e-5, rtol=0) or not (
                torch.allclose(again, model(example * 0.5), atol=1e-5, rtol=0)
            ):
                return "the traced module does not reproduce the model's output"
            traced.save(str(path))
    except Exception as err:  # data-dependent control flow and the like
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def quiet_torch_warnings() -> Iterator[None]:
    """torch 2.14 marks TorchScript and the TorchScript-based ONNX exporter as deprecated; both
    still work and are what ONNX Runtime and ultralytics use, so those warnings are hidden."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # ultralytics' head compares shapes in Python while tracing; its exporter knows
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _letterbox(image: np.ndarray, height: int, width: int, pad_value: int) -> np.ndarray:
    """ultralytics' LetterBox (auto=False, center=True, scaleup=True) in its own arithmetic."""
    import cv2

    h, w = image.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
    )


def _model_input(preprocessing: dict, inputs: np.ndarray) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.dtype == np.uint8:
        return preprocess(preprocessing, list(inputs))
    if inputs.ndim != 4 or inputs.shape[1] != 3:
        raise ValueError(
            f"inputs must be uint8 images (N, H, W, 3) or a float input (N, 3, H, W), got "
            f"{inputs.dtype} {inputs.shape}"
        )
    return np.ascontiguousarray(inputs, dtype=np.float32)


def _pytorch_network(kind: ModelKind, model_dir: Path) -> Any:
    """The source model as a plain float32 ``nn.Module`` on the CPU in eval mode."""
    import torch

    network = kind.module(kind.load(model_dir, torch.device("cpu")))
    return copy.deepcopy(network).float().eval()


def _outputs(out: Any) -> list[np.ndarray]:
    """A model's outputs in the order its ONNX export names them: a tensor; the first item of
    YOLO's ``(y, extras)`` in eval mode, where ``y`` is ``output0`` or, for the segmenter,
    ``(output0, prototypes)``; a transformers output's first field (the logits)."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, list | tuple):
        out = out[0]
    tensors = list(out) if isinstance(out, list | tuple) else [out]
    return [t.detach().float().cpu().numpy() for t in tensors]
