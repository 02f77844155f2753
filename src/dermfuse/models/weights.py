"""Loading a state dict from a local file (safetensors or a plain ``torch.save`` of tensors)
into a model, strict except for a timm network's classifier."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["LoadReport", "read_state_dict", "load_weights", "head_keys"]


@dataclass
class LoadReport:
    """What a weight load did: tensors loaded, tensors of the file left out, and why."""

    source: str
    n_loaded: int
    n_total: int  # tensors in the target state dict
    skipped: list[str] = field(default_factory=list)  # file keys not loaded (classifier)
    kept_random: list[str] = field(default_factory=list)  # target keys left as they were


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


def head_keys(net: nn.Module) -> set[str]:
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
