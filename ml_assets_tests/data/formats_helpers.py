"""Builders for small on-disk datasets, shared by the format tests (imported by module name)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import strategies as st
from PIL import Image

from ml_assets.data.tables import (
    Dataset,
    annotations_from_columns,
    categories_from_columns,
    image_key,
    images_from_columns,
)

BOX_FORMATS = ("coco", "voc", "yolo")


def write_image(path: Path, width: int, height: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (seed % 256, (seed * 7) % 256, (seed * 13) % 256)).save(path)


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` by relative path (links and copies alike)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def coco_folder(root: Path, document: dict[str, Any], sizes: dict[str, tuple[int, int]]) -> Path:
    """``root/annotations.json`` plus PNGs ``root/images/<name>`` of the given sizes."""
    for seed, (name, (width, height)) in enumerate(sizes.items()):
        write_image(root / "images" / name, width, height, seed)
    (root / "annotations.json").write_text(json.dumps(document))
    return root


def small_coco(root: Path) -> Path:
    """Two images (one in a subfolder, one without boxes), ids 1 and 90, a crowd RLE, a polygon."""
    document = {
        "info": {"description": "test"},
        "licenses": [{"id": 1, "name": "x"}],
        "images": [
            {"id": 7, "file_name": "a.png", "width": 32, "height": 24, "license": 1},
            {"id": 9, "file_name": "sub/b.png", "width": 16, "height": 16},
            {"id": 11, "file_name": "c.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 90,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 0,
                "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "bbox": [10.5, 3.25, 6, 8],
                "area": 48,
                "iscrowd": 0,
                "segmentation": [],
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": {"size": [24, 32], "counts": [10, 5, 19, 5, 729]},
            },
            {
                "id": 4,
                "image_id": 11,
                "category_id": 1,
                "bbox": [0, 0, 20, 20],
                "area": 400,
                "iscrowd": 0,
            },
        ],
        "categories": [
            {"id": 1, "name": "car", "supercategory": "v"},
            {"id": 90, "name": "toothbrush"},
        ],
    }
    return coco_folder(
        root, document, {"a.png": (32, 24), "sub/b.png": (16, 16), "c.png": (20, 20)}
    )


def boxes_by_image(ds: Dataset, crowd: bool = False) -> dict[str, list[tuple]]:
    """{image name below its split folder: sorted [(class name, x, y, w, h)]}."""
    names = ds.category_names
    images = ds.images.assign(split=ds.images.get("split", ""))
    keys = {
        row.image_id: image_key(row.file_name, row.split or "").split("/")[-1]
        for row in images.itertuples()
    }
    ann = ds.annotations if crowd else ds.annotations[ds.annotations["iscrowd"] == 0]
    found: dict[str, list[tuple]] = {key: [] for key in keys.values()}
    for row in ann.itertuples():
        found[keys[row.image_id]].append((names[row.category_id], row.x, row.y, row.w, row.h))
    return {key: sorted(boxes) for key, boxes in found.items()}


def assert_same_boxes(a: Dataset, b: Dataset) -> None:
    """Same images, and each box of ``a`` has a box of the same class in ``b`` within 1e-6 of the
    image size (matched greedily, nearest first)."""
    size = {
        image_key(f).split("/")[-1]: max(w, h)
        for f, w, h in zip(
            a.images["file_name"], a.images["width"], a.images["height"], strict=True
        )
    }
    left, right = boxes_by_image(a), boxes_by_image(b)
    assert left.keys() == right.keys()
    for key, boxes in left.items():
        others = list(right[key])
        assert sorted(box[0] for box in boxes) == sorted(box[0] for box in others), key
        for box in boxes:
            twin = min(
                (o for o in others if o[0] == box[0]),
                key=lambda o: max(abs(p - q) for p, q in zip(box[1:], o[1:], strict=True)),
            )
            others.remove(twin)
            error = max(abs(p - q) for p, q in zip(box[1:], twin[1:], strict=True))
            assert error <= 1e-6 * size[key], (key, box, twin)


@st.composite
def datasets(draw: st.DrawFn, root: Path) -> Dataset:
    """A random small dataset with real PNGs under ``root/images`` (8..32 px)."""
    n_images = draw(st.integers(1, 4))
    category_ids = draw(st.lists(st.integers(1, 90), min_size=1, max_size=3, unique=True))
    split_mode = draw(st.sampled_from(["none", "one", "two"]))
    images: list[dict[str, Any]] = []
    columns: dict[str, list[Any]] = {
        k: []
        for k in ["annotation_id", "image_id", "category_id", "x", "y", "w", "h", "segmentation"]
    }
    for i in range(n_images):
        width, height = draw(st.integers(8, 32)), draw(st.integers(8, 32))
        split = {"none": "", "one": "train", "two": draw(st.sampled_from(["train", "val"]))}[
            split_mode
        ]
        name = f"img{i}.png"
        write_image(root / "images" / (f"{split}/{name}" if split else name), width, height, i)
        images.append(
            {
                "image_id": i + 10,
                "file_name": f"images/{split}/{name}" if split else f"images/{name}",
                "width": width,
                "height": height,
                "split": split,
            }
        )
        for _ in range(draw(st.integers(0, 3))):
            x = draw(st.floats(0, width - 1, allow_nan=False))
            y = draw(st.floats(0, height - 1, allow_nan=False))
            w = draw(st.floats(0.5, width - x, allow_nan=False).filter(lambda v: v >= 0.5))
            h = draw(st.floats(0.5, height - y, allow_nan=False).filter(lambda v: v >= 0.5))
            polygon = draw(st.booleans())
            columns["annotation_id"].append(len(columns["annotation_id"]) + 100)
            columns["image_id"].append(i + 10)
            columns["category_id"].append(draw(st.sampled_from(category_ids)))
            for k, v in zip("xywh", (x, y, w, h), strict=True):
                columns[k].append(v)
            columns["segmentation"].append(
                [[x, y, x + w, y, x + w, y + h, x, y + h]] if polygon else None
            )
    return Dataset(
        images=images_from_columns(pd.DataFrame(images)),
        annotations=annotations_from_columns(columns),
        categories=categories_from_columns(
            {"category_id": category_ids, "name": [f"c{c}" for c in category_ids]}
        ),
        root=root,
    )
