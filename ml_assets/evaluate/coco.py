"""COCO box detection metrics, equal to pycocotools' ``COCOeval``, computed by faster-coco-eval.

``coco_metrics(ground_truth, detections)`` takes a COCO ground-truth dict (or its file) and a
COCO results list (or its file), checks both, and returns the 12 standard numbers in
pycocotools' order, per-class AP@[.5:.95] and AP50, and per-class precision-recall curves at
IoU .5. ``write_results`` writes detections as a COCO results file, atomically.

The engine is faster-coco-eval's ``COCOeval_faster`` (C++ matching and accumulation). Its numbers
equal pycocotools' on the same input (the tests compare them on randomized inputs with crowd
regions, empty images, categories without ground truth, more than 100 detections per image and
tied scores). We hand it records we built, never the caller's: its loaders add keys in place.
Two inputs where pycocotools itself goes wrong are handled here rather than copied:

- an empty results list: pycocotools' ``loadRes`` fails on it (``IndexError``); here it scores
  0 for every class with ground truth, which is what ``COCOeval`` computes for no detections;
- a ground-truth annotation with id 0: both engines store matches by annotation id with 0
  meaning "unmatched", so a detection matched to it counts as a false positive; ground-truth
  annotations are numbered 1..N here (their ids are not otherwise used), which gives the numbers
  pycocotools gives for the same file with ids starting at 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ml_assets.data.atomic import write_bytes
from ml_assets.data.coco import _gc_paused
from ml_assets.data.tables import DatasetError

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
"""The 12 numbers of ``COCOeval.summarize()``, in its order (``stats[0]`` ... ``stats[11]``)."""

STAT_LABELS = {
    "AP": "IoU=0.50:0.95 area=all    maxDets=100",
    "AP50": "IoU=0.50      area=all    maxDets=100",
    "AP75": "IoU=0.75      area=all    maxDets=100",
    "AP_small": "IoU=0.50:0.95 area=small  maxDets=100",
    "AP_medium": "IoU=0.50:0.95 area=medium maxDets=100",
    "AP_large": "IoU=0.50:0.95 area=large  maxDets=100",
    "AR1": "IoU=0.50:0.95 area=all    maxDets=1",
    "AR10": "IoU=0.50:0.95 area=all    maxDets=10",
    "AR100": "IoU=0.50:0.95 area=all    maxDets=100",
    "AR_small": "IoU=0.50:0.95 area=small  maxDets=100",
    "AR_medium": "IoU=0.50:0.95 area=medium maxDets=100",
    "AR_large": "IoU=0.50:0.95 area=large  maxDets=100",
}

RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
"""The recall points at which COCO samples its interpolated precision."""


@dataclass(frozen=True)
class ClassMetrics:
    """One category. AP values are NaN for a category without (non-crowd) ground truth, where
    pycocotools leaves -1 in its precision array and leaves the category out of every mean."""

    category_id: int
    name: str
    ap: float
    """AP@[.5:.95], area all, 100 detections per image: the mean of this category's precision."""
    ap50: float
    """AP at IoU .5 (the PASCAL VOC criterion) with COCO's 101-point interpolation."""
    ground_truth: int
    """Non-crowd ground-truth boxes."""
    detections: int
    precision: np.ndarray
    """Interpolated precision at IoU .5 at each of ``RECALL_THRESHOLDS`` (0 beyond the largest
    recall reached; -1 throughout without ground truth), for precision-recall plots."""
    scores: np.ndarray
    """The detection score at which each point of ``precision`` is reached (0 where unreached)."""


@dataclass(frozen=True)
class CocoMetrics:
    stats: dict[str, float]
    """The 12 standard numbers by ``STAT_NAMES``; -1 where pycocotools gives -1 (no ground truth
    in that area range)."""
    classes: tuple[ClassMetrics, ...]
    """Per category, in category id order."""

    @property
    def stats_list(self) -> list[float]:
        return [self.stats[name] for name in STAT_NAMES]

    @property
    def per_class(self) -> dict[str, float]:
        """Category name to AP@[.5:.95]."""
        return {c.name: c.ap for c in self.classes}

    @property
    def per_class_ap50(self) -> dict[str, float]:
        return {c.name: c.ap50 for c in self.classes}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; a NaN (category without ground truth) becomes None."""
        return {
            "stats": self.stats_list,
            "stat_names": list(STAT_NAMES),
            "per_class": {name: _or_none(v) for name, v in self.per_class.items()},
            "per_class_ap50": {name: _or_none(v) for name, v in self.per_class_ap50.items()},
        }


def coco_metrics(
    ground_truth: Mapping[str, Any] | str | Path, detections: list | str | Path
) -> CocoMetrics:
    """COCO box metrics of ``detections`` against ``ground_truth``, each a file or its content.

    Raises ``DatasetError`` (a ``ValueError``) naming the file and the record at fault for input
    that is not a COCO ground truth / results file: missing keys, unknown image or category ids,
    non-finite numbers, boxes of negative size, duplicate ids or category names.
    """
    with _gc_paused():  # collections, finding no cycles, took a quarter of the time
        gt_file, gt_data = _load(ground_truth, "<ground truth>")
        dt_file, dt_data = _load(detections, "<detections>")
        gt = _check_ground_truth(gt_data, gt_file)
        dt = _check_detections(dt_data, dt_file, gt["image_ids"], gt["names"])
        return _evaluate(gt, dt)


def write_results(path: str | Path, detections: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``detections`` (dicts with image_id, category_id, bbox as x, y, w, h in pixels and
    score) as a COCO results file at ``path``, atomically; each record is checked first."""
    import orjson

    checked = _check_detections(list(detections), str(path), None, None)
    records = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in checked]
    return write_bytes(Path(path), orjson.dumps(records))


def detections_from_arrays(
    image_ids: Iterable[int],
    category_ids: Iterable[int],
    boxes_xywh: np.ndarray,
    scores: Iterable[float],
) -> list[dict[str, Any]]:
    """COCO result records from parallel arrays (boxes as x, y, width, height in pixels)."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    ids, cats = np.asarray(image_ids).tolist(), np.asarray(category_ids).tolist()
    scores = np.asarray(scores, dtype=np.float64).tolist()
    if not len(ids) == len(cats) == len(boxes) == len(scores):
        raise ValueError(
            f"arrays of different lengths: {len(ids)} image ids, {len(cats)} category ids, "
            f"{len(boxes)} boxes, {len(scores)} scores"
        )
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(ids, cats, boxes.tolist(), scores, strict=True)
    ]


# --- input ---------------------------------------------------------------------------------------


def _load(source: Any, label: str) -> tuple[str, Any]:
    """(name for messages, parsed content) of a path or of content already in memory.

    orjson refuses the NaN and Infinity that Python's json module writes; such a file is parsed
    again by the json module so that the check names the record holding the non-finite number.
    """
    if not isinstance(source, str | Path):
        return label, source
    import json

    import orjson

    path = Path(source)
    data = path.read_bytes()
    try:
        return str(path), orjson.loads(data)
    except orjson.JSONDecodeError as err:
        try:
            return str(path), json.loads(data)
        except ValueError:
            message = f"not valid JSON: {err}"
        raise DatasetError("invalid-json", str(path), "", message) from None


def _fail(file: str, record: str, message: str, code: str = "invalid-record") -> NoReturn:
    raise DatasetError(code, file, record, message)


def _check_ground_truth(data: Any, file: str) -> dict[str, Any]:
    """The engine's ground-truth records (new dicts, annotation ids 1..N) and the id lookups."""
    if not isinstance(data, dict):
        _fail(file, "", f"not a COCO ground truth: expected an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(file, "", f"not a COCO ground truth: {key!r} must be a list", "missing-key")
    image_ids: set[int] = set()
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            _fail(file, f"images[{n}]", "an image needs an integer 'id'", "missing-key")
        if image["id"] in image_ids:
            _fail(file, f"images[{n}]", f"duplicate image id {image['id']}", "duplicate-id")
        image_ids.add(int(image["id"]))
    names: dict[int, str] = {}
    for n, category in enumerate(data["categories"]):
        where = f"categories[{n}]"
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            _fail(file, where, "a category needs an integer 'id'", "missing-key")
        if not isinstance(category.get("name"), str):
            _fail(file, where, "a category needs a 'name' string", "missing-key")
        if category["id"] in names:
            _fail(file, where, f"duplicate category id {category['id']}", "duplicate-id")
        if category["name"] in names.values():
            _fail(file, where, f"duplicate category name {category['name']!r}", "duplicate-name")
        names[int(category["id"])] = category["name"]
    columns = _columns(data["annotations"], file, _ANNOTATION, image_ids, names)
    return {
        "images": [{"id": i} for i in image_ids],
        "annotations": _engine_records(columns, _ANNOTATION),
        "names": names,
        "image_ids": image_ids,
    }


def _check_detections(
    data: Any, file: str, image_ids: set[int] | None, names: Mapping[int, str] | None
) -> list[dict[str, Any]]:
    """The engine's detection records (new dicts, as pycocotools' ``loadRes`` completes them:
    id 1..N, area w*h, iscrowd 0). ``image_ids``/``names`` None: ids are not looked up."""
    if not isinstance(data, list):
        _fail(file, "", f"not a COCO results file: expected a list, got {type(data).__name__}")
    return _engine_records(_columns(data, file, _DETECTION, image_ids, names), _DETECTION)


@dataclass(frozen=True)
class _Kind:
    """What differs between ground-truth annotations and detections."""

    record: str  # how a message names record n
    value: str  # the one number besides the box: area or score
    value_min: float  # its smallest allowed value
    crowd: bool  # has an optional iscrowd flag


_ANNOTATION = _Kind("annotations[{}]", "area", 0.0, True)
_DETECTION = _Kind("detection {}", "score", -math.inf, False)


def _columns(
    records: list, file: str, kind: _Kind, image_ids: set[int] | None, names: Mapping | None
) -> dict[str, Any]:
    """image_id, category_id, box (n x 4 floats), value and iscrowd of ``records``, checked.

    Well-formed input passes a vectorized screen; anything it does not pass goes through
    ``_record`` one record at a time, which holds the rules and names the first record at fault.
    The screen is stricter than the rules (exact types only), never looser.
    """
    screened = _screen(records, kind, image_ids, names)
    if screened is not None:
        return screened
    rows = [_record(n, r, file, kind, image_ids, names) for n, r in enumerate(records)]
    image, category, boxes, value, crowd = zip(*rows, strict=True) if rows else ([],) * 5
    return _as_columns(list(image), list(category), list(boxes), list(value), list(crowd))


def _screen(
    records: list, kind: _Kind, image_ids: set[int] | None, names: Mapping | None
) -> dict[str, Any] | None:
    """The columns when every record is well formed, else None."""
    try:
        image = [r["image_id"] for r in records]
        category = [r["category_id"] for r in records]
        boxes = [r["bbox"] for r in records]
        value = [r[kind.value] for r in records]
        crowd = [r.get("iscrowd", 0) for r in records] if kind.crowd else [0] * len(records)
        if not (
            {*map(type, image), *map(type, category), *map(type, crowd)} <= {int}
            and set(map(type, boxes)) <= {list}
            and {*map(type, value), *map(type, chain.from_iterable(boxes))} <= {int, float}
            and set(crowd) <= {0, 1}
        ):
            return None
        columns = _as_columns(image, category, boxes, value, crowd)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
        return None
    box, number = columns["box"], columns["value"]
    good = (
        box.shape == (len(records), 4)
        and np.isfinite(box).all()
        and (box[:, 2:] >= 0).all()
        and np.isfinite(number).all()
        and (number >= kind.value_min).all()
        and (image_ids is None or np.isin(columns["image_id"], list(image_ids)).all())
        and (names is None or np.isin(columns["category_id"], list(names)).all())
    )
    return columns if good else None


def _record(
    n: int, record: Any, file: str, kind: _Kind, image_ids: set[int] | None, names: Mapping | None
) -> tuple[int, int, tuple[float, ...], float, int]:
    """(image_id, category_id, box, value, iscrowd) of record ``n``, or a DatasetError naming it."""
    where = kind.record.format(n)
    if not isinstance(record, dict):
        _fail(file, where, f"a record must be an object, got {type(record).__name__}")
    missing = [k for k in ("image_id", "category_id", "bbox", kind.value) if k not in record]
    if missing:
        _fail(file, where, f"missing key(s) {', '.join(map(repr, missing))}", "missing-key")
    image_id, category_id, value = record["image_id"], record["category_id"], record[kind.value]
    if not _is_int(image_id) or (image_ids is not None and image_id not in image_ids):
        _fail(
            file,
            where,
            f"image_id {image_id!r} is not an image id of the ground truth",
            "unknown-image",
        )
    if not _is_int(category_id) or (names is not None and category_id not in names):
        message = f"category_id {category_id!r} is not a category id of the ground truth"
        _fail(file, where, message, "unknown-category")
    box = record["bbox"]
    if not isinstance(box, list | tuple) or len(box) != 4:
        _fail(file, where, f"bbox must be [x, y, width, height], got {box!r}", "invalid-box")
    if not all(_is_real(v) for v in box) or not math.isfinite(sum(box)):
        _fail(file, where, f"bbox must hold 4 finite numbers, got {box!r}", "invalid-box")
    if box[2] < 0 or box[3] < 0:
        _fail(file, where, f"bbox has a negative width or height: {box!r}", "invalid-box")
    if not _is_real(value) or not math.isfinite(value) or value < kind.value_min:
        limit = "" if kind.value_min == -math.inf else f" >= {kind.value_min:g}"
        _fail(
            file,
            where,
            f"{kind.value} must be a finite number{limit}, got {value!r}",
            f"invalid-{kind.value}",
        )
    crowd = record.get("iscrowd", 0) if kind.crowd else 0
    if crowd not in (0, 1):
        _fail(file, where, f"iscrowd must be 0 or 1, got {crowd!r}")
    return int(image_id), int(category_id), tuple(map(float, box)), float(value), int(crowd)


def _as_columns(image: list, category: list, boxes: list, value: list, crowd: list) -> dict:
    return {
        "image_id": np.array(image, dtype=np.int64),
        "category_id": np.array(category, dtype=np.int64),
        "box": np.array(boxes, dtype=np.float64) if boxes else np.empty((0, 4)),
        "value": np.array(value, dtype=np.float64),
        "iscrowd": np.array(crowd, dtype=np.int64),
    }


def _engine_records(columns: dict[str, Any], kind: _Kind) -> list[dict[str, Any]]:
    """New dicts for faster-coco-eval, numbered 1..N: what pycocotools' ``loadRes`` makes of a
    detection (area = w * h, iscrowd 0) or a ground-truth annotation as given."""
    box = columns["box"]
    rows = zip(
        columns["image_id"].tolist(),
        columns["category_id"].tolist(),
        box.tolist(),
        columns["value"].tolist(),
        (box[:, 2] * box[:, 3]).tolist(),
        columns["iscrowd"].tolist(),
        strict=True,
    )
    if kind.crowd:
        return [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": v, "iscrowd": k}
            for n, (i, c, b, v, _, k) in enumerate(rows, start=1)
        ]
    return [
        {"id": n, "image_id": i, "category_id": c, "bbox": b, "score": v, "area": a, "iscrowd": 0}
        for n, (i, c, b, v, a, _) in enumerate(rows, start=1)
    ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


# --- evaluation ----------------------------------------------------------------------------------


def _evaluate(gt: dict[str, Any], detections: list[dict[str, Any]]) -> CocoMetrics:
    from faster_coco_eval import COCO, COCOeval_faster

    categories = [{"id": c, "name": name} for c, name in gt["names"].items()]
    truth, results = COCO(), COCO()
    truth.dataset = {
        "images": gt["images"],
        "annotations": gt["annotations"],
        "categories": categories,
    }
    results.dataset = {"images": gt["images"], "annotations": detections, "categories": categories}
    truth.createIndex()
    results.createIndex()
    engine = COCOeval_faster(truth, results, "bbox", print_function=quiet)
    return summarized(engine, gt["names"], gt["annotations"], detections)


def summarized(
    engine: Any, names: Mapping[int, str], truth: list[dict], detections: list[dict]
) -> CocoMetrics:
    """Evaluate, accumulate and summarize a faster-coco-eval engine (boxes or masks): its 12
    COCO numbers and :func:`class_metrics`."""
    engine.evaluate()
    engine.accumulate()
    engine.summarize()
    stats = dict(zip(STAT_NAMES, (float(v) for v in engine.stats[:12]), strict=True))
    return CocoMetrics(stats, class_metrics(engine, names, truth, detections))


def class_metrics(
    engine: Any, names: Mapping[int, str], truth: list[dict], detections: list[dict]
) -> tuple[ClassMetrics, ...]:
    """Per category from an evaluated engine's accumulated arrays (boxes or masks): precision
    is [IoU, recall, category, area, maxDets], categories in ``params.catIds`` order (sorted
    ids), area 0 = all, maxDets -1 = 100. ``truth`` and ``detections`` are counted per class."""
    precision, scores = engine.eval["precision"], engine.eval["scores"]
    iou50 = int(np.flatnonzero(np.isclose(engine.params.iouThrs, 0.5))[0])
    counted = _count(a["category_id"] for a in truth if not a["iscrowd"])
    found = _count(d["category_id"] for d in detections)
    classes = []
    for k, category_id in enumerate(engine.params.catIds):
        curve = precision[:, :, k, 0, -1]
        classes.append(
            ClassMetrics(
                category_id=int(category_id),
                name=names[category_id],
                ap=_mean_valid(curve),
                ap50=_mean_valid(curve[iou50]),
                ground_truth=counted.get(category_id, 0),
                detections=found.get(category_id, 0),
                precision=np.array(curve[iou50]),
                scores=np.array(scores[iou50, :, k, 0, -1]),
            )
        )
    return tuple(classes)


def _mean_valid(values: np.ndarray) -> float:
    """The mean of the entries above -1 (pycocotools' mark for "no ground truth"), NaN if none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _count(values: Iterable[int]) -> dict[int, int]:
    ids, counts = np.unique(np.fromiter(values, dtype=np.int64), return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def quiet(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval reports progress through this; we print nothing."""
