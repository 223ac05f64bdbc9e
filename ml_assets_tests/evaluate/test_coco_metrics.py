"""coco_metrics equals pycocotools' COCOeval; malformed input is refused naming file and record."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import orjson
import pytest
from coco_cases import (
    assert_matches_pycocotools,
    coco_ground_truth,
    detection,
    pycocotools_eval,
    random_case,
)

from ml_assets.data.tables import DatasetError
from ml_assets.evaluate.coco import (
    STAT_NAMES,
    coco_metrics,
    detections_from_arrays,
    write_results,
)


@pytest.mark.parametrize("seed", range(8))
def test_equals_pycocotools_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        assert_matches_pycocotools(*random_case(rng))


def test_stats_are_named_in_pycocotools_order():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50])])
    ours = assert_matches_pycocotools(gt, [detection(1, 1, [12, 10, 50, 50], 0.9)])
    assert list(ours.stats) == list(STAT_NAMES) and len(STAT_NAMES) == 12
    assert ours.to_json()["stats"] == ours.stats_list


def test_crowd_regions_neither_reward_nor_punish():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50]), (1, 1, [200, 200, 150, 150])], crowd={1})
    hit = detection(1, 1, [10, 10, 50, 50], 0.5)
    inside_crowd = [detection(1, 1, [210 + 20 * k, 210, 40, 40], 0.9) for k in range(5)]
    ours = assert_matches_pycocotools(gt, [hit, *inside_crowd])
    assert ours.stats["AP"] == pytest.approx(1.0)  # crowd matches are ignored, not false positives
    assert ours.classes[0].ground_truth == 1  # the crowd is not a box to find


def test_empty_images_count_false_positives():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50])], images=3)
    hit = detection(1, 1, [10, 10, 50, 50], 0.5)
    clean = assert_matches_pycocotools(gt, [hit])
    on_empty = assert_matches_pycocotools(gt, [hit, detection(3, 1, [10, 10, 50, 50], 0.9)])
    assert clean.stats["AP"] == pytest.approx(1.0)
    assert on_empty.stats["AP"] < clean.stats["AP"]


def test_category_without_ground_truth_is_left_out():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50])], categories=2)
    results = [detection(1, 1, [10, 10, 50, 50], 0.5), detection(1, 2, [0, 0, 20, 20], 0.99)]
    ours = assert_matches_pycocotools(gt, results)
    assert ours.stats["AP"] == pytest.approx(1.0)
    assert math.isnan(ours.per_class["c2"]) and ours.classes[1].detections == 1
    assert ours.to_json()["per_class"] == {"c1": pytest.approx(1.0), "c2": None}
    assert (ours.classes[1].precision == -1).all()


def test_more_than_100_detections_on_an_image():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50])])
    misses = [detection(1, 1, [300, 300, 20, 20], 0.9 - k * 1e-3) for k in range(150)]
    late_hit = detection(1, 1, [10, 10, 50, 50], 0.1)  # ranked 151st: beyond maxDets=100
    ours = assert_matches_pycocotools(gt, [*misses, late_hit])
    assert ours.stats["AR100"] == 0.0 and ours.stats["AP"] == 0.0
    early = assert_matches_pycocotools(gt, [*misses[:99], late_hit])
    assert early.stats["AR100"] == pytest.approx(1.0)


def test_tied_scores_keep_the_order_of_the_results():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50]), (2, 1, [10, 10, 50, 50])], images=2)
    hit, miss = detection(1, 1, [10, 10, 50, 50], 0.5), detection(2, 1, [300, 300, 9, 9], 0.5)
    first = assert_matches_pycocotools(gt, [hit, miss])
    rng = np.random.default_rng(0)
    results = [
        detection(int(rng.integers(1, 3)), 1, [float(v) for v in rng.uniform(0, 80, 4)], 0.5)
        for _ in range(40)
    ]
    assert_matches_pycocotools(gt, results)
    assert_matches_pycocotools(gt, results[::-1])
    assert first.stats["AP50"] > 0


def test_no_detections_score_zero():
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50])], categories=2)
    ours = assert_matches_pycocotools(gt, [])
    assert ours.stats["AP"] == 0.0 and ours.stats["AP_small"] == -1.0
    assert ours.per_class["c1"] == 0.0 and math.isnan(ours.per_class["c2"])


def test_annotation_id_zero_counts_like_any_other():
    """pycocotools marks "unmatched" with id 0, so a match to ground-truth id 0 counts as a false
    positive there; ours numbers annotations itself and gives the numbers of ids from 1."""
    rng = np.random.default_rng(3)
    gt, results = random_case(rng)
    while not gt["annotations"] or all(a["iscrowd"] for a in gt["annotations"]):
        gt, results = random_case(rng)
    from_zero = copy.deepcopy(gt)
    for n, annotation in enumerate(from_zero["annotations"]):
        annotation["id"] = n
    assert coco_metrics(from_zero, results).stats == assert_matches_pycocotools(gt, results).stats


def test_input_is_left_unchanged_and_files_give_the_same_numbers(tmp_path):
    gt, results = random_case(np.random.default_rng(11))
    before = copy.deepcopy((gt, results))
    in_memory = coco_metrics(gt, results)
    assert (gt, results) == before
    (tmp_path / "gt.json").write_bytes(orjson.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    from_files = coco_metrics(tmp_path / "gt.json", str(tmp_path / "dt.json"))
    assert from_files.stats == in_memory.stats


def test_numpy_numbers_take_the_careful_path_to_the_same_numbers():
    """Records with numpy scalars fail the vectorized screen and are checked one by one."""
    gt, results = random_case(np.random.default_rng(5))
    as_numpy = [
        {**r, "image_id": np.int64(r["image_id"]), "score": np.float32(r["score"])} for r in results
    ]
    plain = [{**r, "score": float(np.float32(r["score"]))} for r in results]
    assert coco_metrics(gt, as_numpy).stats == coco_metrics(gt, plain).stats


def _results(n=12):
    gt = coco_ground_truth([(1, 1, [10, 10, 50, 50]), (2, 2, [5, 5, 30, 30])], 2, 2)
    return gt, [
        detection(1 + k % 2, 1 + k % 2, [10.0, 10.0, 40.0 + k, 40.0], 0.5) for k in range(n)
    ]


def _set(record: str, key: str, value):
    def change(gt, results):
        target = (
            results[int(record.split()[1])]
            if record.startswith("detection")
            else (gt["annotations"][int(record.split("[")[1][:-1])])
        )
        if value is KeyError:
            del target[key]
        else:
            target[key] = value

    return change


MALFORMED = {
    "missing score": (_set("detection 7", "score", KeyError), "detection 7", "missing-key"),
    "unknown image": (_set("detection 3", "image_id", 99), "detection 3", "unknown-image"),
    "unknown category": (_set("detection 9", "category_id", 7), "detection 9", "unknown-category"),
    "string image id": (_set("detection 2", "image_id", "1"), "detection 2", "unknown-image"),
    "NaN box": (
        _set("detection 5", "bbox", [1.0, float("nan"), 3.0, 4.0]),
        "detection 5",
        "invalid-box",
    ),
    "infinite box": (
        _set("detection 4", "bbox", [1.0, 2.0, math.inf, 4.0]),
        "detection 4",
        "invalid-box",
    ),
    "negative width": (
        _set("detection 11", "bbox", [1.0, 2.0, -3.0, 4.0]),
        "detection 11",
        "invalid-box",
    ),
    "three numbers": (_set("detection 6", "bbox", [1.0, 2.0, 3.0]), "detection 6", "invalid-box"),
    "text in box": (
        _set("detection 6", "bbox", [1.0, 2.0, "3", 4.0]),
        "detection 6",
        "invalid-box",
    ),
    "NaN score": (_set("detection 8", "score", float("nan")), "detection 8", "invalid-score"),
    "no area": (_set("annotations[1]", "area", KeyError), "annotations[1]", "missing-key"),
    "gt unknown image": (_set("annotations[0]", "image_id", 5), "annotations[0]", "unknown-image"),
    "gt negative height": (
        _set("annotations[1]", "bbox", [1.0, 2.0, 3.0, -4.0]),
        "annotations[1]",
        "invalid-box",
    ),
    "gt crowd flag": (_set("annotations[0]", "iscrowd", 2), "annotations[0]", "invalid-record"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_records_are_refused_naming_file_and_record(tmp_path, case):
    change, record, code = MALFORMED[case]
    gt, results = _results()
    change(gt, results)
    (tmp_path / "gt.json").write_text(json.dumps(gt))  # json writes NaN and Infinity as such
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with pytest.raises(DatasetError) as raised:
        coco_metrics(tmp_path / "gt.json", tmp_path / "dt.json")
    assert raised.value.record == record and raised.value.code == code
    named = "gt.json" if record.startswith("annotations") else "dt.json"
    assert str(raised.value).startswith(f"{tmp_path / named} [{record}]: ")
    with pytest.raises(
        DatasetError, match=rf"^<(ground truth|detections)> \[{re.escape(record)}\]"
    ):
        coco_metrics(gt, results)


@pytest.mark.parametrize(
    ("gt", "results", "file", "message"),
    [
        ({"images": []}, [], "gt.json", "'annotations' must be a list"),
        ([], [], "gt.json", "expected an object, got list"),
        (None, {"annotations": []}, "dt.json", "not a COCO results file: expected a list"),
        (None, "not json", "dt.json", "not valid JSON"),
        (
            {"images": [{"id": 1}, {"id": 1}], "annotations": [], "categories": []},
            [],
            "gt.json",
            "images[1]",
        ),
        (
            {
                "images": [],
                "annotations": [],
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}],
            },
            [],
            "gt.json",
            "duplicate category name 'a'",
        ),
    ],
)
def test_malformed_files_are_refused_naming_the_file(tmp_path, gt, results, file, message):
    gt = _results()[0] if gt is None else gt
    (tmp_path / "gt.json").write_bytes(orjson.dumps(gt))
    dt = tmp_path / "dt.json"
    dt.write_text(results) if isinstance(results, str) else dt.write_bytes(orjson.dumps(results))
    with pytest.raises(DatasetError, match=re.escape(message)) as raised:
        coco_metrics(tmp_path / "gt.json", dt)
    assert str(raised.value).startswith(str(tmp_path / file))


def test_write_results_round_trips_and_refuses_bad_records(tmp_path):
    gt, results = random_case(np.random.default_rng(2))
    path = write_results(tmp_path / "out" / "detections.json", results)
    assert coco_metrics(gt, path).stats == coco_metrics(gt, results).stats
    assert pycocotools_eval(gt, json.loads(path.read_text())).stats.tolist() == pytest.approx(
        coco_metrics(gt, path).stats_list, abs=1e-6
    )
    bad = [*results[:3], {**results[3], "score": float("inf")}]
    with pytest.raises(DatasetError, match=r"\[detection 3\]: score"):
        write_results(tmp_path / "bad.json", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written


def test_detections_from_arrays():
    records = detections_from_arrays(
        np.array([1, 2]), [1, 1], np.array([[0, 0, 5, 5], [1, 1, 2, 2]], np.float32), [0.5, 0.25]
    )
    assert records[1] == {
        "image_id": 2,
        "category_id": 1,
        "bbox": [1.0, 1.0, 2.0, 2.0],
        "score": 0.25,
    }
    assert all(type(r["image_id"]) is int for r in records)
    with pytest.raises(ValueError, match="different lengths"):
        detections_from_arrays([1], [1, 2], np.zeros((1, 4)), [0.5])
