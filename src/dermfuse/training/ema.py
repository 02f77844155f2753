"""An exponential moving average of a model's weights, updated after every optimiser step.

``train.ema_decay`` > 0 switches it on in ``fit``: validation, early stopping and the
weights ``fit`` hands back are the average's, not the raw weights'. The decay warms up
as ``min(decay, (1 + t) / (10 + t))`` after t updates (TensorFlow's
``ExponentialMovingAverage(num_updates=t)``, timm's ``ModelEma`` warm-up), so the first
steps' random-ish weights leave the average quickly. Batch-norm statistics are averaged
like the weights; integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["WeightEma"]


class WeightEma:
    """``module``: a frozen copy of the model holding the average; ``update(model)`` after
    each step; ``state_dict()`` / ``load_state_dict()`` for checkpoints."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"WeightEma: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for avg, new in zip(self.module.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(new.detach(), 1.0 - d)  # avg = d * avg + (1 - d) * new
            else:
                avg.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
