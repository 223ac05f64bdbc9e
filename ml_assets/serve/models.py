"""The champions a server answers with: each kind's promoted export loaded into onnxruntime,
images decoded and checked, and the model's outputs turned into what ``kind.predict`` returns.

A kind's champion is its record ``models/<kind>/champion.json`` (``promoted_<kind>`` writes it)
and the export of that version ``exports/<kind>/<version>`` (``exported_<kind>``).
:class:`Champions` loads them and, every ``poll`` seconds, reads the records again: a changed
record loads the new export beside the old one and then replaces the reference to it in one
assignment, so a request that already holds a :class:`Served` finishes on it. A record whose
export is not written yet (the export asset runs after promotion) keeps the old model until it is.

Preprocessing is ``ml_assets.train.export.preprocess`` (what the export's parity check uses);
the classifier's softmax (with its flip test-time augmentation when the model was trained with
it) and YOLO's box decoding and class-aware non-maximum suppression (ultralytics'
``non_max_suppression`` and ``scale_boxes``, in numpy with OpenCV's batched NMS) and, for the
segmenter, its masks (``process_mask`` on the two outputs, then the contours ``kind.predict``
turns into COCO RLE) reproduce the kinds' ``predict``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import orjson

from ml_assets.train.export import preprocess, read_export

log = logging.getLogger("ml_assets.serve")


class BadImage(ValueError):
    """An upload that is not a usable image: the client's error (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """An upload as an RGB uint8 array; :class:`BadImage` when it is empty, not an image,
    truncated, or larger than ``max_pixels`` (checked from the header, before decoding)."""
    from PIL import Image

    if not data:
        raise BadImage("empty image: the body or file part holds no bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise BadImage(
                    f"image of {image.width}x{image.height} pixels is over the limit of "
                    f"{max_pixels} pixels",
                    413,
                )
            return np.asarray(image.convert("RGB"))
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"not a readable image: {err}") from err


@dataclass
class Served:
    """One loaded champion export."""

    kind: str
    version: str
    session: object  # onnxruntime.InferenceSession
    info: dict  # read_export(...)
    record: dict  # the champion record it was loaded for
    lineage: dict  # the model folder's card (model.json) (empty when that folder is not here)
    since: str  # when the record was written (ISO 8601, UTC)
    export_hash: str  # sha256 of the ONNX file, first 16 hex digits
    load_seconds: float
    names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [c["name"] for c in self.info["classes"]]

    @property
    def task(self) -> str:
        resize = self.info["preprocessing"]["resize"]
        if resize == "stretch":
            return "classify"
        return "segment" if len(self.info["outputs"]) > 1 else "detect"

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "version": self.version,
            "task": self.task,
            "fold": self.lineage.get("fold", "final"),
            "folds_digest": self.lineage.get("folds_digest"),
            "fingerprint": self.lineage.get("fingerprint"),
            "model": self.record.get("model"),
            "score": self.record.get("score"),
            "mlflow_model_version": self.record.get("mlflow_version"),
            "champion_since": self.since,
            "export_hash": self.export_hash,
            "input_size": self.info["preprocessing"]["size"],
            "classes": self.names,
            "load_seconds": round(self.load_seconds, 4),
        }

    def predict(self, images: Sequence[np.ndarray], confidence: float = 0.25) -> list[dict]:
        """One answer per RGB image: classes with probabilities, or detections in its pixels."""
        x = preprocess(self.info["preprocessing"], images)
        feed = {self.info["inputs"][0]: x}
        if self.task == "classify":
            probabilities = softmax(self.session.run(None, feed)[0])
            if self.lineage.get("config", {}).get("tta"):  # as the kind's predict averages
                flipped = {self.info["inputs"][0]: np.ascontiguousarray(x[..., ::-1])}
                probabilities = (probabilities + softmax(self.session.run(None, flipped)[0])) / 2
            return [self.classes(p) for p in probabilities]
        outputs = self.session.run(None, feed)
        size = self.info["preprocessing"]["size"]
        # the segmenter's output1: each image's mask prototypes
        protos = outputs[1] if self.task == "segment" else [None] * len(images)
        return [
            self.detections(out, size, image.shape[:2], confidence, proto)
            for out, proto, image in zip(outputs[0], protos, images, strict=True)
        ]

    def classes(self, p: np.ndarray) -> dict:
        best = int(p.argmax())
        return {
            "predicted": self.names[best],
            "confidence": float(p[best]),
            "probabilities": {n: float(v) for n, v in zip(self.names, p, strict=True)},
        }

    def detections(
        self, out: np.ndarray, size, shape, confidence: float, protos: np.ndarray | None = None
    ) -> dict:
        """Boxes of one image from the raw ``output0`` (4 + classes [+ mask coefficients],
        anchors); with the segmenter's ``protos`` (its ``output1``) each detection also gets its
        mask (``segmentation``, COCO RLE in the image's pixels), and, as ultralytics does, a
        detection whose mask is empty is dropped."""
        ids = [c["id"] for c in self.info["classes"]]
        boxes, scores, labels, coefficients = decode_yolo(out, len(ids), confidence)
        masks: list = [None] * len(boxes)
        if protos is not None:
            binary = process_masks(protos, coefficients, boxes, size)
            keep = binary.any(axis=(1, 2))
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            masks = [mask_rle(m, shape) for m in binary[keep]]
        boxes = scale_boxes(size, boxes, shape)
        found = [
            {
                "box": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "class": self.names[c],
                "category_id": ids[c],
                "score": float(s),
            }
            | ({"segmentation": m} if m is not None else {})
            for (x1, y1, x2, y2), s, c, m in zip(boxes, scores, labels, masks, strict=True)
        ]
        return {"height": int(shape[0]), "width": int(shape[1]), "detections": found}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def decode_yolo(
    out: np.ndarray, classes: int, confidence: float, iou: float = 0.7, max_det: int = 300
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ultralytics' ``non_max_suppression`` (best class per anchor, class-aware, the predict
    defaults: IoU 0.7, 300 detections) on one image's (4 + classes [+ extra], anchors) output:
    boxes x1, y1, x2, y2 in input pixels, scores, class indices, and the kept anchors' extra
    rows (the segmenter's mask coefficients; none for the detector) as (detections, extra)."""
    x = out.T
    scores = x[:, 4 : 4 + classes].max(axis=1)
    x = x[scores > confidence]
    labels = x[:, 4 : 4 + classes].argmax(axis=1)
    scores = x[:, 4 : 4 + classes].max(axis=1)
    cx, cy, w, h = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    # OpenCV's class-aware greedy NMS, best score first (what torchvision's batched_nms does).
    keep = np.asarray(
        cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), labels.astype(np.int32), 0.0, iou),
        dtype=np.int64,
    ).reshape(-1)[:max_det]
    return boxes[keep], scores[keep], labels[keep], x[keep, 4 + classes :]


def process_masks(
    protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, size
) -> np.ndarray:
    """ultralytics' ``process_mask`` with ``upsample=True`` (what its predict uses): each
    detection's coefficients times the prototypes (mask dim, height / 4, width / 4), resized
    bilinearly to the input ``size`` (OpenCV's linear resize samples pixel centres as
    ``F.interpolate(align_corners=False)`` does), positive logits kept, cropped to its box in
    input pixels: (detections, height, width) bool."""
    height, width = size
    dim, mh, mw = protos.shape
    logits = (coefficients.astype(np.float32) @ protos.reshape(dim, -1)).reshape(-1, mh, mw)
    resized = np.empty((len(logits), height, width), np.float32)
    for start in range(0, len(logits), 512):  # OpenCV resizes at most 512 channels at once
        chunk = np.ascontiguousarray(logits[start : start + 512].transpose(1, 2, 0))
        up = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_LINEAR)
        resized[start : start + 512] = up.reshape(height, width, -1).transpose(2, 0, 1)
    columns, rows = np.arange(width)[None, None, :], np.arange(height)[None, :, None]
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    inside = (columns >= x1) & (columns < x2) & (rows >= y1) & (rows < y2)
    return (resized > 0) & inside


def mask_rle(mask: np.ndarray, shape) -> dict:
    """A mask in letterboxed input pixels as COCO RLE in the pixels of an image of ``shape``
    (height, width), the way ``kind.predict`` makes it: the mask's outer contours (OpenCV,
    ultralytics' ``masks2segments``) scaled back like boxes (``scale_coords``, clipped), filled
    by pycocotools; a contour of fewer than 3 points has no area."""
    from ml_assets.data.coco import polygons_rle

    height, width = (int(v) for v in shape)
    contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[
        0
    ]
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)
        corners = np.concatenate([points, points], axis=1)  # scale_boxes takes x1, y1, x2, y2
        points = scale_boxes(mask.shape, corners, (height, width))[:, :2]
        polygons.append(points.reshape(-1).tolist())
    return polygons_rle(polygons, height, width)


def scale_boxes(size, boxes: np.ndarray, shape) -> np.ndarray:
    """ultralytics' ``scale_boxes``: letterboxed input pixels (``size`` = height, width) back to
    an image of ``shape`` (height, width), clipped to it."""
    gain = min(size[0] / shape[0], size[1] / shape[1])
    new_h, new_w = (max(round(s * gain), 1) for s in shape)
    pad_x, pad_y = round((size[1] - new_w) / 2 - 0.1), round((size[0] - new_h) / 2 - 0.1)
    boxes = boxes - np.array([pad_x, pad_y, pad_x, pad_y], dtype=boxes.dtype)
    boxes /= np.array([new_w / shape[1], new_h / shape[0]] * 2, dtype=boxes.dtype)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, shape[0])
    return boxes


def load_champion(home: Path, kind: str, threads: int = 0) -> Served:
    """The champion export of ``kind`` under the home folder ``home``, loaded in onnxruntime."""
    import onnxruntime

    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.train.runs import read_champion, read_lineage

    started = time.perf_counter()
    paths = MLAssetsHome(root=str(home))
    record_path = paths.champion_path(kind)
    record = read_champion(record_path)
    if record is None:
        raise FileNotFoundError(f"{kind} has no champion yet (no {record_path})")
    out = paths.exports_dir(kind, record["version"])
    info = read_export(out)  # FileNotFoundError until exported_<kind> wrote it
    if info["kind"] != kind:
        raise ValueError(f"{out} is an export of a {info['kind']}, not of a {kind}")
    onnx_bytes = (out / info["onnx"]).read_bytes()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    try:
        lineage = read_lineage(Path(record["model"]))
    except FileNotFoundError:  # a server that was given the exports only
        lineage = {}
    since = datetime.fromtimestamp(record_path.stat().st_mtime, UTC).isoformat()
    return Served(
        kind,
        record["version"],
        session,
        info,
        record,
        lineage,
        since,
        hashlib.sha256(onnx_bytes).hexdigest()[:16],
        time.perf_counter() - started,
    )


class Champions:
    """The served champion of each kind, kept current by a polling thread."""

    def __init__(
        self,
        home: Path,
        kinds: Sequence[str],
        poll: float = 1.0,
        threads: int = 0,
        on_load: Callable[[Served, Served | None], None] | None = None,
    ) -> None:
        self.home, self.kinds, self.poll, self.threads = Path(home), list(kinds), poll, threads
        self.on_load = on_load
        self.models: dict[str, Served] = {}
        self.errors: dict[str, str] = {}
        self._seen: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Load each kind whose champion record changed since it was last loaded."""
        from ml_assets.defs.resources import MLAssetsHome

        paths = MLAssetsHome(root=str(self.home))
        for kind in self.kinds:
            path = paths.champion_path(kind)
            try:
                content = path.read_bytes()
            except FileNotFoundError:
                self.errors[kind] = f"{kind} has no champion yet (no {path})"
                continue
            if self._seen.get(kind) == content:
                continue
            try:
                served = load_champion(self.home, kind, self.threads)
            except Exception as err:  # keep serving the old one; try again at the next poll
                self.errors[kind] = f"{type(err).__name__}: {err}"
                log.warning("%s: champion not loaded: %s", kind, self.errors[kind])
                continue
            if orjson.loads(content)["version"] != served.version:
                continue  # the record moved while loading: load again at the next poll
            old = self.models.get(kind)
            self.models[kind] = served  # one assignment: requests hold the model they started on
            self._seen[kind] = content
            self.errors.pop(kind, None)
            log.info("%s: serving %s (%.2f s to load)", kind, served.version, served.load_seconds)
            if self.on_load:
                self.on_load(served, old)

    @property
    def ready(self) -> bool:
        return all(k in self.models for k in self.kinds)

    def start(self) -> None:
        self.refresh()
        if self.poll > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="champions", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.refresh()
            except Exception:  # never let the watcher die
                log.exception("reading the champion records failed")


def champion_kinds(home: Path) -> list[str]:
    """Every registered kind with a champion record and an exporter, in registry order."""
    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.train.registry import KINDS

    paths = MLAssetsHome(root=str(home))
    return [
        name
        for name, kind in KINDS.items()
        if kind.export_tolerance is not None and paths.champion_path(name).exists()
    ]
