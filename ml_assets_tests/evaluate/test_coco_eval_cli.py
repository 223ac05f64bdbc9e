"""`ml-assets coco-eval`: the 12 numbers and per-class AP as text or JSON; bad input exits 1."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from coco_cases import pycocotools_eval, random_case

from ml_assets.cli import main
from ml_assets.evaluate.coco import STAT_NAMES


@pytest.fixture
def files(tmp_path):
    gt, results = random_case(np.random.default_rng(7))
    (tmp_path / "gt.json").write_bytes(orjson.dumps(gt))
    (tmp_path / "dt.json").write_bytes(orjson.dumps(results))
    return tmp_path / "gt.json", tmp_path / "dt.json", pycocotools_eval(gt, results)


def test_json_holds_pycocotools_stats_and_per_class_ap(files):
    gt, dt, ref = files
    result = CliRunner().invoke(main, ["coco-eval", str(gt), str(dt), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert np.abs(np.array(report["stats"]) - ref.stats).max() <= 1e-6
    names = [c["name"] for c in ref.cocoGt.loadCats(ref.params.catIds)]
    assert list(report["per_class"]) == names
    precision = ref.eval["precision"]
    for k, name in enumerate(names):
        curve = precision[:, :, k, 0, -1]
        expected = curve[curve > -1].mean() if (curve > -1).any() else None
        assert report["per_class"][name] == pytest.approx(expected, abs=1e-6)


def test_text_lists_the_12_numbers_and_each_class(files):
    gt, dt, ref = files
    result = CliRunner().invoke(main, ["coco-eval", str(gt), str(dt)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, value, line in zip(STAT_NAMES, ref.stats, lines, strict=False):
        assert line.split()[:2] == [name, f"{value:.4f}"]
    for category in ref.cocoGt.loadCats(ref.params.catIds):
        assert any(line.split()[0] == category["name"] for line in lines[13:])


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, float("nan"), 2]}, "[detection 1]"),
        ({"results": []}, "expected a list"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(tmp_path, files, bad, shown):
    gt, dt, _ = files
    results = json.loads(dt.read_text())[:1] + [{**bad, "score": 0.5}] if "bbox" in bad else bad
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(results))
    result = CliRunner().invoke(main, ["coco-eval", str(gt), str(broken)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.lower().startswith("error:") and len(result.output.splitlines()) == 1
    assert str(broken) in result.output and shown in result.output
