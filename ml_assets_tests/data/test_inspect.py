from __future__ import annotations

import io

from formats_helpers import small_coco
from PIL import Image

from ml_assets.data.formats import read_dataset
from ml_assets.data.inspect import summarize, summary_plot_png


def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return type(value) in (int, float)


def test_summary_numbers(tmp_path):
    summary = summarize(read_dataset(small_coco(tmp_path / "src")))
    assert plain(summary)
    assert (summary["images"], summary["annotations"], summary["categories"]) == (3, 4, 2)
    assert summary["class_histogram"] == {"car": 3, "toothbrush": 1}
    assert summary["boxes_per_image"] == {
        "mean": 4 / 3,
        "median": 1.0,
        "max": 3,
        "images_without_boxes": 1,
    }
    assert summary["box_area"]["q100"] == 400.0
    assert summary["box_relative_area"]["q100"] == 1.0
    assert summary["image_width"] == {
        "q0": 16.0,
        "q25": 18.0,
        "q50": 20.0,
        "q75": 26.0,
        "q100": 32.0,
    }


def test_summary_of_an_empty_dataset(tmp_path):
    ds = read_dataset(small_coco(tmp_path / "src"))
    ds.annotations = ds.annotations.iloc[:0]
    summary = summarize(ds)
    assert summary["boxes_per_image"]["images_without_boxes"] == 3
    assert summary["box_area"]["q50"] == 0.0
    assert summary["class_histogram"] == {"car": 0, "toothbrush": 0}


def test_plot_is_a_png(tmp_path):
    png = summary_plot_png(read_dataset(small_coco(tmp_path / "src")))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (720, 480)
