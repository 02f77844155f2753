"""The paper's plain CNN (section 3.4.1 / 3.5.1): three conv blocks (3x3 conv with 32,
64, 128 filters, ReLU, 2x2 max-pool), flatten, one dense layer -> logits.

``ConvBlocks`` is the image branch that ``ft_multicnn`` reuses.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..image_size import canonical_size, size_hw, size_text
from .registry import Normalize, register_model

__all__ = ["ConvBlocks", "PlainCNN", "cnn"]


class ConvBlocks(nn.Module):
    """Conv blocks -> flattened features.

    image: (B, in_channels, H, W) with (H, W) = ``input_size`` (an int S for S x S) ->
    (B, num_features), num_features = channels[-1] * (H // 2**n) * (W // 2**n) for n =
    len(channels) (128 * 16 * 16 for S = 128).
    Each block: Conv 3x3 (padding 1) [+ BatchNorm] + ReLU + MaxPool 2.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 128,
        channels: Sequence[int] = (32, 64, 128),
        in_channels: int = 3,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        h, w = size_hw(input_size)
        side_h, side_w = h // 2 ** len(channels), w // 2 ** len(channels)
        if min(side_h, side_w) < 1:
            raise ValueError(
                f"input_size {size_text(input_size)} is too small for {len(channels)} pooling blocks; "
                f"expected at least {2 ** len(channels)}"
            )
        blocks = []
        c_in = in_channels
        for c_out in channels:
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers["conv"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)
            if batchnorm:
                layers["bn"] = nn.BatchNorm2d(c_out)
            layers["act"] = nn.ReLU()  # not in place: Grad-CAM hooks read its output
            layers["pool"] = nn.MaxPool2d(2)
            blocks.append(nn.Sequential(layers))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.input_size = canonical_size(input_size)  # an int side or (h, w)
        self._hw = (h, w)
        self.num_features = c_in * side_h * side_w

    @property
    def cam_layer(self) -> nn.Module:
        """The last block's ReLU: (B, channels[-1], S/2**(n-1), S/2**(n-1)), before pooling."""
        return self.blocks[-1].act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self._hw:
            raise ValueError(
                f"image of size {tuple(x.shape[-2:])}; this conv branch was built for "
                f"{self._hw[0]}x{self._hw[1]} (pass input_size= to create_model)"
            )
        return self.blocks(x).flatten(1)  # (B, num_features)


class PlainCNN(nn.Module):
    """ConvBlocks -> [Dropout] -> Linear; image only (meta is ignored).

    forward(image (B, 3, S, S) float in [0, 1], meta=None) -> logits (B, num_classes).
    Inputs are used as they are (the paper's ``/255``): mean 0, std 1.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: int | tuple[int, int] = 128,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.normalize = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.features = ConvBlocks(input_size, batchnorm=batchnorm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(self.features.num_features, num_classes) if num_classes else nn.Identity()
        self.input_size = input_size
        self.num_features = self.features.num_features
        self.weights_source = "random"

    @property
    def cam_layer(self) -> nn.Module:
        return self.features.cam_layer

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        x = self.features(self.normalize(image))  # (B, F)
        return self.head(self.dropout(x))  # (B, C)


@register_model(default_size=128, description="Plain CNN: 3 conv blocks (32/64/128) + dense")
def cnn(
    num_classes: int,
    meta_dim: int = 0,
    pretrained: bool = False,
    input_size: int | tuple[int, int] = 128,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> PlainCNN:
    """Plain CNN (paper 3.4.1); no pretrained weights exist, so ``pretrained`` is ignored."""
    return PlainCNN(num_classes, input_size=input_size, batchnorm=batchnorm, dropout=dropout)
