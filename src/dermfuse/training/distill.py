"""Knowledge distillation: one student trained on an ensemble's soft targets.

The teachers (finished bundles) score the student's training rows once, offline
(`teacher_targets`, ``dermfuse teach``): each teacher's mean softmax over its test-time
views, *uncalibrated* (no prior shift, no temperature: the balanced output the class-weighted
loss trained), averaged over teachers and written as a predictions CSV. ``train.distill_targets``
names that file; `load_soft_targets` aligns it to the training rows by image id and
`DistillLoss` mixes the usual hard-label loss with the teachers' distribution
(Hinton et al. 2015)::

    loss = (1 - alpha) * CE_w(z, y) + alpha * T^2 * KL(softmax(log p_teacher / T) || softmax(z / T))

``CE_w`` is the recipe's loss (class weights, label smoothing); ``alpha`` is
``train.distill_weight``, ``T`` ``train.distill_temperature``. The teachers see each image
without augmentation; the student sees it augmented, as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["DistillLoss", "load_soft_targets", "teacher_targets"]

_EPS = 1e-8


class DistillLoss(nn.Module):
    """``forward(logits (B, C), labels (B,), soft (B, C) teacher probabilities) -> scalar``."""

    def __init__(self, alpha: float, temperature: float, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"train.distill_weight: expected 0..1 (the soft targets' share of the loss), got {alpha!r}")
        if not temperature > 0:
            raise ConfigError(f"train.distill_temperature: expected > 0, got {temperature!r}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.hard = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = F.softmax(torch.log(soft.float().clamp_min(_EPS)) / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * (t * t)
        return (1.0 - self.alpha) * self.hard(logits, labels) + self.alpha * kd


def load_soft_targets(path: str | Path, image_ids: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(N, C) float32 teacher probabilities for ``image_ids`` (in that order) from a
    predictions CSV (``dermfuse teach``); ConfigError naming what is missing or malformed."""
    from ..runs.predictions_csv import probabilities, read_predictions

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.distill_targets: {path} not found (write it with `dermfuse teach`)")
    df = read_predictions(path)
    if "image_id" not in df.columns:
        raise ConfigError(f"train.distill_targets: {path} has no image_id column (a predictions CSV of `dermfuse teach`)")
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise ConfigError(f"train.distill_targets: {path} lists image {dup!r} twice")
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
    from ..data.cache import build_cache
    from ..inference.bundle import load_bundle
    from ..inference.device import resolve_device
    from ..inference.predictor import Predictor
    from ..runs.cohort import load_cohort
    from ..runs.evaluate import select_part
    from ..runs.predictions_csv import write_predictions

    if not bundles:
        raise ConfigError("teach: name at least one teacher bundle")
    cohort = load_cohort(data_path, None, True, progress)
    table = cohort.table
    if split_file is not None:
        table = table.iloc[select_part(table, split_file, part)].reset_index(drop=True)
    classes: list[str] | None = None
    probs = []
    for path in bundles:
        bundle = load_bundle(path, device=resolve_device(device))
        if classes is not None and list(bundle.classes) != classes:
            raise ConfigError(f"teach: {path} has classes {bundle.classes}, the first teacher {classes}")
        classes = list(bundle.classes)
        cache = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=progress)
        probs.append(Predictor.from_bundle(bundle).run(cache.images, bundle.encode_table(table), calibrated=False,
                                                       progress=progress).proba.astype(np.float64))
    proba = np.mean(probs, axis=0)
    known = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table["label"]) - set(known))
    if unknown:
        raise ConfigError(f"teach: the data has classes the teachers do not know: {unknown}")
    y = table["label"].map(known).to_numpy(np.int64)
    ids = table["image_id"].astype(str).tolist()
    if out is not None:
        write_predictions(out, ids, classes, y, proba)
    return ids, y, proba, classes
