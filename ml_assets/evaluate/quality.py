"""What the folds know about the data: labels most likely wrong, broken images, what changed.

Every image of a version is held out by exactly one fold, so the evaluations' predictions are
out-of-fold predictions of the whole version, made without extra training:

- :func:`label_issues`: classification rows (one per annotation crop, ``p_<class>`` columns)
  through cleanlab's ``find_label_issues``; detections through cleanlab's object-detection box
  scores (``overlooked``: a confident detection no annotation covers; ``swapped``: a box whose
  class a confident detection of another class contradicts; ``badly_located``: a box that no
  same-class detection fits). Each row names the image file, the annotation record as its
  source wrote it, the issue type, a score (higher: more likely wrong), the given and the
  suggested label.
- :func:`image_issues`: model-free image problems and duplicates through cleanvision, with
  near duplicates that sit in different folds (leaks) marked.
- :func:`version_diff`: two versions compared by content: images added, removed, changed;
  annotations added, removed, relabelled and moved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_assets.data.tables import SOURCE_FILE, SOURCE_RECORD, Dataset, class_list
from ml_assets.evaluate.detection import iou

ISSUE_COLUMNS = ["file", "record", "type", "score", "given", "suggested"]
BOX = ["x", "y", "w", "h"]


def probability_columns(predictions: pd.DataFrame) -> list[str]:
    return [c for c in predictions.columns if c.startswith("p_")]


def label_issues(
    ds: Dataset, predictions: pd.DataFrame, held_out: str, image_ids=None, **thresholds
) -> pd.DataFrame:
    """The label issues of ``ds`` from out-of-fold ``predictions`` (every fold's, see
    :func:`ml_assets.evaluate.report.read_fold_predictions`), worst first, as the kind's ``held_out`` says they are:
    ``"classes"`` (class probabilities per annotation) or ``"boxes"`` (detections;
    ``image_ids``: the images the folds held out, those without any detection included;
    ``thresholds``: :func:`detection_issues`')."""
    if held_out == "classes":
        missing = {"annotation_id", "true"} - set(predictions.columns)
        if missing or not probability_columns(predictions):
            raise ValueError(
                f"these class predictions lack {sorted(missing) or 'p_<class> columns'} "
                "(written before they existed?): rematerialize the evaluation of every fold"
            )
        return classification_issues(ds, predictions)
    if held_out != "boxes":
        raise ValueError(f"no label issues from predictions that hold {held_out!r}")
    missing = {"image_id", "category_id", "score", *BOX} - set(predictions.columns)
    if missing:
        raise ValueError(
            f"these predictions hold neither classes nor boxes (missing {sorted(missing)})"
        )
    ids = predictions["image_id"].unique() if image_ids is None else image_ids
    return detection_issues(ds, predictions, ids, **thresholds)


def classification_issues(ds: Dataset, predictions: pd.DataFrame) -> pd.DataFrame:
    """cleanlab's ``find_label_issues`` on the out-of-fold class probabilities of each crop
    (``annotation_id``, ``true``, ``p_<class>``); score: 1 - the given label's self-confidence."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    columns = probability_columns(predictions)
    names = [c.removeprefix("p_") for c in columns]
    index = {n: i for i, n in enumerate(names)}
    unknown = predictions.loc[~predictions["true"].isin(index)]
    if len(unknown):
        row = unknown.iloc[0]
        raise ValueError(
            f"annotation {row['annotation_id']}: given class {row['true']!r} is not one of the "
            f"model's classes {names}"
        )
    labels = predictions["true"].map(index).to_numpy(np.int64)
    probs = predictions[columns].to_numpy(np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(labels, probs)
    flagged = find_label_issues(labels, probs, n_jobs=1) if len(labels) else labels.astype(bool)
    found = pd.DataFrame(
        {
            "annotation_id": predictions["annotation_id"].to_numpy(),
            "type": "label",
            "score": 1 - quality,
            "given": predictions["true"].to_numpy(),
            "suggested": np.asarray(names, dtype=object)[probs.argmax(axis=1)],
        }
    )[flagged]
    found = found.merge(ds.annotations[["annotation_id", "image_id", *BOX]], on="annotation_id")
    return with_sources(ds, found)


def xyxy(frame: pd.DataFrame) -> np.ndarray:
    boxes = frame[BOX].to_numpy(np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def detection_inputs(ds: Dataset, predictions: pd.DataFrame, image_ids) -> tuple[list, list]:
    """cleanlab's object-detection ``labels`` and ``predictions`` for ``image_ids``: given
    boxes (not crowd) and detections as ``[x1, y1, x2, y2]`` with class indices in category
    order."""
    classes = [c["id"] for c in class_list(ds)]
    index = {c: i for i, c in enumerate(classes)}
    unknown = set(predictions["category_id"]) - set(index)
    if unknown:
        raise ValueError(f"detections of categories {sorted(unknown)} this version does not have")
    given = ds.annotations[ds.annotations["iscrowd"] == 0].groupby("image_id")
    found = predictions.groupby("image_id")
    labels, detections = [], []
    for image_id in image_ids:
        boxes = given.get_group(image_id) if image_id in given.groups else ds.annotations[:0]
        labels.append(
            {
                "bboxes": xyxy(boxes),
                "labels": boxes["category_id"].map(index).to_numpy(np.int64),
                "image_id": image_id,
                "annotation_ids": boxes["annotation_id"].to_numpy(),
            }
        )
        mine = found.get_group(image_id) if image_id in found.groups else predictions[:0]
        per_class = []
        for c in classes:
            rows = mine[mine["category_id"] == c]
            per_class.append(
                np.concatenate([xyxy(rows), rows[["score"]].to_numpy(np.float64)], axis=1)
            )
        detections.append(per_class)
    return labels, detections


def detection_issues(
    ds: Dataset,
    predictions: pd.DataFrame,
    image_ids,
    confident: float = 0.5,
    located: float = 0.3,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """cleanlab's per-box scores (``compute_{overlooked,swap,badloc}_box_scores``) on out-of-fold
    detections of ``image_ids``: a box is an issue when its quality is below ``threshold``.
    ``confident``: the least detection score that can claim an overlooked or swapped box
    (cleanlab's default is 0.95, for models trained far longer than a fold here);
    ``located``: the least score of a detection that may show where a box belongs."""
    names = [c["name"] for c in class_list(ds)]
    labels, detections = detection_inputs(ds, predictions, image_ids)
    if not labels:
        return with_sources(ds, pd.DataFrame())
    overlooked, swapped, badly_located = box_scores(labels, detections, confident, located)
    rows = []
    for label, per_class, over, swap, badloc in zip(
        labels, detections, overlooked, swapped, badly_located, strict=True
    ):
        boxes = np.concatenate([p[:, :4] for p in per_class]) if per_class else np.zeros((0, 4))
        probs = np.concatenate([p[:, 4] for p in per_class]) if per_class else np.zeros(0)
        classes = np.concatenate([np.full(len(p), k) for k, p in enumerate(per_class)]).astype(int)
        for j, quality in enumerate(over):
            if quality < threshold:  # NaN: not a candidate
                rows.append(
                    box_row(label["image_id"], None, "overlooked", quality, "", names[classes[j]])
                    | suggested_box(boxes[j], as_given=True)
                )
        for i, k in enumerate(label["labels"]):
            base = label["image_id"], label["annotation_ids"][i]
            others = (classes != k) & (probs > confident)
            if swap[i] < threshold and others.any():
                best = np.flatnonzero(others)[
                    np.argmax(xyxy_iou(label["bboxes"][i], boxes[others]))
                ]
                rows.append(
                    box_row(*base, "swapped", swap[i], names[k], names[classes[best]])
                    | suggested_box(boxes[best])
                )
            same = (classes == k) & (probs > located)
            if badloc[i] < threshold:
                best = (
                    np.flatnonzero(same)[np.argmax(xyxy_iou(label["bboxes"][i], boxes[same]))]
                    if (same.any())
                    else None
                )
                rows.append(
                    box_row(*base, "badly_located", badloc[i], names[k], names[k])
                    | (suggested_box(boxes[best]) if best is not None else {})
                )
    return with_sources(ds, with_given_boxes(ds, pd.DataFrame(rows)))


def box_scores(labels: list, detections: list, confident: float, located: float) -> tuple:
    """cleanlab's overlooked, swap and badloc box scores, an array per image each: overlooked
    one per detection, swap and badloc one per given box (NaN: not a candidate)."""
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
    )

    clean = [{k: v for k, v in lab.items() if k in ("bboxes", "labels")} for lab in labels]
    overlooked = compute_overlooked_box_scores(
        labels=clean, predictions=detections, high_probability_threshold=confident
    )
    swapped = compute_swap_box_scores(
        labels=clean, predictions=detections, high_probability_threshold=confident
    )
    badly_located = compute_badloc_box_scores(
        labels=clean, predictions=detections, low_probability_threshold=located
    )
    return overlooked, swapped, badly_located


def with_given_boxes(ds: Dataset, found: pd.DataFrame) -> pd.DataFrame:
    """Issue rows of given annotations with the box as the version holds it (x, y, w, h)."""
    if len(found):
        given = ds.annotations.set_index("annotation_id")[BOX]
        known = found["annotation_id"].notna()
        for c in BOX:
            found.loc[known, c] = given.loc[found.loc[known, "annotation_id"], c].to_numpy()
    return found


def box_row(image_id, annotation_id, kind: str, quality: float, given: str, suggested: str):
    return {
        "image_id": image_id,
        "annotation_id": annotation_id,
        "type": kind,
        "score": 1 - float(quality),
        "given": given,
        "suggested": suggested,
    }


def suggested_box(box: np.ndarray, as_given: bool = False) -> dict:
    """A detection's ``[x1, y1, x2, y2]`` as the suggested box (``s_x``...); ``as_given``: also
    as the row's box (an overlooked object has no given box)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    found = {"s_x": x1, "s_y": y1, "s_w": x2 - x1, "s_h": y2 - y1}
    return found | ({"x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1} if as_given else {})


def xyxy_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box (cleanlab's form) with each of ``boxes``: the
    evaluation's :func:`~ml_assets.evaluate.detection.iou` on x, y, w, h."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return iou(np.r_[box[:2], box[2:] - box[:2]], np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])


def with_sources(ds: Dataset, found: pd.DataFrame) -> pd.DataFrame:
    """Issue rows with the image ``file`` and the annotation ``record`` as its source wrote it
    (the reader's ``source_record``, in ``source_file``), worst first."""
    columns = [*ISSUE_COLUMNS, "source_file", "image_id", "annotation_id", *BOX]
    columns += ["s_x", "s_y", "s_w", "s_h"]
    if not len(found):
        return pd.DataFrame(columns=columns)
    found = found.merge(ds.images[["image_id", "file_name"]], on="image_id", how="left")
    found["file"] = found.pop("file_name")
    ann = ds.annotations.set_index("annotation_id")
    ids = found["annotation_id"]
    source = ann[SOURCE_RECORD] if SOURCE_RECORD in ann else pd.Series(dtype=object)
    files = ann[SOURCE_FILE] if SOURCE_FILE in ann else pd.Series(dtype=object)
    found["record"] = [
        "" if pd.isna(a) else (text(source.get(int(a))) or f"annotation {int(a)}") for a in ids
    ]
    found["source_file"] = ["" if pd.isna(a) else text(files.get(int(a))) for a in ids]
    found["source_file"] = found["source_file"].where(found["source_file"] != "", found["file"])
    found = found.reindex(columns=columns)
    found["annotation_id"] = found["annotation_id"].astype("Int64")  # none: overlooked
    return found.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def issue_counts(found: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in found["type"].value_counts().items()}


def gallery_png(ds: Dataset, found: pd.DataFrame, count: int = 12) -> bytes:
    """The worst ``count`` issues (the report's box grid): the given box dashed green, the
    suggested one red with the suggested label."""
    from ml_assets.evaluate.plots import boxes_png

    def box(row, prefix: str, label: str) -> list:
        values = [getattr(row, f"{prefix}{c}") for c in BOX]
        return [] if any(pd.isna(v) for v in values) else [(*values, label)]

    files = ds.images.set_index("image_id")["file_name"]
    samples = [
        {
            "image": read_rgb(ds.image_path(files[row.image_id])),
            "title": f"{row.type}: {row.given or '-'} -> {row.suggested}",
            "truth": box(row, "", row.given),
            "predicted": box(row, "s_", row.suggested),
        }
        for row in found.head(count).itertuples()
    ]
    return boxes_png(samples, "label issues", 4, "dashed green: given, red: suggested")


def read_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# --- image issues (cleanvision) -----------------------------------------------------------------

IMAGE_ISSUE_TYPES = (
    "blurry",
    "dark",
    "light",
    "low_information",
    "odd_aspect_ratio",
    "odd_size",
    "exact_duplicates",
    "near_duplicates",
)


def image_issues(ds: Dataset, assignment: pd.DataFrame | None = None) -> pd.DataFrame:
    """cleanvision's issues of every image of ``ds`` (model-free): one row per (file, type)
    with cleanvision's score (lower: worse) and, for duplicates, the files it duplicates and
    ``leak`` (its set spans several folds of ``assignment``)."""
    from cleanvision import Imagelab

    paths = [str(ds.image_path(f)) for f in ds.images["file_name"]]
    relative = dict(zip(paths, ds.images["file_name"], strict=True))
    folds = {}
    if assignment is not None:
        fold_of = assignment.set_index("image_id")["fold"]
        folds = {p: fold_of.get(i) for p, i in zip(paths, ds.images["image_id"], strict=True)}
    lab = Imagelab(filepaths=paths)
    lab.find_issues({t: {} for t in IMAGE_ISSUE_TYPES}, n_jobs=1, verbose=False)
    rows = []
    for kind in IMAGE_ISSUE_TYPES:
        flag = f"is_{kind}_issue"
        if flag not in lab.issues:
            continue
        if kind.endswith("duplicates"):
            for group in lab.info.get(kind, {}).get("sets", []):
                spans = len({folds.get(p) for p in group}) > 1 if folds else False
                for p in group:
                    others = ", ".join(relative[o] for o in group if o != p)
                    rows.append(
                        {
                            "file": relative[p],
                            "type": kind,
                            "score": 0.0,
                            "duplicates": others,
                            "leak": spans,
                        }
                    )
            continue
        hit = lab.issues[lab.issues[flag]]
        score = f"{kind}_score"
        for p, value in zip(hit.index, hit[score], strict=True):
            rows.append(
                {
                    "file": relative[p],
                    "type": kind,
                    "score": float(value),
                    "duplicates": "",
                    "leak": False,
                }
            )
    columns = ["file", "type", "score", "duplicates", "leak"]
    return (
        pd.DataFrame(rows, columns=columns)
        .sort_values(["type", "score", "file"])
        .reset_index(drop=True)
    )


# --- version diff ------------------------------------------------------------------------------


def match_images(before: Dataset, after: Dataset) -> tuple[pd.DataFrame, list, list]:
    """Image pairs (``before_id``, ``after_id``, ``changed``): the same content first (by
    sha256, whatever the name), then the same file name with other content; and the ids
    only ``before`` has (removed) and only ``after`` has (added)."""
    old = before.images[["image_id", "file_name", "sha256"]]
    new = after.images[["image_id", "file_name", "sha256"]]
    pairs, used_old, used_new = [], set(), set()
    by_hash: dict[str, list[int]] = {}
    for row in old.itertuples():
        if row.sha256:
            by_hash.setdefault(row.sha256, []).append(row.image_id)
    for row in new.itertuples():
        candidates = [i for i in by_hash.get(row.sha256, []) if i not in used_old]
        if row.sha256 and candidates:
            pairs.append((candidates[0], row.image_id, False))
            used_old.add(candidates[0])
            used_new.add(row.image_id)
    old_by_name = dict(zip(old["file_name"], old["image_id"], strict=True))
    for row in new.itertuples():
        was = old_by_name.get(row.file_name)
        if row.image_id not in used_new and was is not None and was not in used_old:
            pairs.append((was, row.image_id, True))
            used_old.add(was)
            used_new.add(row.image_id)
    removed = [i for i in old["image_id"] if i not in used_old]
    added = [i for i in new["image_id"] if i not in used_new]
    return pd.DataFrame(pairs, columns=["before_id", "after_id", "changed"]), removed, added


def match_boxes(old: pd.DataFrame, new: pd.DataFrame, iou_threshold: float) -> list[dict]:
    """Annotation changes of one image pair: greedy by IoU, a pair at ``iou_threshold`` or more
    is the same object (``relabelled`` when its class differs), a pair that overlaps less is
    ``moved``; what is left is ``removed`` or ``added``."""
    a, b = old[BOX].to_numpy(np.float64), new[BOX].to_numpy(np.float64)
    overlap = np.array([iou(box, b) for box in a]).reshape(len(a), len(b))
    rows, free_a, free_b = [], set(range(len(a))), set(range(len(b)))
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(b))
        if overlap[i, j] <= 0:
            break
        if i not in free_a or j not in free_b:
            continue
        free_a.discard(i)
        free_b.discard(j)
        same_class = old.iloc[i]["category_id"] == new.iloc[j]["category_id"]
        if overlap[i, j] >= iou_threshold and same_class:
            continue
        kind = "relabelled" if overlap[i, j] >= iou_threshold else "moved"
        rows.append(change(kind, old.iloc[i], new.iloc[j], float(overlap[i, j])))
    rows += [change("removed", old.iloc[i], None) for i in sorted(free_a)]
    rows += [change("added", None, new.iloc[j]) for j in sorted(free_b)]
    return rows


CHANGE_COLUMNS = [  # the keys of a change() row, in the diff's column order
    "change",
    "before_annotation",
    "after_annotation",
    "before_category",
    "after_category",
    "iou",
]


def change(kind: str, old, new, overlap: float | None = None) -> dict:
    return {
        "change": kind,
        "before_annotation": None if old is None else int(old["annotation_id"]),
        "after_annotation": None if new is None else int(new["annotation_id"]),
        "before_category": None if old is None else int(old["category_id"]),
        "after_category": None if new is None else int(new["category_id"]),
        "iou": overlap,
    }


def version_diff(before: Dataset, after: Dataset, iou_threshold: float = 0.5) -> dict:
    """What changed from ``before`` to ``after``: ``images`` (file, change: added, removed,
    changed), ``annotations`` (one row per added, removed, relabelled or moved box, with the
    file), ``counts`` and the ``histogram`` of classes before and after (by class name)."""
    pairs, removed, added = match_images(before, after)
    old_files = before.images.set_index("image_id")["file_name"]
    new_files = after.images.set_index("image_id")["file_name"]
    images = [{"file": new_files[i], "change": "added"} for i in added]
    images += [{"file": old_files[i], "change": "removed"} for i in removed]
    images += [
        {"file": new_files[p.after_id], "change": "changed"}
        for p in pairs.itertuples()
        if p.changed
    ]
    old_ann = before.annotations.groupby("image_id")
    new_ann = after.annotations.groupby("image_id")

    def boxes(groups, frame, image_id):
        return groups.get_group(image_id) if image_id in groups.groups else frame[:0]

    rows = []
    for p in pairs.itertuples():
        found = match_boxes(
            boxes(old_ann, before.annotations, p.before_id),
            boxes(new_ann, after.annotations, p.after_id),
            iou_threshold,
        )
        rows += [r | {"file": new_files[p.after_id]} for r in found]
    for i in removed:
        rows += [
            change("removed", a, None) | {"file": old_files[i]}
            for _, a in boxes(old_ann, before.annotations, i).iterrows()
        ]
    for i in added:
        rows += [
            change("added", None, a) | {"file": new_files[i]}
            for _, a in boxes(new_ann, after.annotations, i).iterrows()
        ]
    names = before.category_names | after.category_names
    annotations = pd.DataFrame(rows, columns=["file", *CHANGE_COLUMNS])
    for side in ("before", "after"):
        annotations[f"{side}_label"] = annotations[f"{side}_category"].map(names)
    images_frame = pd.DataFrame(images, columns=["file", "change"])
    return {
        "images": images_frame,
        "annotations": annotations,
        "counts": change_counts(images_frame, annotations),
        "histogram": class_histogram(before, after),
    }


def change_counts(images: pd.DataFrame, annotations: pd.DataFrame) -> dict[str, int]:
    """``images_added`` ... ``annotations_moved``: how many rows of each change."""
    counts = {
        f"images_{k}": int((images["change"] == k).sum()) for k in ("added", "removed", "changed")
    }
    return counts | {
        f"annotations_{k}": int((annotations["change"] == k).sum())
        for k in ("added", "removed", "relabelled", "moved")
    }


def class_histogram(before: Dataset, after: Dataset) -> pd.DataFrame:
    """Annotations per class name, ``before``, ``after`` and their ``shift``, by name."""
    histogram = (
        pd.DataFrame(
            {
                "before": before.annotations["category_id"]
                .map(before.category_names)
                .value_counts(),
                "after": after.annotations["category_id"].map(after.category_names).value_counts(),
            }
        )
        .fillna(0)
        .astype(int)
    )
    histogram["shift"] = histogram["after"] - histogram["before"]
    return histogram.sort_index()


def diff_line(counts: dict[str, int], previous: str) -> str:
    """``12 images added, 3 relabelled since ab12cd34ef56`` (``no change since ...``)."""
    short = {"annotations_relabelled": "relabelled", "annotations_moved": "moved"}
    parts = [f"{n} {short.get(k, k.replace('_', ' '))}" for k, n in counts.items() if n]
    return f"{', '.join(parts) or 'no change'} since {previous}"


# --- what to label next -------------------------------------------------------------------------


def unlabelled_files(ds: Dataset) -> list[str]:
    """The file names of the images of ``ds`` without any annotation, in the tables' order."""
    annotated = set(ds.annotations["image_id"])
    images = ds.images.drop_duplicates("image_id")
    return images.loc[~images["image_id"].isin(annotated), "file_name"].tolist()


def uncertainty(predictions: pd.DataFrame, files: list[str]) -> pd.DataFrame:
    """How unsure a champion is of each of ``files`` (its ``predict`` frame, ``file`` column as
    given), most unsure first: classifiers (``p_<class>`` columns) by the ``margin`` between the
    two likeliest classes, smallest first; detectors by their ``least`` confident detection,
    images without any detection first (``detections`` 0). ``uncertainty``: 1 - margin or
    1 - least score (1 where there is none)."""
    columns = probability_columns(predictions)
    if columns:
        probs = np.sort(predictions[columns].to_numpy(np.float64), axis=1)[:, ::-1]
        second = probs[:, 1] if probs.shape[1] > 1 else np.zeros(len(probs))
        found = pd.DataFrame(
            {
                "file": predictions["file"].astype(str).to_numpy(),
                "predicted": predictions["predicted"].to_numpy(),
                "margin": probs[:, 0] - second,
            }
        )
        found = found.set_index("file").reindex(files).reset_index()
        found["uncertainty"] = 1 - found["margin"]
        return found.sort_values("margin", kind="stable", na_position="first").reset_index(
            drop=True
        )
    if "score" not in predictions.columns:
        raise ValueError("these predictions hold neither p_<class> columns nor detection scores")
    by_file = predictions.assign(file=predictions["file"].astype(str)).groupby("file")["score"]
    found = pd.DataFrame({"file": files})
    found["detections"] = found["file"].map(by_file.size()).fillna(0).astype(int)
    found["least"] = found["file"].map(by_file.min())
    found["uncertainty"] = 1 - found["least"].fillna(0.0)
    return found.sort_values(
        ["detections", "least"], key=lambda c: c if c.name == "least" else c > 0, kind="stable"
    ).reset_index(drop=True)


def image_hashes(paths) -> list:
    """A perceptual hash (imagehash's 64-bit ``phash``) of each image at ``paths``."""
    import imagehash
    from PIL import Image

    hashes = []
    for path in paths:
        with Image.open(path) as image:
            hashes.append(imagehash.phash(image.convert("L")))
    return hashes


def diverse_order(ranked: pd.DataFrame, hashes: list, distance: int = 6) -> pd.DataFrame:
    """``ranked`` (most worth labelling first, one row per image, ``hashes`` in its order)
    with each image whose hash is within ``distance`` bits of an image kept before it pushed
    behind every kept one, ``duplicate_of`` naming that image's file (empty for kept ones)."""
    kept: list[int] = []
    duplicate_of = [""] * len(ranked)
    files = ranked["file"].tolist()
    for n, value in enumerate(hashes):
        near = next((k for k in kept if value - hashes[k] <= distance), None)
        if near is None:
            kept.append(n)
        else:
            duplicate_of[n] = files[near]
    found = ranked.assign(duplicate_of=duplicate_of)
    order = kept + [n for n in range(len(found)) if duplicate_of[n]]
    return found.iloc[order].reset_index(drop=True)


def label_next_gallery(paths, captions: list[str]) -> bytes:
    """The images at ``paths`` in a grid, each captioned."""
    from ml_assets.evaluate.plots import boxes_png

    samples = [
        {"image": read_rgb(p), "title": c, "truth": [], "predicted": []}
        for p, c in zip(paths, captions, strict=True)
    ]
    return boxes_png(samples, "to label next, most unsure first", 4, legend="")
