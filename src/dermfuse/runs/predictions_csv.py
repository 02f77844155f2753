"""The predictions.csv format, written by holdout runs, cross-validation folds and
``dermfuse evaluate`` and read back by ``calibrate`` and ``cv --collect``.

One row per image::

    image_id, label, [extra columns, e.g. fold], pred, p_<class> for every class

``label`` and ``pred`` are class names; ``p_<class>`` are probabilities with 8 significant
digits (float32 precision, so an argmax tie survives a re-read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..io import atomic_write

__all__ = ["proba_columns", "write_predictions", "read_predictions", "probabilities", "label_indices",
           "classes_of", "align_predictions"]

PREFIX = "p_"


def proba_columns(classes: Sequence[str]) -> list[str]:
    """The probability columns of ``classes``, in class order: ``p_<class>``."""
    return [f"{PREFIX}{c}" for c in classes]


def write_predictions(path: str | Path, image_ids: Sequence[Any], classes: Sequence[str], y: np.ndarray,
                      proba: np.ndarray, extra: dict[str, Any] | None = None) -> None:
    """Write predictions.csv: ``y`` (N,) class indices, ``proba`` (N, C) probabilities;
    ``extra`` columns (a scalar or one value per row) go between label and pred."""
    classes = list(classes)
    proba = np.asarray(proba)
    if proba.shape != (len(image_ids), len(classes)) or len(y) != len(image_ids):
        raise ValueError(f"predictions: {len(image_ids)} image ids, {len(y)} labels and probabilities "
                         f"{proba.shape}; expected ({len(image_ids)}, {len(classes)})")
    df = pd.DataFrame({"image_id": np.asarray(image_ids), "label": [classes[i] for i in y]})
    for k, v in (extra or {}).items():
        df[k] = v
    df["pred"] = [classes[i] for i in proba.argmax(1)]
    for j, col in enumerate(proba_columns(classes)):
        df[col] = proba[:, j]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.8g"))  # float32 precision: argmax ties survive a re-read


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions.csv as a table; image ids stay text (``ISIC_0001`` or ``007``)."""
    return pd.read_csv(path, dtype={"image_id": str})


def probabilities(df: pd.DataFrame, classes: Sequence[str], renormalise: bool = False) -> np.ndarray:
    """(N, C) float64 probabilities of ``classes`` from a predictions table;
    ``renormalise``: rows divided by their sum (they sum to 1 up to the file's rounding)."""
    cols = proba_columns(classes)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"predictions: no column(s) {missing}; expected one p_<class> per class of {list(classes)}")
    p = df[cols].to_numpy(np.float64)
    return p / p.sum(axis=1, keepdims=True) if renormalise else p


def label_indices(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """(N,) int64 index into ``classes`` of each row's ``label``."""
    return df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)


def classes_of(df: pd.DataFrame) -> list[str]:
    """The classes a predictions table holds probabilities for, in column order."""
    return [c[len(PREFIX):] for c in df.columns if c.startswith(PREFIX)]


def align_predictions(reference: pd.DataFrame, other: pd.DataFrame, name: str = "the second file",
                      reference_name: str = "the first file") -> pd.DataFrame:
    """``other``'s rows in ``reference``'s image order, for comparing or averaging two
    predictions tables scored on the same images. ValueError, naming ``name``, where the two
    differ in classes, in the images they score (or hold one twice) or in an image's label."""
    classes = classes_of(reference)
    if classes_of(other) != classes:
        raise ValueError(f"{name}: classes {classes_of(other)}, {reference_name} has {classes}")
    ids = reference["image_id"]
    if len(other) != len(ids) or set(other["image_id"]) != set(ids) or ids.duplicated().any():
        raise ValueError(f"{name}: {len(other)} rows on other images than {reference_name} ({len(ids)} rows)")
    other = other.set_index("image_id").loc[ids].reset_index()
    if not np.array_equal(label_indices(other, classes), label_indices(reference, classes)):
        raise ValueError(f"{name}: labels differ from {reference_name}'s on the same images")
    return other
