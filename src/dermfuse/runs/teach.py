"""Soft targets for distillation (``dermfuse teach`` and ``train.distill_targets``).

`teacher_targets` scores a split's training rows with finished bundles, uncalibrated and with
their test-time views, averages the teachers and writes a predictions CSV;
`out_of_fold_targets` gathers cross-fitted targets instead: the out-of-fold predictions of a
``dermfuse cv --split-file RUN/split.csv --part train`` run, where every training row is scored
by the fold model that never trained on it (a teacher scoring its own training rows gives
targets close to the labels themselves); `load_soft_targets`
reads that file back, aligned to the training rows by image id, for
`dermfuse.training.distill.DistillLoss`. The teachers must not have trained on the student's
validation or test rows (train them on the same split file): their soft targets would carry
those labels into the student. Nothing here can check that for a bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import json

import numpy as np
import pandas as pd

from ..data.cache import build_cache
from ..errors import ConfigError
from ..inference.bundle import load_bundle
from ..inference.device import resolve_device
from ..inference.predictor import Predictor
from .cohort import load_cohort
from .evaluate import select_part
from .predictions_csv import classes_of, label_indices, probabilities, read_predictions, write_predictions

__all__ = ["load_soft_targets", "out_of_fold_targets", "teacher_targets"]


def load_soft_targets(path: str | Path, image_ids: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(N, C) float32 teacher probabilities for ``image_ids`` (in that order) from a
    predictions CSV (``dermfuse teach``); ConfigError naming what is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.distill_targets: {path} not found (write it with `dermfuse teach`)")
    df = read_predictions(path)
    if "image_id" not in df.columns:
        raise ConfigError(f"train.distill_targets: {path} has no image_id column (a predictions CSV of `dermfuse teach`)")
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise ConfigError(f"train.distill_targets: {path} lists image {dup!r} twice")
    if sorted(classes_of(df)) != sorted(classes):
        raise ConfigError(f"train.distill_targets: {path} holds probabilities for {classes_of(df)}, "
                          f"the student's classes are {list(classes)}")
    try:
        proba = probabilities(df, classes)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"train.distill_targets: {path}: {e}") from None
    total = proba.sum(axis=1, keepdims=True)
    if not np.isfinite(proba).all() or (proba < 0).any() or (total <= 0).any():
        raise ConfigError(f"train.distill_targets: {path} has negative, non-finite or all-zero probabilities")
    proba = proba / total  # rows sum to 1 up to the file's rounding
    pos = dict(zip(df["image_id"].astype(str), range(len(df))))
    missing = [i for i in map(str, image_ids) if i not in pos]
    if missing:
        raise ConfigError(f"train.distill_targets: {len(missing)} of the {len(image_ids)} training images have no "
                          f"soft target in {path} (first: {missing[:3]}); score the same split's training part "
                          f"with `dermfuse teach ... --split-file RUN/split.csv`")
    return proba[[pos[str(i)] for i in image_ids]].astype(np.float32)


def teacher_targets(bundles: Sequence[str | Path], data_path: str | Path, split_file: str | Path | None = None,
                    part: str = "train", out: str | Path | None = None, device: str = "cpu",
                    progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Score the rows of ``data_path`` (those ``split_file`` puts in ``part``) with every
    teacher bundle, uncalibrated and with each bundle's test-time views, and average:
    (image ids, labels (N,), mean probabilities (N, C), classes). ``out``: also write them
    as a predictions CSV, the file ``train.distill_targets`` reads."""

    if not bundles:
        raise ConfigError("teach: name at least one teacher bundle")
    cohort = load_cohort(data_path, None, True, progress)
    table = cohort.table
    if split_file is not None:
        table = table.iloc[select_part(table, split_file, part)].reset_index(drop=True)
    teachers = [load_bundle(path, device=resolve_device(device)) for path in bundles]
    classes = list(teachers[0].classes)
    for path, bundle in zip(bundles, teachers):
        if list(bundle.classes) != classes:
            raise ConfigError(f"teach: {path} has classes {bundle.classes}, the first teacher {classes}")
    known = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(known))
    if unknown:  # before any scoring: nothing is lost
        raise ConfigError(f"teach: the data has classes the teachers do not know: {unknown}")
    probs = []
    for bundle in teachers:
        cache = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=progress)
        probs.append(Predictor.from_bundle(bundle).run(cache.images, bundle.encode_table(table), calibrated=False,
                                                       progress=progress).proba.astype(np.float64))
    proba = np.mean(probs, axis=0)
    y = table["label"].map(known).to_numpy(np.int64)
    ids = table["image_id"].astype(str).tolist()
    if out is not None:
        write_predictions(out, ids, classes, y, proba)
    return ids, y, proba, classes


def out_of_fold_targets(variant_dir: str | Path, out: str | Path | None = None
                        ) -> tuple[list[str], np.ndarray, np.ndarray, list[str], dict]:
    """Cross-fitted soft targets from a finished cross-validation: ``variant_dir`` is
    ``RUN_DIR/<variant>`` of ``dermfuse cv``; every fold of ``RUN_DIR/plan.json`` must be
    DONE, and the cv must be inner folds of a split's rows (``--split-file``). Returns (image
    ids, labels, probabilities, classes, the plan's row selection); ``out``: also written as a predictions CSV with its fold column. The probabilities
    are the folds' as cv wrote them (calibrated on each fold's own validation rows when the
    config calibrates). ConfigError, before anything is written, for a missing or unfinished
    fold, an image scored twice or folds that disagree on the classes."""
    variant_dir = Path(variant_dir)
    plan_path = variant_dir.parent / "plan.json"
    if not plan_path.is_file():
        raise ConfigError(f"teach --from-cv: {plan_path} not found; give RUN_DIR/<variant> of a `dermfuse cv` run")
    plan = json.loads(plan_path.read_text())
    if not (plan.get("rows") or {}).get("split_file"):
        raise ConfigError(f"teach --from-cv: {variant_dir.parent} is a cv run over every row, so its fold models "
                          "trained on the rows a student would be validated and tested on; run the inner folds "
                          "with `dermfuse cv DATA --split-file RUN/split.csv --part train`")
    folds = range(int(plan["folds"]))
    unfinished = [k for k in folds if not (variant_dir / f"fold{k}" / "DONE").is_file()]
    if unfinished:
        raise ConfigError(f"teach --from-cv: fold(s) {unfinished} of {variant_dir} are not finished (no DONE); "
                          f"run them first (`dermfuse cv ... --out {variant_dir.parent} --fold K`)")
    parts = [read_predictions(variant_dir / f"fold{k}" / "predictions.csv") for k in folds]
    classes = classes_of(parts[0])
    for k, df in zip(folds, parts):
        if classes_of(df) != classes:
            raise ConfigError(f"teach --from-cv: fold {k} has classes {classes_of(df)}, fold 0 {classes}")
    table = pd.concat(parts, ignore_index=True)
    twice = table["image_id"][table["image_id"].duplicated()]
    if len(twice):
        raise ConfigError(f"teach --from-cv: image {twice.iloc[0]!r} is scored by more than one fold of {variant_dir}")
    y = label_indices(table, classes)
    proba = probabilities(table, classes, renormalise=True)
    ids = table["image_id"].astype(str).tolist()
    if out is not None:
        write_predictions(out, ids, classes, y, proba, extra={"fold": table["fold"].to_numpy()})
    return ids, y, proba, classes, dict(plan["rows"])
