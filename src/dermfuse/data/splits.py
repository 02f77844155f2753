"""Splits stratified by class and grouped so that no patient or lesion is on both sides.

`by="auto"` links rows that share a patient_id or a lesion_id (connected components), so a
lesion seen with and without a patient id still lands in one fold. `by="image"` makes every
image its own group: the paper's leaky image-level protocol, kept for comparison.
`SPLIT_GROUPING` says which grouping each config split name (`data.split`) uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..config import SplitName

__all__ = ["BY_CHOICES", "SPLIT_GROUPING", "SPLIT_LABELS", "group_ids", "holdout", "kfold", "validation_split"]

BY_CHOICES = ("auto", "patient", "lesion", "image")
SPLIT_GROUPING: dict[SplitName, str] = {"grouped": "auto", "lesion": "lesion", "patient": "patient",
                                        "image-leaky": "image"}
"""data.split -> the `by` of group_ids."""
SPLIT_LABELS: dict[SplitName, str] = {"grouped": "patient/lesion-grouped", "lesion": "lesion-grouped",
                                      "patient": "patient-grouped", "image-leaky": "image-level (leaky)"}
"""data.split -> its name in reports and bundles."""


def _ids(table: pd.DataFrame, column: str) -> list[str | None]:
    """The column as stripped text, None where missing or absent."""
    if column not in table.columns:
        return [None] * len(table)
    out: list[str | None] = []
    for v in table[column]:
        missing = v is None or (not isinstance(v, str) and pd.isna(v))
        text = "" if missing else str(v).strip()
        out.append(text or None)
    return out


def _components(image_ids: list[str], *id_columns: list[str | None]) -> np.ndarray:
    """Group per row: rows sharing any id in `id_columns` are joined (union-find); each
    group is named by its first row's id from the first column that has one."""
    parent = list(range(len(image_ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for ids in id_columns:
        first: dict[str, int] = {}
        for i, value in enumerate(ids):
            if value is None:
                continue
            j = first.setdefault(value, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(len(image_ids))]
    names: dict[int, str] = {}
    for i, root in enumerate(roots):
        if root not in names:
            names[root] = next((ids[i] for ids in id_columns if ids[i] is not None), image_ids[i])
    return np.array([names[r] for r in roots], dtype=str)


def group_ids(table: pd.DataFrame, by: str = "auto") -> np.ndarray:
    """Group of each row, (N,) str. auto: patient_id where present, else lesion_id, else
    image_id (rows sharing either id are one group); patient/lesion: that column, a row
    without it is its own group; image: every image its own group (leaky)."""
    if by not in BY_CHOICES:
        raise ValueError(f"by={by!r} is not a grouping; expected one of {', '.join(BY_CHOICES)}")
    image_ids = [v if v is not None else f"row{i}" for i, v in enumerate(_ids(table, "image_id"))]
    if by == "image":
        return np.array(image_ids, dtype=str)
    if by == "auto":
        return _components(image_ids, _ids(table, "patient_id"), _ids(table, "lesion_id"))
    ids = _ids(table, f"{by}_id")
    if all(v is None for v in ids):
        raise ValueError(f"by={by!r} asks for {by}_id, but that column is empty or absent; "
                         f"use by='auto' or a grouping the data set has")
    return np.array([v if v is not None else img for v, img in zip(ids, image_ids)], dtype=str)


def _labels(table: pd.DataFrame) -> np.ndarray:
    labels = _ids(table, "label")
    if any(v is None for v in labels):
        raise ValueError("splits need a label on every row; clean the table first")
    return np.array(labels, dtype=str)


def _assign(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold 0..k-1 of each row, stratified by label and grouped."""
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k={k!r} folds: expected an integer >= 2")
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from {n_groups} groups")
    folds = np.full(len(labels), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = fold
    return folds


def _k_for(fraction: float, name: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{name}={fraction!r}: expected a fraction between 0 and 1")
    k = round(1.0 / fraction)
    if k < 2:
        raise ValueError(f"{name}={fraction!r} is too large; it must be at most 2/3")
    return k


def kfold(table: pd.DataFrame, k: int, seed: int = 0, by: str = "auto") -> np.ndarray:
    """Fold of each row, (N,) int in 0..k-1: stratified by label, no group in two folds,
    the same folds for the same seed."""
    return _assign(_labels(table), group_ids(table, by), k, seed)


def holdout(table: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0,
            by: str = "auto") -> np.ndarray:
    """Test mask, (N,) bool: fold 0 of round(1 / test_fraction) stratified group folds, so
    the test part is about test_fraction of the rows."""
    return kfold(table, _k_for(test_fraction, "test_fraction"), seed, by) == 0


def validation_split(table: pd.DataFrame, train_index: Any, fraction: float = 0.1,
                     seed: int = 0, by: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Split training rows (positions, or a boolean mask over the table) into
    (train_index, val_index), positions into `table`, grouped as the outer split (groups
    are computed on the whole table) and stratified; val is about `fraction` of them."""
    index = np.asarray(train_index)
    if index.dtype == bool:
        if len(index) != len(table):
            raise ValueError(f"train_index mask has {len(index)} entries for {len(table)} rows")
        index = np.flatnonzero(index)
    index = np.sort(index.astype(int))
    groups = group_ids(table, by)[index]
    labels = _labels(table.iloc[index])
    folds = _assign(labels, groups, _k_for(fraction, "fraction"), seed)
    return index[folds != 0], index[folds == 0]
