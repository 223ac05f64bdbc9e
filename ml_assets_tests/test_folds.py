import numpy as np
import pandas as pd
import pytest

from ml_assets.data.folds import TEST_FOLD, assign_folds, fold_histograms, fold_problems
from ml_assets.data.tables import Dataset


def make_dataset(labels: list[list[int]], sha: list[str] | None = None) -> Dataset:
    """One image per entry of ``labels``, holding one box of each listed category."""
    n = len(labels)
    images = pd.DataFrame(
        {
            "image_id": range(1, n + 1),
            "file_name": [f"{i}.png" for i in range(n)],
            "width": 10,
            "height": 10,
            "sha256": sha or [f"{i:064x}" for i in range(n)],
        }
    )
    rows = [(i + 1, c) for i, cats in enumerate(labels) for c in cats]
    annotations = pd.DataFrame(
        {
            "annotation_id": range(len(rows)),
            "image_id": [r[0] for r in rows],
            "category_id": [r[1] for r in rows],
            "x": 0.0,
            "y": 0.0,
            "w": 1.0,
            "h": 1.0,
            "area": 1.0,
            "iscrowd": 0,
            "segmentation": None,
        }
    )
    categories = pd.DataFrame({"category_id": [1, 2, 3], "name": ["a", "b", "c"]})
    return Dataset(images, annotations, categories)


def test_single_label_folds_are_stratified_and_deterministic():
    labels = [[1]] * 60 + [[2]] * 30 + [[3]] * 9 + [[]] * 6
    ds = make_dataset(labels)
    folds = assign_folds(ds, k=3, seed=1)
    assert folds.equals(assign_folds(ds, k=3, seed=1))
    assert not folds.equals(assign_folds(ds, k=3, seed=2))
    assert sorted(folds["image_id"]) == list(range(1, 106))
    table = fold_histograms(ds, folds)
    assert table.loc["a"].tolist() == [20, 20, 20]
    assert table.loc["b"].tolist() == [10, 10, 10]
    assert table.loc["c"].tolist() == [3, 3, 3]
    empty = folds[folds["image_id"] > 99]["fold"].value_counts()
    assert empty.tolist() == [2, 2, 2]


def test_multi_label_folds_use_iterative_stratification():
    rng = np.random.default_rng(0)
    labels = [
        sorted(set(rng.choice([1, 1, 1, 2, 2, 3], size=rng.integers(1, 4)).tolist()))
        for _ in range(300)
    ]
    ds = make_dataset(labels)
    folds = assign_folds(ds, k=5, seed=0)
    table = fold_histograms(ds, folds)
    for name in ["a", "b", "c"]:
        counts = table.loc[name]
        assert counts.max() - counts.min() <= 3, table


def test_copies_of_one_content_share_a_fold():
    labels = [[1], [2]] * 20
    sha = [f"{i // 4:064x}" for i in range(40)]  # every 4 images are the same content
    folds = assign_folds(make_dataset(labels, sha), k=4, seed=0)
    folds["group"] = [i // 4 for i in range(40)]
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert folds["fold"].nunique() == 4


def test_held_out_test_split():
    ds = make_dataset([[1]] * 50 + [[2]] * 50)
    folds = assign_folds(ds, k=3, seed=0, test_fraction=0.2)
    test = folds[folds["fold"] == TEST_FOLD]
    assert len(test) == 20
    assert set(folds["fold"]) == {TEST_FOLD, 0, 1, 2}
    assert (
        ds.images.merge(test)["image_id"]
        .isin(ds.annotations[ds.annotations["category_id"] == 1]["image_id"])
        .sum()
        == 10
    )


@pytest.mark.parametrize(
    ("k", "test_fraction", "message"),
    [(1, 0.0, "at least 2"), (3, 1.0, r"in \[0, 1\)"), (20, 0.0, "cannot make 20 folds from 4")],
)
def test_bad_fold_settings_are_refused(k, test_fraction, message):
    with pytest.raises(ValueError, match=message):
        assign_folds(make_dataset([[1], [2], [1], [2]]), k=k, test_fraction=test_fraction)


def test_fold_problems_finds_unassigned_images_and_leaking_content():
    ds = make_dataset([[1], [2], [1], [2]], sha=["a", "a", "b", "c"])
    good = assign_folds(ds, k=2)
    assert fold_problems(ds.images, good) == {
        "unassigned_images": 0,
        "images_in_several_folds": 0,
        "contents_in_several_folds": 0,
    }
    bad = pd.DataFrame({"image_id": [1, 2, 3, 3], "fold": [0, 1, 0, 1]})
    assert fold_problems(ds.images, bad) == {
        "unassigned_images": 1,
        "images_in_several_folds": 1,
        "contents_in_several_folds": 2,
    }


def test_the_datasets_own_test_split_is_held_out_as_it_is():
    labels = [[1], [2]] * 10
    sha = [f"{i:064x}" for i in range(19)] + [f"{0:064x}"]  # the last image copies the first
    ds = make_dataset(labels, sha)
    ds.images["split"] = ["test"] + ["train"] * 15 + ["val"] * 3 + ["train"]
    ds.images.loc[1:3, "split"] = "test"  # images 1 to 4 are the test split
    folds = assign_folds(ds, k=2, seed=0).set_index("image_id")["fold"]
    assert sorted(folds[folds == TEST_FOLD].index) == [1, 2, 3, 4, 20]  # 20 copies image 1
    assert set(folds.drop([1, 2, 3, 4, 20])) == {0, 1}
    with_fraction = assign_folds(ds, k=2, seed=0, test_fraction=0.25).set_index("image_id")
    held = set(with_fraction.index[with_fraction["fold"] == TEST_FOLD])
    assert {1, 2, 3, 4, 20} < held and len(held) > 5
