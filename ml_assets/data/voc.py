"""Pascal VOC XML to and from the canonical tables.

Layout: ``ROOT/Annotations/<key without suffix>.xml``, ``ROOT/JPEGImages/<key>`` (``<filename>``
holds the key) and ``ROOT/ImageSets/Main/<split>.txt`` (one key without suffix a line; per-class
files ``<class>_<split>.txt`` are ignored). An image listed in several split files takes the first
of ``train``, ``val``, ``test``, then the others by name; an image listed in none has no split.
The writer lists images without a split in ``trainval.txt``.

Pixel convention: VOC coordinates are 1-based inclusive pixel indices (``xmin=1`` is the first
pixel column, ``xmax=W`` the last). Canonical boxes are continuous top-left coordinates, so
``x = xmin - 1``, ``w = xmax - xmin + 1`` (and the same for y); the writer does the reverse
(``xmin = x + 1``, ``xmax = x + w``) and writes integral values as integers, so VOC -> VOC is
exact. Integer and float coordinates are both read.

``difficult``, ``truncated``, ``occluded`` (0/1) and ``pose`` are kept as annotation columns
(0, 0, 0 and "Unspecified" where absent). A missing or zero ``<size>`` is read from the image
header. Categories are the object names in sorted order, numbered 0..K-1 (VOC has no ids).
Problems name the XML file and ``object N``, counting the file's ``<object>`` elements from 1.
VOC holds neither segmentations (its masks are separate PNGs) nor crowd regions: the writer
leaves ``iscrowd`` annotations out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from ml_assets.data.atomic import atomic_dir, write_text
from ml_assets.data.tables import (
    SOURCE_FILE,
    SOURCE_RECORD,
    Dataset,
    Issues,
    annotations_from_columns,
    categories_from_columns,
    image_key,
    image_size,
    images_from_columns,
    is_inside,
    link_images,
    records_frame,
    splits,
    write_files,
)

IMAGE_DIR = "JPEGImages"
SPLIT_ORDER = ("train", "val", "test")
FLAGS = ("difficult", "truncated", "occluded")
UNSPLIT = "trainval"


def read_voc(src: Path, issues: Issues | None = None) -> Dataset:
    """Read a Pascal VOC folder (see the module docstring)."""
    src = Path(src)
    issues = issues or Issues(root=src)
    split_of = _splits(src)
    images: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    for path in sorted((src / "Annotations").rglob("*.xml")):
        relative = path.relative_to(src).as_posix()
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as error:
            issues.error("xml-malformed", relative, "", f"malformed XML: {error}")
            continue
        key = path.relative_to(src / "Annotations").with_suffix("").as_posix()
        image = _image(src, relative, root, key, len(images), issues)
        if image is None:
            continue
        image["split"] = split_of.get(key, "")
        found = _objects(root, relative, image["image_id"], issues)
        if found is not None:
            images.append(image)
            objects.extend(found)
    names = sorted({o["name"] for o in objects})
    ids = {name: i for i, name in enumerate(names)}
    for number, obj in enumerate(objects):
        obj["annotation_id"] = number
        obj["category_id"] = ids[obj.pop("name")]
    columns = ["annotation_id", "image_id", "category_id", "x", "y", "w", "h"]
    return Dataset(
        images=images_from_columns(
            records_frame(images, ["image_id", "file_name", "width", "height", "split"])
        ),
        annotations=annotations_from_columns(records_frame(objects, [*columns, *FLAGS, "pose"])),
        categories=categories_from_columns({"category_id": list(ids.values()), "name": names}),
        root=src,
    )


def _splits(src: Path) -> dict[str, str]:
    files = sorted((src / "ImageSets" / "Main").glob("*.txt"))
    named = {p.stem: p for p in files if "_" not in p.stem}
    order = [s for s in SPLIT_ORDER if s in named] + sorted(set(named) - set(SPLIT_ORDER))
    split_of: dict[str, str] = {}
    for split in order:
        for line in named[split].read_text(encoding="utf-8").splitlines():
            if line.strip():
                split_of.setdefault(line.split()[0], split)
    return split_of


def _image(
    src: Path, relative: str, root: ET.Element, key: str, image_id: int, issues: Issues
) -> dict[str, Any] | None:
    name = (root.findtext("filename") or "").strip()
    if not name:
        matches = sorted((src / IMAGE_DIR).glob(f"{key}.*"))
        name = image_key(matches[0].relative_to(src).as_posix()) if matches else f"{key}.jpg"
    file_name = f"{IMAGE_DIR}/{name}" if is_inside(name) else name
    try:
        width = int(float(root.findtext("size/width") or 0))
        height = int(float(root.findtext("size/height") or 0))
    except ValueError:
        issues.error("xml-field", relative, "size", "width and height must be numbers")
        return None
    if width <= 0 or height <= 0:
        if not is_inside(name):
            issues.error(
                "path-escape", relative, "filename", f"{name} is outside the dataset folder"
            )
            return None
        try:
            width, height = image_size(src / file_name)
        except OSError as error:
            issues.error(
                "image-unreadable", relative, "size", f"no <size> and {file_name}: {error}"
            )
            return None
    return {
        "image_id": image_id,
        "file_name": file_name,
        "width": width,
        "height": height,
        SOURCE_FILE: relative,
    }


def _objects(
    root: ET.Element, relative: str, image_id: int, issues: Issues
) -> list[dict[str, Any]] | None:
    objects = []
    for number, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        try:
            xmin, ymin, xmax, ymax = (
                float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")
            )
            flags = {k: int(float(obj.findtext(k) or 0)) for k in FLAGS}
        except ValueError:
            issues.error(
                "xml-field",
                relative,
                f"object {number}",
                "bndbox needs numeric xmin, ymin, xmax, ymax",
            )
            return None
        if not name:
            issues.error("xml-field", relative, f"object {number}", "object without a <name>")
            return None
        box = {"x": xmin - 1, "y": ymin - 1, "w": xmax - xmin + 1, "h": ymax - ymin + 1}
        pose = (obj.findtext("pose") or "Unspecified").strip()
        objects.append(
            {
                "image_id": image_id,
                "name": name,
                **box,
                **flags,
                "pose": pose,
                SOURCE_FILE: relative,
                SOURCE_RECORD: f"object {number}",
            }
        )
    return objects


def write_voc(ds: Dataset, dst: Path, overwrite: bool = False) -> Path:
    """Write ``ds`` as a Pascal VOC folder at ``dst`` atomically (images hard-linked)."""
    dst = Path(dst)
    names = ds.category_names
    split_names = splits(ds.images)
    keys = [image_key(f, s) for f, s in zip(ds.images["file_name"], split_names, strict=True)]
    annotations = ds.annotations[ds.annotations["iscrowd"] == 0]
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for obj in annotations.to_dict("records"):
        by_image[obj["image_id"]].append(obj)
    with atomic_dir(dst, overwrite) as tmp:
        link_images(
            ds,
            ((f, tmp / IMAGE_DIR / k) for f, k in zip(ds.images["file_name"], keys, strict=True)),
        )
        rows = zip(
            ds.images["image_id"].tolist(),
            ds.images["width"].tolist(),
            ds.images["height"].tolist(),
            keys,
            strict=True,
        )
        write_files(
            (
                tmp / "Annotations" / Path(key).with_suffix(".xml"),
                _xml(key, width, height, by_image.get(image_id, []), names),
            )
            for image_id, width, height, key in rows
        )
        stems = pd.Series([Path(k).with_suffix("").as_posix() for k in keys])
        for split, members in stems.groupby(split_names.replace("", UNSPLIT).to_numpy()):
            write_text(
                tmp / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{m}\n" for m in members)
            )
    return dst


def _xml(
    key: str, width: int, height: int, objects: list[dict[str, Any]], names: dict[int, str]
) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = IMAGE_DIR
    ET.SubElement(root, "filename").text = key
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = names[obj["category_id"]]
        ET.SubElement(element, "pose").text = _text(obj.get("pose"), "Unspecified")
        for flag in FLAGS:
            ET.SubElement(element, flag).text = _text(obj.get(flag), 0)
        box = ET.SubElement(element, "bndbox")
        corners = (obj["x"] + 1, obj["y"] + 1, obj["x"] + obj["w"], obj["y"] + obj["h"])
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), corners, strict=True):
            ET.SubElement(box, tag).text = _number(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _text(value: Any, default: Any) -> str:
    missing = value is None or (isinstance(value, float) and value != value)
    value = default if missing else value
    return _number(value) if isinstance(value, float) else str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
