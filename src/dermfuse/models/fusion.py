"""FT-MultiCNN (paper section 3.5) and the metadata-only baseline.

FT-MultiCNN = image branch (ConvBlocks 32/64/128 on a 128x128x3 input, flattened; or a
registered backbone used as a pooled feature extractor) + metadata branch (Dense 64 +
ReLU), concatenated, then [BatchNorm1d] + [Dropout] + Linear -> logits.

``fusion="metablock"`` replaces the concatenation with a MetaBlock-style gate (after Pacheco
& Krohling, IEEE JBHI 2021): the metadata scales and shifts each image feature,
``sigmoid(tanh(f(meta) * x) + g(meta))``, and the head (BatchNorm1d, Dropout, Linear) sees
the gated image features only. It differs from their reference code in two ways: one gate
per feature (theirs: one per group of 32), and no reducer block (Linear 256 + BN + ReLU +
Dropout) between the gate and the head. On the paper's conv blocks the features are the
flattened map (128 * (S/8)^2), so f and g are that wide.
"""

from __future__ import annotations

import torch
from torch import nn

from ..image_size import canonical_size
from .registry import Normalize, create_model, list_models, model_spec, register_model
from .cnn import ConvBlocks

__all__ = ["FTMultiCNN", "MetaBlock", "MetaMLP", "FUSIONS", "ft_multicnn", "meta_mlp"]

META_HIDDEN = 64  # paper 3.5.2: Dense(64) on the metadata
FUSIONS = ("concat", "metablock")  # how the metadata meets the image features


def _check_meta(meta: torch.Tensor | None, meta_dim: int, batch: int | None) -> torch.Tensor:
    if meta is None:
        raise ValueError(f"this model needs meta of shape (B, {meta_dim}); got None")
    if meta.ndim != 2 or meta.shape[1] != meta_dim or (batch is not None and meta.shape[0] != batch):
        want = f"({batch}, {meta_dim})" if batch is not None else f"(B, {meta_dim})"
        raise ValueError(f"meta of shape {tuple(meta.shape)}; expected {want}")
    return meta


class MetaBlock(nn.Module):
    """Metadata-gated image features: ``sigmoid(tanh(f(meta) * x) + g(meta))``, with f and g
    Linear + BatchNorm1d maps from the metadata to the feature width (the MetaBlock of
    Pacheco & Krohling 2021, one gate per feature). Its two BatchNorm1d layers are there
    whatever ``batchnorm`` says (they are part of the block): training needs batches of 2+.

    forward(x (B, F), meta (B, meta_dim)) -> (B, F) in (0, 1)."""

    def __init__(self, n_features: int, meta_dim: int) -> None:
        super().__init__()
        self.scale = nn.Sequential(nn.Linear(meta_dim, n_features), nn.BatchNorm1d(n_features))  # f
        self.shift = nn.Sequential(nn.Linear(meta_dim, n_features), nn.BatchNorm1d(n_features))  # g

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.tanh(self.scale(meta) * x) + self.shift(meta))


class FTMultiCNN(nn.Module):
    """Image branch + metadata branch, concatenated, -> logits.

    forward(image (B, 3, S, S) float in [0, 1], meta (B, meta_dim) float) -> (B, num_classes).
    With use_meta=False the metadata branch is absent and meta is ignored (ablation).
    ``fusion``: "concat" (the paper's: Dense(64) on the metadata, concatenated with the
    image features) or "metablock" (the metadata gates the image features, see MetaBlock).
    """

    def __init__(
        self,
        num_classes: int,
        meta_dim: int,
        input_size: int | tuple[int, int] = 128,
        image_backbone: str | None = None,
        pretrained: bool = True,
        backbone_weights: str | None = None,
        dropout: float = 0.3,
        batchnorm: bool = True,
        use_meta: bool = True,
        fusion: str = "concat",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: expected one of {', '.join(FUSIONS)}")
        if use_meta and meta_dim <= 0:
            raise ValueError("ft_multicnn needs meta_dim > 0 (or use_meta=False for an image-only ablation)")
        self.use_meta = use_meta
        self.meta_dim = meta_dim if use_meta else 0
        self.input_size = canonical_size(input_size)  # an int side or (h, w); bundle.json gives a list
        self.image_backbone = image_backbone or "cnn"

        if self.image_backbone == "cnn":
            # Paper 3.5.1: inputs as they are (/255), three conv blocks, flatten.
            self.normalize = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
            self.image_branch: nn.Module = ConvBlocks(input_size, batchnorm=batchnorm)
            self.weights_source = "random"
        else:
            spec = model_spec(self.image_backbone)
            if not spec.uses_image or spec.uses_meta:
                raise ValueError(
                    f"image_backbone {self.image_backbone!r} is not an image-only model; "
                    "expected cnn or one of "
                    + ", ".join(n for n in list_models() if model_spec(n).uses_image and not model_spec(n).uses_meta)
                )
            self.normalize = nn.Identity()  # the backbone normalises its own input
            self.image_branch = create_model(
                self.image_backbone,
                num_classes=0,  # pooled features (B, num_features)
                pretrained=pretrained,
                weights=backbone_weights,
                input_size=input_size,
            )
            self.weights_source = self.image_branch.weights_source
        n_img = self.image_branch.num_features

        self.fusion = fusion if use_meta else "concat"
        self.meta_branch: nn.Module | None = None
        if use_meta and fusion == "metablock":
            self.meta_branch = MetaBlock(n_img, meta_dim)
            n_fused = n_img
        else:
            if use_meta:
                self.meta_branch = nn.Sequential(nn.Linear(meta_dim, META_HIDDEN), nn.ReLU())
            n_fused = n_img + (META_HIDDEN if use_meta else 0)
        self.fused_norm = nn.BatchNorm1d(n_fused) if batchnorm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(n_fused, num_classes) if num_classes else nn.Identity()
        self.num_features = n_fused

    @property
    def cam_layer(self) -> nn.Module:
        """The image branch's Grad-CAM target (last conv ReLU, or the backbone's)."""
        return self.image_branch.cam_layer

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.image_branch(self.normalize(image))  # (B, F_img)
        if self.meta_branch is not None:
            meta = _check_meta(meta, self.meta_dim, image.shape[0])
            if self.fusion == "metablock":
                feats = self.meta_branch(feats, meta)  # (B, F_img), gated
            else:
                feats = torch.cat([feats, self.meta_branch(meta)], dim=1)  # (B, F_img + 64)
        return self.head(self.dropout(self.fused_norm(feats)))  # (B, C)


class MetaMLP(nn.Module):
    """Metadata only: Linear(meta_dim, 64) + ReLU + Linear(64, C).

    forward(image (ignored, may be None), meta (B, meta_dim)) -> (B, num_classes).
    """

    def __init__(self, num_classes: int, meta_dim: int, hidden: int = META_HIDDEN, dropout: float = 0.0) -> None:
        super().__init__()
        if meta_dim <= 0:
            raise ValueError("meta_mlp needs meta_dim > 0")
        self.meta_dim = meta_dim
        self.net = nn.Sequential(
            nn.Linear(meta_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )
        self.cam_layer = None
        self.input_size = 0  # takes no image
        self.weights_source = "random"

    def forward(self, image: torch.Tensor | None, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_check_meta(meta, self.meta_dim, None))  # (B, C)


@register_model(
    default_size=128,
    uses_meta=True,
    pretrained_source="that of image_backbone (none for the default conv blocks)",
    description="FT-MultiCNN: conv blocks (or a backbone) + metadata Dense(64), concatenated (or fusion=metablock: gated)",
)
def ft_multicnn(
    num_classes: int,
    meta_dim: int = 0,
    pretrained: bool = True,
    input_size: int | tuple[int, int] = 128,
    image_backbone: str | None = None,
    backbone_weights: str | None = None,
    dropout: float = 0.3,
    batchnorm: bool = True,
    use_meta: bool = True,
    fusion: str = "concat",
) -> FTMultiCNN:
    """FT-MultiCNN (paper 3.5). ``pretrained`` applies to ``image_backbone`` only."""
    return FTMultiCNN(
        num_classes,
        meta_dim,
        input_size=input_size,
        image_backbone=image_backbone,
        pretrained=pretrained,
        backbone_weights=backbone_weights,
        dropout=dropout,
        batchnorm=batchnorm,
        use_meta=use_meta,
        fusion=fusion,
    )


@register_model(default_size=0, uses_image=False, uses_meta=True, description="Metadata-only MLP (Dense 64)")
def meta_mlp(
    num_classes: int, meta_dim: int = 0, pretrained: bool = False, hidden: int = META_HIDDEN, dropout: float = 0.0
) -> MetaMLP:
    """Metadata-only baseline; no pretrained weights exist."""
    return MetaMLP(num_classes, meta_dim, hidden=hidden, dropout=dropout)
