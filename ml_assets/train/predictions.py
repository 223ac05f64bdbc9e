"""Batch inference with a trained model over a list of images: COCO results for detectors,
class probabilities for classifiers, written into one folder atomically.

A detector's folder holds ``results.json`` (COCO results: image_id, category_id, bbox, score,
and a segmenter's ``segmentation`` as COCO RLE) and ``images.json`` (a COCO file with the images and categories those ids refer to), so
``COCO("images.json").loadRes("results.json")`` loads them; a classifier's holds
``predictions.parquet``. Both hold ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
import pandas as pd

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.tables import IMAGE_SUFFIXES, image_size
from ml_assets.train.kinds import ModelKind
from ml_assets.train.runs import read_lineage


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def write_predictions(
    kind: ModelKind,
    model_dir: Path,
    images: Sequence[Path],
    device,
    out_dir: Path,
    image_ids: Sequence[int] | None = None,
) -> dict:
    """Run ``kind``'s model at ``model_dir`` on ``images`` (ids: ``image_ids``, else their
    position) and write the results to ``out_dir``; returns the summary."""
    if not images:
        raise ValueError("no images to predict on")
    if not kind.predicts:
        raise ValueError(f"{kind.name} has no batch prediction: choose another kind")
    ids = list(image_ids) if image_ids is not None else list(range(len(images)))
    classes = read_lineage(model_dir)["classes"]
    frame = kind.predict(model_dir, list(images), device)
    summary: dict = {"kind": kind.name, "model": str(model_dir), "images": len(images)}
    if kind.predicts == "masks" and "segmentation" not in frame:
        raise ValueError(f"{kind.name} predicts masks, but its predictions hold none")
    with atomic_dir(out_dir, overwrite=True) as tmp:
        if kind.predicts in ("boxes", "masks"):
            id_of = {str(p): i for p, i in zip(images, ids, strict=True)}
            names = {c["id"]: c["name"] for c in classes}
            masks = frame["segmentation"] if "segmentation" in frame else [None] * len(frame)
            results = [
                {
                    "image_id": id_of[row.file],
                    "category_id": int(row.category_id),
                    "bbox": [float(row.x), float(row.y), float(row.w), float(row.h)],
                    "score": float(row.score),
                    **({"segmentation": dict(mask)} if mask is not None else {}),
                }
                for row, mask in zip(frame.itertuples(), masks, strict=True)
            ]
            (tmp / "results.json").write_bytes(orjson.dumps(results))
            (tmp / "images.json").write_bytes(orjson.dumps(coco_images(images, ids, classes)))
            counts = frame["category_id"].map(names).value_counts()
            summary |= {
                "detections": len(results),
                "images_with_detections": int(frame["file"].nunique()) if len(frame) else 0,
                "mean_score": float(frame["score"].mean()) if len(frame) else 0.0,
                "per_class": {str(k): int(v) for k, v in counts.items()},
            }
        else:
            frame.insert(0, "image_id", ids)
            frame.to_parquet(tmp / "predictions.parquet", index=False)
            counts = frame["predicted"].value_counts()
            summary |= {
                "mean_confidence": float(frame["confidence"].mean()),
                "per_class": {str(k): int(v) for k, v in counts.items()},
            }
        (tmp / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def coco_images(images: Sequence[Path], ids: Sequence[int], classes: list[dict]) -> dict:
    """A COCO file with the images (id, file name, size) and the model's categories."""
    entries = []
    for path, image_id in zip(images, ids, strict=True):
        width, height = image_size(path)
        entries.append(
            {"id": int(image_id), "file_name": str(path), "width": width, "height": height}
        )
    categories = [{"id": c["id"], "name": c["name"]} for c in classes]
    return {"images": entries, "annotations": [], "categories": categories}


def predictions_table(summary: dict) -> pd.DataFrame:
    return pd.Series(summary.get("per_class", {}), name="count").rename_axis("class").to_frame()
