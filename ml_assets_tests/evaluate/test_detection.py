"""Detector scores: equal to pycocotools' COCOeval on the held-out images, VOC AP50 by hand."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import orjson
import pandas as pd
import pytest

from ml_assets.data.formats import read_dataset
from ml_assets.data.sample import write_sample
from ml_assets.data.tables import Dataset
from ml_assets.evaluate.coco import STAT_NAMES
from ml_assets.evaluate.detection import DETECTION_COLUMNS, detection_scores, voc_ap50
from ml_assets.evaluate.report import write_detections

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """24 sample images with every fifth annotation turned into a crowd region."""
    root = write_sample(tmp_path_factory.mktemp("det") / "shapes", 24, seed=11, size=64)
    ds = read_dataset(root)
    crowd = set(ds.annotations["annotation_id"].iloc[::5].tolist())
    annotations = ds.annotations.copy()
    annotations["iscrowd"] = annotations["annotation_id"].isin(crowd).astype("int64")
    ds = Dataset(ds.images, annotations, ds.categories, ds.root, dict(ds.attrs))
    held_out = ds.images["image_id"].tolist()[4:20]
    return root, ds, held_out, crowd


def perturbed(ds: Dataset, image_ids, seed: int) -> pd.DataFrame:
    """Detections from the truth: jittered boxes, some wrong classes, tied and random scores,
    missed objects and false positives."""
    rng = np.random.default_rng(seed)
    truth = ds.annotations[ds.annotations["image_id"].isin(image_ids)]
    rows = []
    for r in truth.itertuples():
        for _ in range(rng.integers(0, 3)):  # 0, 1 or 2 detections per object
            jitter = rng.normal(scale=0.15 * max(r.w, r.h), size=4)
            category = r.category_id if rng.random() > 0.15 else int(rng.integers(1, 5))
            w, h = max(1.0, r.w + jitter[2]), max(1.0, r.h + jitter[3])
            score = round(float(rng.random()), 1)  # coarse: many ties
            rows.append((r.image_id, category, r.x + jitter[0], r.y + jitter[1], w, h, score))
    for image_id in image_ids:  # background false positives
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 48, 2)
            w, h = rng.uniform(4, 16, 2)
            rows.append((image_id, int(rng.integers(1, 5)), x, y, w, h, float(rng.random())))
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def pycocotools_eval(root, image_ids, crowd, detections: pd.DataFrame):
    """pycocotools' COCOeval on the sample's own annotations.json, restricted to ``image_ids``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    document = orjson.loads((root / "annotations.json").read_bytes())
    keep = set(image_ids)
    document["images"] = [i for i in document["images"] if i["id"] in keep]
    document["annotations"] = [
        {**a, "iscrowd": int(a["id"] in crowd)}
        for a in document["annotations"]
        if a["image_id"] in keep
    ]
    results = [
        {"image_id": int(i), "category_id": int(c), "bbox": [x, y, w, h], "score": s}
        for i, c, x, y, w, h, s in detections.itertuples(index=False)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = document
        gt.createIndex()
        engine = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        engine.evaluate()
        engine.accumulate()
        engine.summarize()
    return engine


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pycocotools(sample, seed, tmp_path):
    root, ds, held_out, crowd = sample
    detections = perturbed(ds, held_out, seed)
    scores = detection_scores(ds, held_out, detections)
    write_detections(tmp_path / "dt.json", scores.predictions)
    reference = pycocotools_eval(root, held_out, crowd, detections)
    ours = [scores.metrics[name] for name in STAT_NAMES]
    np.testing.assert_allclose(ours, reference.stats, rtol=0, atol=1e-12)
    assert scores.extra["coco_stats"] == ours
    # per-class AP@[.5:.95] and AP50 from pycocotools' precision array
    precision = reference.eval["precision"]
    for k, category_id in enumerate(reference.params.catIds):
        name = ds.category_names[category_id]
        curve = precision[:, :, k, 0, -1]
        assert scores.per_class.loc[name, "AP"] == pytest.approx(
            curve[curve > -1].mean(), abs=1e-12
        )
        at_50 = curve[0][curve[0] > -1]
        assert scores.per_class.loc[name, "AP50"] == pytest.approx(at_50.mean(), abs=1e-12)
    truth = ds.annotations[ds.annotations["image_id"].isin(held_out)]
    expected_counts = truth[truth["iscrowd"] == 0].groupby("category_id").size()
    assert scores.per_class["ground_truth"].tolist() == [
        int(expected_counts.get(c, 0)) for c in sorted(ds.category_names)
    ]
    assert scores.metrics["instances"] == expected_counts.sum()
    assert scores.metrics["images"] == len(held_out)
    assert scores.metrics["VOC_AP50"] == pytest.approx(scores.per_class["VOC_AP50"].mean())
    assert 0 < scores.metrics["VOC_AP50"] <= 1
    # the results file is a COCO results file that pycocotools loads
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations.json"))
        loaded = gt.loadRes(str(tmp_path / "dt.json"))
    assert len(loaded.getAnnIds()) == len(detections)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_no_detections_score_zero(sample):
    _, ds, held_out, _ = sample
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in DETECTION_COLUMNS})
    scores = detection_scores(ds, held_out, empty)
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "VOC_AP50"):
        assert scores.metrics[name] == 0.0
    assert {scores.metrics[n] for n in STAT_NAMES} <= {0.0, -1.0}
    assert scores.metrics["detections"] == 0
    assert (scores.per_class[["AP", "AP50", "VOC_AP50"]].fillna(0) == 0).all().all()
    assert scores.plots["pr_curves"].startswith(PNG)


def test_plots_are_pngs_and_classes_are_named(sample):
    _, ds, held_out, _ = sample
    scores = detection_scores(ds, held_out, perturbed(ds, held_out, 3))
    assert set(scores.plots) == {"pr_curves", "samples"}
    assert all(png.startswith(PNG) for png in scores.plots.values())
    assert scores.extra["classes"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"},
        {"id": 4, "name": "cross"},
    ]
    assert list(scores.per_class.index) == ["circle", "square", "triangle", "cross"]
    assert list(scores.per_class.columns) == [
        "AP",
        "AP50",
        "VOC_AP50",
        "ground_truth",
        "detections",
    ]


def test_bad_detections_are_refused(sample):
    _, ds, held_out, _ = sample
    with pytest.raises(ValueError, match="lacks the column.*score"):
        detection_scores(ds, held_out, pd.DataFrame(columns=DETECTION_COLUMNS[:-1]))
    other = ds.images["image_id"].tolist()[0]  # not held out
    stray = pd.DataFrame([(other, 1, 0.0, 0.0, 5.0, 5.0, 0.9)], columns=DETECTION_COLUMNS)
    with pytest.raises(ValueError, match=f"detection 0.*image_id {other}"):
        detection_scores(ds, held_out, stray)
    nan = pd.DataFrame([(held_out[0], 1, np.nan, 0.0, 5.0, 5.0, 0.9)], columns=DETECTION_COLUMNS)
    with pytest.raises(ValueError, match="detection 0.*finite"):
        detection_scores(ds, held_out, nan)


def box(image_id, category_id, x, y, w, h, iscrowd=0):
    return {
        "image_id": image_id,
        "category_id": category_id,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "iscrowd": iscrowd,
    }


def test_voc_ap50_by_hand():
    truth = pd.DataFrame(
        [
            box(1, 1, 0, 0, 10, 10),
            box(1, 1, 20, 20, 10, 10),
            box(1, 1, 40, 40, 10, 10, iscrowd=1),  # "difficult": neither found nor missed
            box(2, 2, 0, 0, 10, 10, iscrowd=1),  # class 2 has only a crowd region
        ]
    )
    detections = pd.DataFrame(
        [
            (1, 1, 0, 0, 10, 10, 0.9),  # true positive
            (1, 1, 41, 41, 10, 10, 0.85),  # on the crowd region: ignored
            (1, 1, 0, 0, 10, 10, 0.8),  # duplicate of the first: false positive
            (1, 1, 21, 20, 10, 10, 0.7),  # IoU 0.82: true positive
            (1, 1, 60, 60, 5, 5, 0.6),  # nothing there: false positive
        ],
        columns=DETECTION_COLUMNS,
    )
    # recall 0.5, 0.5, 1.0, 1.0 at precision 1, 1/2, 2/3, 1/2: the envelope gives
    # 0.5 * 1 + 0.5 * 2/3
    found = voc_ap50(truth, detections)
    assert found[1] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert np.isnan(found[2])
    # a box with IoU exactly 0.5 does not count (the devkit asks for more than 0.5)
    half = pd.DataFrame([(1, 1, 0, 0, 10, 5, 0.9)], columns=DETECTION_COLUMNS)
    assert voc_ap50(truth.iloc[:1], half)[1] == 0.0
