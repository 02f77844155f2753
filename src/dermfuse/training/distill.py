"""Knowledge distillation: one student trained on an ensemble's soft targets.

The teachers (finished bundles) score the student's training rows once, offline
(`dermfuse.runs.teach.teacher_targets`, ``dermfuse teach``): each teacher's mean softmax over its test-time
views, *uncalibrated* (no prior shift, no temperature: the balanced output the class-weighted
loss trained), averaged over teachers and written as a predictions CSV. ``train.distill_targets``
names that file; `dermfuse.runs.teach.load_soft_targets` aligns it to the training rows by image id and
`DistillLoss` mixes the usual hard-label loss with the teachers' distribution
(Hinton et al. 2015)::

    loss = (1 - alpha) * CE_w(z, y) + alpha * T^2 * KL(softmax(log p_teacher / T) || softmax(z / T))

``CE_w`` is the recipe's loss (class weights, label smoothing); ``alpha`` is
``train.distill_weight``, ``T`` ``train.distill_temperature``. The teachers see each image
without augmentation; the student sees it augmented, as in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["DistillLoss"]

_EPS = 1e-8


class DistillLoss(nn.Module):
    """``forward(logits (B, C), labels (B,), soft (B, C) teacher probabilities) -> scalar``."""

    def __init__(self, alpha: float, temperature: float, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"train.distill_weight: expected 0..1 (the soft targets' share of the loss), got {alpha!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"train.distill_temperature: expected > 0, got {temperature!r}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.hard = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = F.softmax(torch.log(soft.float().clamp_min(_EPS)) / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * (t * t)
        return (1.0 - self.alpha) * self.hard(logits, labels) + self.alpha * kd
