"""k-fold assignment of images, stratified by class, never splitting copies of the same content.

Images with the same sha256 form one group and always land in the same fold. Groups are
stratified with scikit-learn's ``StratifiedKFold`` when every image holds at most one class, and
with iterative stratification (``iterstrat``'s ``MultilabelStratifiedKFold``, Sechidis et al.
2011) when images hold several; "no objects" counts as a class of its own so empty images spread
evenly too. Deterministic for a seed.

A dataset's own test split (images whose ``split`` is ``test`` or ``testing``, as COCO, YOLO, VOC
and split image folders record it) is held out as it is, whatever the format: it never joins a
fold, and the final model validates on it. Content found both in it and elsewhere stays with the
test split, so no copy of a test image is trained on.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ml_assets.data.tables import Dataset, splits

TEST_FOLD = -1
TEST_SPLITS = frozenset({"test", "testing"})


def _group_labels(ds: Dataset) -> tuple[pd.Series, pd.DataFrame]:
    """Map each image to a content group and each group to a multi-hot class matrix."""
    images = ds.images
    sha = images["sha256"].where(images["sha256"].astype(bool), images["image_id"].astype(str))
    group_of_image = pd.Series(pd.factorize(sha)[0], index=images["image_id"].to_numpy())
    ann = ds.annotations[["image_id", "category_id"]].drop_duplicates()
    ann = ann.assign(group=group_of_image.reindex(ann["image_id"]).to_numpy())
    hot = pd.crosstab(ann["group"], ann["category_id"]).clip(upper=1)
    hot = hot.reindex(range(group_of_image.max() + 1), fill_value=0)
    hot["none"] = (hot.sum(axis=1) == 0).astype(int)
    return group_of_image, hot


def _split(hot: pd.DataFrame, n_splits: int, seed: int) -> np.ndarray:
    """Fold index per group (row of ``hot``)."""
    if len(hot) < n_splits:
        raise ValueError(f"cannot make {n_splits} folds from {len(hot)} distinct images")
    folds = np.empty(len(hot), dtype=int)
    if (hot.sum(axis=1) <= 1).all():
        from sklearn.model_selection import StratifiedKFold

        labels = hot.to_numpy().argmax(axis=1)
        counts = np.bincount(labels)
        # Classes rarer than the fold count cannot be stratified; pool them so none is dropped.
        labels = np.where(counts[labels] < n_splits, -1, labels)
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(hot)), labels)
    else:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(hot)), hot.to_numpy())
    for fold, (_, held) in enumerate(parts):
        folds[held] = fold
    return folds


def assign_folds(
    ds: Dataset, k: int = 5, seed: int = 0, test_fraction: float = 0.0
) -> pd.DataFrame:
    """Return ``image_id``, ``fold`` (0..k-1, or -1 for the held-out test split) per image.

    The dataset's own test split is held out (see the module docstring); with
    ``test_fraction`` > 0, about that share of the other images is held out too (stratified the
    same way) and the k folds are made from the rest.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    group_of_image, hot = _group_labels(ds)
    group_fold = np.full(len(hot), TEST_FOLD)
    tested = splits(ds.images).str.lower().isin(TEST_SPLITS).to_numpy()
    pool = np.setdiff1d(np.arange(len(hot)), group_of_image.to_numpy()[tested])
    if test_fraction > 0:
        parts = max(2, round(1 / test_fraction))
        held_out = _split(hot.iloc[pool].reset_index(drop=True), parts, seed) == 0
        pool = pool[~held_out]
    group_fold[pool] = _split(hot.iloc[pool].reset_index(drop=True), k, seed)
    fold = group_fold[group_of_image.to_numpy()]
    return pd.DataFrame({"image_id": group_of_image.index.to_numpy(), "fold": fold})


def fold_histograms(ds: Dataset, folds: pd.DataFrame) -> pd.DataFrame:
    """Objects per class (rows: class names) in each fold (columns)."""
    ann = ds.annotations.merge(folds, on="image_id")
    names = ds.category_names
    table = pd.crosstab(ann["category_id"].map(names), ann["fold"])
    table.index.name = "class"
    return table


def fold_problems(images: pd.DataFrame, folds: pd.DataFrame) -> dict[str, int]:
    """Counts of what would make cross-validation dishonest: images without exactly one fold,
    and image contents (sha256) found in more than one fold."""
    merged = images[["image_id", "sha256"]].merge(folds, on="image_id", how="left")
    hashed = merged[merged["sha256"].astype(bool)]
    return {
        "unassigned_images": int(merged["fold"].isna().sum()),
        "images_in_several_folds": int(folds["image_id"].duplicated().sum()),
        "contents_in_several_folds": int((hashed.groupby("sha256")["fold"].nunique() > 1).sum()),
    }


def read_folds(path: Path, k: int | None = None) -> tuple[pd.DataFrame, str]:
    """The fold assignment stored at ``path`` and its digest (models, evaluations and reports
    record it, so a report never mixes folds of different assignments); refuses an assignment
    made for another ``k`` (None: any k, for readers of what was made)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fold assignment at {path}: materialize folds first")
    data = path.read_bytes()
    assignment = pd.read_parquet(io.BytesIO(data))
    made = fold_numbers(assignment)
    if k is not None and made != list(range(k)):
        raise ValueError(
            f"{path}: folds {made} do not match k={k} (ML_ASSETS_FOLDS); rematerialize folds"
        )
    return assignment, assignment_digest(data)


def fold_numbers(assignment: pd.DataFrame) -> list[int]:
    """The folds an assignment was split into (0 .. k-1; the test split is none of them)."""
    return sorted(set(assignment["fold"].tolist()) - {TEST_FOLD})


def assignment_digest(data: bytes) -> str:
    """The digest of a stored fold assignment (its parquet bytes): what models, evaluations
    and reports record, and the ``folds`` asset's data version."""
    return hashlib.sha256(data).hexdigest()[:12]


def training_ids(assignment: pd.DataFrame, fold: int | None) -> list[int]:
    """Images a fold's model trains on: every fold but ``fold`` (never the test split);
    ``None``: every fold (the final model)."""
    return assignment.loc[~assignment["fold"].isin([fold, TEST_FOLD]), "image_id"].tolist()


def held_out_ids(assignment: pd.DataFrame, fold: int | None) -> list[int]:
    """Images a fold's model is validated and evaluated on; ``None``: the test split (the
    final model's, empty when the folds hold none)."""
    held = TEST_FOLD if fold is None else fold
    return assignment.loc[assignment["fold"] == held, "image_id"].tolist()
