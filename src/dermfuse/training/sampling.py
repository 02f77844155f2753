"""Class balance for training: inverse-frequency loss weights and the rows of each epoch
(a permutation, or an over- or undersampled draw), the same on every rank and on resume."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from ..config import Balance

__all__ = ["BALANCE_MODES", "EpochSampler", "class_weights", "epoch_indices"]

BALANCE_MODES = get_args(Balance)  # the config's choices (dermfuse.config)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights (C,), mean 1 over the classes present; 0 for absent ones."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    return torch.tensor(w * (counts > 0).sum() / w.sum(), dtype=torch.float32)


def epoch_indices(labels: np.ndarray, balance: str, seed: int, epoch: int) -> np.ndarray:
    """Training rows of one epoch in order, drawn from (seed, epoch) alone, so every rank
    (and a resumed run) builds the same list.

    none / weighted-loss: a permutation of all N rows. oversample: N rows drawn with
    replacement, each class equally likely (WeightedRandomSampler's draw). undersample:
    min-count rows of each present class without replacement, shuffled (C * min_count rows).
    """
    rng = np.random.default_rng([seed, epoch])
    counts = np.bincount(labels)
    if balance in ("none", "weighted-loss"):
        return rng.permutation(len(labels))
    if balance == "oversample":
        p = 1.0 / counts[labels]
        return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
    if balance == "undersample":
        k = counts[counts > 0].min()
        rows = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in np.flatnonzero(counts)]
        return rng.permutation(np.concatenate(rows))
    raise ValueError(f"balance: expected one of {BALANCE_MODES}, got {balance!r}")


class EpochSampler(DistributedSampler):
    """A DistributedSampler whose epoch is ``epoch_indices(labels, balance, seed, epoch)``:
    rank r takes every world-th row from position r, the list padded by wrapping so that
    all ranks take the same number. Call ``set_epoch(epoch)`` before each epoch."""

    def __init__(self, labels: np.ndarray, balance: str, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(labels, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.labels, self.balance = np.asarray(labels), balance
        counts = np.bincount(self.labels)
        length = len(counts[counts > 0]) * counts[counts > 0].min() if balance == "undersample" else len(labels)
        self.num_samples = math.ceil(length / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        rows = np.resize(epoch_indices(self.labels, self.balance, self.seed, self.epoch), self.total_size)
        return iter(rows[self.rank :: self.num_replicas].tolist())
