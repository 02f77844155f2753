"""Seed ensembles: K copies of one architecture trained on the same rows with different
seeds (``train.members: K``), whose class probabilities are averaged.

An `Ensemble` keeps the model contract of the registry (``model(image, meta) -> (B, C)``):
its output is the log of the mean member softmax, so ``softmax(output)`` is exactly the
mean of the members' probabilities and every caller (TTA, calibration, bundles, serving)
treats it like any other model. It is not a registered architecture (nothing trains it as
a whole); bundles rebuild it with `build_ensemble`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .registry import create_model

__all__ = ["ENSEMBLE", "Ensemble", "build_ensemble"]

ENSEMBLE = "ensemble"  # the model name bundles record for an Ensemble


class Ensemble(nn.Module):
    """Mean of the members' class probabilities, returned as log-probabilities.

    forward(image (B, 3, S, S) float in [0, 1], meta (B, D)) -> (B, C) float32 with
    ``softmax(out) == mean_k softmax(member_k(image, meta))``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.input_size = getattr(first, "input_size", 0)
        sources = sorted({getattr(m, "weights_source", "random") for m in members})
        self.weights_source = sources[0] if len(sources) == 1 else ",".join(sources)

    @property
    def cam_layer(self) -> nn.Module | None:
        """The first member's Grad-CAM layer: says the ensemble has an image branch to
        explain. `dermfuse.inference.predict.explain_arrays` averages every member's map."""
        return getattr(self.members[0], "cam_layer", None)

    def forward(self, image: torch.Tensor | None, meta: torch.Tensor | None = None) -> torch.Tensor:
        logp = torch.stack([m(image, meta).float().log_softmax(dim=1) for m in self.members])  # (K, B, C)
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


def build_ensemble(member: str, member_kwargs: dict[str, Any], n_members: int,
                   num_classes: int | None = None, meta_dim: int | None = None) -> Ensemble:
    """An ensemble of ``n_members`` untrained ``create_model(member, pretrained=False,
    **member_kwargs)`` networks, to load a bundle's weights into. ``num_classes`` and
    ``meta_dim`` (recorded in bundles for readers) must agree with ``member_kwargs``."""
    for key, value in (("num_classes", num_classes), ("meta_dim", meta_dim)):
        if value is not None and member_kwargs.get(key, value) != value:
            raise ValueError(f"{key} {value} differs from the members' {member_kwargs.get(key)}")
    if not isinstance(n_members, int) or n_members < 2:
        raise ValueError(f"n_members must be an int >= 2, got {n_members!r}")
    return Ensemble([create_model(member, pretrained=False, **member_kwargs) for _ in range(n_members)])
