"""A run's data: read and clean a data set into a `Cohort` (one row per usable image,
labels as class indices)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..data.clean import CleaningReport, clean, summarize
from ..data.formats import ReadResult, read_dataset
from ..data.splits import holdout, validation_split
from ..errors import DataError
from ..io import atomic_write
from .config_checks import split_by

__all__ = ["Cohort", "load_cohort", "cohort_for", "holdout_split"]


@dataclass
class Cohort:
    """A cleaned data set: one row per usable image, labels as class indices."""

    table: pd.DataFrame
    report: CleaningReport
    read: ReadResult
    classes: list[str]
    labels: np.ndarray  # (N,) int64 index into classes
    synthetic: bool = False

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(self.table, self.report, self.read.format)


def load_cohort(path: str | Path, format: str | None = None, check_images: bool = True,
                progress: bool = True, column_map: dict[str, str] | None = None) -> Cohort:
    """Read and clean a data set folder (or CSV); ``column_map`` names the columns of a
    'generic' CSV (see `read_dataset`)."""
    read = read_dataset(path, format=format, column_map=column_map)
    table, report = clean(read, check_images=check_images, progress=progress)
    table = table.reset_index(drop=True)
    classes = list(read.classes)
    labels = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    synthetic = (Path(read.root) / "SYNTHETIC.txt").exists()
    return Cohort(table, report, read, classes, labels, synthetic)


def cohort_for(cfg: RunConfig, progress: bool = True) -> Cohort:
    """`load_cohort` of the data a run config names (path, format, column map, image check)."""
    d = cfg.data
    return load_cohort(d.path, d.format, d.check_images, progress, d.column_map)


def holdout_split(cfg: RunConfig, table: pd.DataFrame,
                   run_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row positions: a holdout test part, then a validation part of
    the training rows with the same grouping; written to ``run_dir/split.csv`` (if given)."""
    by = split_by(cfg.data.split)
    try:
        is_test = (holdout(table, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed, by=by)
                   if cfg.data.test_fraction > 0 else np.zeros(len(table), bool))
        train_idx, val_idx = validation_split(table, np.flatnonzero(~is_test), fraction=cfg.data.val_fraction,
                                              seed=cfg.data.split_seed, by=by)
    except ValueError as e:
        raise DataError(f"cannot split {cfg.data.path} with --split {cfg.data.split}: {e}") from None
    test_idx = np.flatnonzero(is_test)
    if run_dir is not None:
        part = np.full(len(table), "train", dtype=object)
        part[val_idx], part[test_idx] = "val", "test"
        split = pd.DataFrame({"image_id": table["image_id"], "part": part})
        atomic_write(run_dir / "split.csv", lambda tmp: split.to_csv(tmp, index=False))
    return train_idx, val_idx, test_idx
