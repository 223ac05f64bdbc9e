"""A deterministic synthetic detection dataset in COCO layout, for the demo and the tests.

Shapes of four classes (imbalanced: circles are common, crosses rare) in random colours, sizes and
positions, on textured backgrounds (noise, gradients, stripes), several per image with some
overlap, and some images with none. Image ``i`` depends only on ``(seed, i)``, so a larger set
starts with the images of a smaller one.

Layout: ``DIR/annotations.json`` (COCO instances, ``file_name`` relative to ``DIR/images``) and
``DIR/images/<name>.png``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import orjson
from PIL import Image, ImageDraw

from ml_assets.data.atomic import atomic_dir

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
]
CLASS_WEIGHTS = np.array([0.42, 0.28, 0.2, 0.1])
EMPTY_FRACTION = 0.08
MAX_OBJECTS = 5
MAX_IOU = 0.3


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:
        shade = rng.normal(0, 25, size=(size, size, 1))
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        shade = ((xx * math.cos(angle) + yy * math.sin(angle)) * rng.uniform(-90, 90))[..., None]
    else:
        period = rng.uniform(4, 16)
        shade = (np.sin((xx + yy * rng.uniform(-1, 1)) * size / period) * 30)[..., None]
    return np.clip(base + shade, 0, 255).astype(np.uint8)


def _polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline of a shape of class index ``cls`` centred on (cx, cy) with radius ``r``."""
    if cls == 0:
        corners = [(r, 2 * math.pi * k / 24) for k in range(24)]
    elif cls == 1:
        corners = [(r, angle + math.pi / 4 + math.pi / 2 * k) for k in range(4)]
    elif cls == 2:
        corners = [(r, angle + 2 * math.pi * k / 3) for k in range(3)]
    else:
        arm = 0.33
        pts = [
            (arm, 1),
            (arm, arm),
            (1, arm),
            (1, -arm),
            (arm, -arm),
            (arm, -1),
            (-arm, -1),
            (-arm, -arm),
            (-1, -arm),
            (-1, arm),
            (-arm, arm),
            (-arm, 1),
        ]
        corners = [(r * math.hypot(px, py), angle + math.atan2(py, px)) for px, py in pts]
    return [(cx + d * math.cos(a), cy + d * math.sin(a)) for d, a in corners]


def _shoelace(poly: list[tuple[float, float]]) -> float:
    """Area of a simple polygon."""
    pairs = zip(poly, poly[1:] + poly[:1], strict=True)
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairs)) / 2


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def render_image(seed: int, index: int, size: int) -> tuple[Image.Image, list[dict]]:
    """Draw image ``index``; return it and its objects (category id, box, polygon)."""
    rng = np.random.default_rng([seed, index])
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[dict] = []
    for _ in range(count * 4):
        if len(objects) == count:
            break
        cls = int(rng.choice(len(CATEGORIES), p=CLASS_WEIGHTS))
        r = float(rng.uniform(0.07, 0.2)) * size
        cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
        poly = _polygon(cls, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        # Points rounded and kept inside the image; the box is exactly their extent.
        poly = [
            (round(min(max(x, 0.0), size), 2), round(min(max(y, 0.0), size), 2)) for x, y in poly
        ]
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        box = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
        if any(_iou(box, o["bbox"]) > MAX_IOU for o in objects):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(poly, fill=colour, outline=tuple(255 - c for c in colour))
        objects.append(
            {
                "category_id": CATEGORIES[cls]["id"],
                "bbox": box,
                "segmentation": [v for p in poly for v in p],
                "area": round(_shoelace(poly), 2),
            }
        )
    return image, objects


def coco_document(seed: int, images: int, size: int) -> tuple[dict, list[tuple[str, bytes]]]:
    """The COCO document and the encoded PNG files of a sample set."""
    doc: dict = {
        "info": {"description": f"ml_assets synthetic shapes, seed {seed}", "version": "1"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": CATEGORIES,
    }
    files = []
    for index in range(images):
        image, objects = render_image(seed, index, size)
        name = f"shapes_{index:06d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append((name, buffer.getvalue()))
        image_id = index + 1
        doc["images"].append({"id": image_id, "file_name": name, "width": size, "height": size})
        for obj in objects:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                    "segmentation": [obj["segmentation"]],
                }
            )
    return doc, files


def write_sample(dst: Path, images: int = 240, seed: int = 0, size: int = 96) -> Path:
    """Write a sample dataset to ``dst`` (which must not exist) atomically; return ``dst``."""
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    doc, files = coco_document(seed, images, size)
    with atomic_dir(Path(dst)) as tmp:
        (tmp / "images").mkdir()
        for name, data in files:
            (tmp / "images" / name).write_bytes(data)
        (tmp / "annotations.json").write_bytes(orjson.dumps(doc))
    return Path(dst)
