"""What a dataset is (``describe``), its statistics as plain numbers (``summarize``), and a small
multi-panel figure of them."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from ml_assets.data.tables import Dataset, splits, task_of

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def describe(ds: Dataset) -> dict[str, Any]:
    """What the reader found: the task of the labels, the images per split, and where the reader
    says so, the dataset YAML it read, the keypoint shape and the placeholder classes dropped."""
    found: dict[str, Any] = {"task": task_of(ds)}
    counts = splits(ds.images).value_counts()
    found["splits"] = {str(k): int(counts[k]) for k in sorted(counts.index) if k}
    for key in ("yaml", "kpt_shape", "placeholder_categories"):
        if ds.attrs.get(key):
            found[key] = ds.attrs[key]
    return found


def summarize(ds: Dataset) -> dict[str, Any]:
    """Counts, class histogram (by name), boxes per image, box and image sizes; plain numbers."""
    images, ann = ds.images, ds.annotations
    names = ds.category_names
    per_image = ann.groupby("image_id").size().reindex(images["image_id"], fill_value=0)
    classes = ann["category_id"].map(names).fillna("<unknown>").value_counts()
    sizes = ann["image_id"].map(
        images.drop_duplicates("image_id").set_index("image_id").eval("width * height")
    )
    area = (ann["w"] * ann["h"]).astype(float)
    return {
        "images": int(len(images)),
        "annotations": int(len(ann)),
        "categories": int(len(ds.categories)),
        "class_histogram": dict.fromkeys(names.values(), 0)
        | {str(k): int(v) for k, v in classes.items()},
        "boxes_per_image": {
            "mean": _number(per_image.mean()),
            "median": _number(per_image.median()),
            "max": int(per_image.max()) if len(per_image) else 0,
            "images_without_boxes": int((per_image == 0).sum()),
        },
        "box_area": _quantiles(area),
        "box_relative_area": _quantiles(area / sizes.astype(float)),
        "box_relative_side": _quantiles(np.sqrt(area / sizes.astype(float))),
        "image_width": _quantiles(images["width"].astype(float)),
        "image_height": _quantiles(images["height"].astype(float)),
    }


def _number(value: float) -> float:
    return 0.0 if pd.isna(value) else float(value)


def _quantiles(values: pd.Series) -> dict[str, float]:
    values = values.dropna()
    return {
        f"q{int(q * 100)}": _number(values.quantile(q)) if len(values) else 0.0 for q in QUANTILES
    }


def summary_plot_png(ds: Dataset) -> bytes:
    """A 2x2 PNG: class histogram, boxes per image, relative box side, image sizes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = ds.category_names
    ann, images = ds.annotations, ds.images
    figure = Figure(figsize=(9, 6), dpi=80, layout="constrained")
    (classes, boxes), (sides, sizes) = figure.subplots(2, 2)
    counts = ann["category_id"].map(names).value_counts().sort_values()
    classes.barh(counts.index.astype(str), counts.to_numpy())
    classes.set_title("boxes per class")
    per_image = ann.groupby("image_id").size().reindex(images["image_id"], fill_value=0)
    boxes.hist(
        per_image.to_numpy(),
        bins=min(30, max(1, int(per_image.max()) + 1 if len(per_image) else 1)),
    )
    boxes.set_title("boxes per image")
    area = images.drop_duplicates("image_id").set_index("image_id").eval("width * height")
    side = np.sqrt((ann["w"] * ann["h"]) / ann["image_id"].map(area)).dropna()
    sides.hist(side.to_numpy(), bins=30, range=(0, 1))
    sides.set_title("box side / image side (sqrt of relative area)")
    sizes.scatter(images["width"], images["height"], s=4)
    sizes.set_title("image sizes (width x height)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
