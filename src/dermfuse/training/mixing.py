"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch.

Each batch is mixed with a shuffled copy of itself: ``lam ~ Beta(alpha, alpha)``;

- mixup: ``x = lam * x + (1 - lam) * x[perm]``;
- CutMix: a box of area ``(1 - lam)`` of the image (clipped at the border) is pasted from
  ``x[perm]``, and ``lam`` becomes the share of the image left untouched.

The metadata are mixed with the same ``lam`` and the targets become class distributions
``lam * onehot(y) + (1 - lam) * onehot(y[perm])``. `MixedTargetLoss` scores them: per row
``-sum_c w_c t_c log p_c`` (targets label-smoothed first), summed and divided by the rows'
target-weighted class weights ``sum_i t_i . w``, which for one-hot targets is exactly the
class-weighted mean ``nn.CrossEntropyLoss`` gives hard labels. With both alphas > 0 each batch is one or the other, with probability 1/2.
Draws come from the mixer's own generator, which `fit` reseeds every epoch from (init seed,
epoch, rank), so a resumed run mixes as an uninterrupted one does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["BatchMix", "MixedTargetLoss", "check_alpha"]


def check_alpha(key: str, value: object) -> None:
    """ConfigError naming ``train.<key>`` unless ``value`` is 0 (off) or a finite Beta parameter > 0."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"train.{key}: expected 0 (off) or a Beta parameter > 0, e.g. 0.2, got {value!r}")


class MixedTargetLoss(nn.Module):
    """``forward(logits (B, C), targets (B, C) class distributions) -> scalar``: the class-weighted,
    label-smoothed cross entropy of `nn.CrossEntropyLoss`, generalised to mixed targets."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_row = F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing,
                                  reduction="none")
        norm = targets.sum(1) if self.weight is None else targets @ self.weight  # (B,): w_y for one-hot rows
        return per_row.sum() / norm.sum()


class BatchMix:
    """``mix(x (B, 3, H, W) float, meta (B, D), labels (B,) int) -> (x, meta, targets (B, C) float)``."""

    def __init__(self, n_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        check_alpha("mixup_alpha", mixup_alpha)
        check_alpha("cutmix_alpha", cutmix_alpha)
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConfigError("BatchMix: train.mixup_alpha and train.cutmix_alpha are both 0 (nothing to mix)")
        self.n_classes, self.mixup_alpha, self.cutmix_alpha = n_classes, float(mixup_alpha), float(cutmix_alpha)
        self.generator = torch.Generator()

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, x: torch.Tensor, meta: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.generator
        cut = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or bool(torch.rand((), generator=g) < 0.5))
        alpha = self.cutmix_alpha if cut else self.mixup_alpha
        lam = float(np.random.default_rng(int(torch.randint(2**62, (), generator=g))).beta(alpha, alpha))
        perm = torch.randperm(len(labels), generator=g).to(x.device)
        if cut:
            x, lam = self._paste(x, perm, lam)
        else:
            x = lam * x + (1.0 - lam) * x[perm]
        meta = lam * meta + (1.0 - lam) * meta[perm]
        onehot = F.one_hot(labels, self.n_classes).float()
        return x, meta, lam * onehot + (1.0 - lam) * onehot[perm]

    def _paste(self, x: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """x with a box from x[perm] pasted in, and the share of the image left as it was."""
        h, w = x.shape[2:]
        side = math.sqrt(1.0 - lam)
        bh, bw = int(round(h * side)), int(round(w * side))
        cy, cx = (int(torch.randint(n, (), generator=self.generator)) for n in (h, w))
        y0, y1 = max(0, cy - bh // 2), min(h, cy - bh // 2 + bh)
        x0, x1 = max(0, cx - bw // 2), min(w, cx - bw // 2 + bw)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
