"""Splits: grouped, stratified, deterministic; the validation part keeps the grouping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dermfuse.data.splits import SPLIT_LABELS, group_ids, holdout, kfold, validation_split

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
K = 5


def _synthetic(n_rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Lesions of 1-4 images each, one class per lesion, HAM10000-like imbalance."""
    rng = np.random.default_rng(seed)
    class_p = [0.06, 0.08, 0.12, 0.03, 0.13, 0.52, 0.06]
    rows: list[dict] = []
    lesion = 0
    while len(rows) < n_rows:
        label = CLASSES[rng.choice(len(CLASSES), p=class_p)]
        for _ in range(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1])):
            rows.append(dict(image_id=f"img{len(rows)}", label=label, lesion_id=f"L{lesion}",
                             patient_id=None))
        lesion += 1
    return pd.DataFrame(rows[:n_rows])


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _synthetic()


@pytest.fixture(scope="module")
def folds(table: pd.DataFrame) -> np.ndarray:
    return kfold(table, K, seed=0)


def test_no_group_in_two_folds(table: pd.DataFrame, folds: np.ndarray) -> None:
    per_group = pd.Series(folds).groupby(group_ids(table)).nunique()
    assert (per_group == 1).all()


def test_every_row_in_exactly_one_test_fold(table: pd.DataFrame, folds: np.ndarray) -> None:
    assert folds.shape == (len(table),) and set(folds) == set(range(K))
    tests = [np.flatnonzero(folds == k) for k in range(K)]
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(table)))


def test_class_proportions_per_fold_within_3_points(table: pd.DataFrame,
                                                     folds: np.ndarray) -> None:
    n_groups = table.groupby("label")["lesion_id"].nunique()
    checked = [c for c in CLASSES if n_groups[c] >= 50]
    assert len(checked) >= 5
    whole = table["label"].value_counts(normalize=True)
    for k in range(K):
        part = table.loc[folds == k, "label"].value_counts(normalize=True)
        for c in checked:
            assert abs(part.get(c, 0.0) - whole[c]) <= 0.03, (k, c)


def test_same_seed_same_folds_other_seed_other_folds(table: pd.DataFrame,
                                                     folds: np.ndarray) -> None:
    np.testing.assert_array_equal(kfold(table, K, seed=0), folds)
    assert (kfold(table, K, seed=1) != folds).any()


def test_holdout_is_a_grouped_fifth(table: pd.DataFrame) -> None:
    test = holdout(table, test_fraction=0.2, seed=3)
    assert test.dtype == bool and abs(test.mean() - 0.2) < 0.02
    groups = group_ids(table)
    assert not set(groups[test]) & set(groups[~test])


def test_validation_split_keeps_groups_apart() -> None:
    table = _synthetic(1000, seed=1)
    train_index = np.flatnonzero(np.arange(len(table)) % 4 != 0)
    train, val = validation_split(table, train_index, fraction=0.1, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == train_index.tolist()
    assert abs(len(val) / len(train_index) - 0.1) < 0.02
    groups = group_ids(table)
    assert not set(groups[train]) & set(groups[val])
    mask = np.isin(np.arange(len(table)), train_index)
    again = validation_split(table, mask, fraction=0.1, seed=0)  # a mask works too
    np.testing.assert_array_equal(again[1], val)


def test_auto_groups_by_patient_then_lesion_then_image() -> None:
    t = pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f"],
        "label": ["nv"] * 6,
        "patient_id": ["P1", "P1", None, None, None, "P2"],
        "lesion_id": ["L1", "L2", "L2", "L3", None, None],
    })
    groups = group_ids(t)
    # c has no patient but shares lesion L2 with b, so it joins P1's group.
    assert groups.tolist() == ["P1", "P1", "P1", "L3", "e", "P2"]
    assert group_ids(t, "lesion").tolist() == ["L1", "L2", "L2", "L3", "e", "f"]
    assert group_ids(t, "patient").tolist() == ["P1", "P1", "c", "d", "e", "P2"]


def test_image_grouping_makes_every_image_its_own_group(table: pd.DataFrame) -> None:
    groups = group_ids(table, "image")
    assert len(set(groups)) == len(table)
    assert SPLIT_LABELS["image-leaky"] == "image-level (leaky)"


def test_bad_grouping_requests_are_value_errors(table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="by='visit'"):
        group_ids(table, "visit")
    with pytest.raises(ValueError, match="patient_id, but that column is empty"):
        group_ids(table, "patient")
    with pytest.raises(ValueError, match="cannot make 5 folds from 3 groups"):
        kfold(table.head(3), 5, seed=0)
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        holdout(table, test_fraction=1.5)
