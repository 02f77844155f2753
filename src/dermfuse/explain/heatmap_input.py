"""Heatmap inputs: a CAM backbone's Grad-CAM map for every image, cached as uint8 under
a key of (CAM backbone weights, image cache key, method), and what the FT-MultiCNN's image
branch sees, rendered from it: the jet-coloured map (``heatmap``, the paper's input), the map over the image
(``overlay``) or the image times the map (``masked``).

The target class of every map is the CAM backbone's *predicted* class, never the label: at
inference time there is no label, so training inputs must be made the same way. Fine-tuning
the backbone on one split's training rows is `dermfuse.training.heatmap_stage`."""

from __future__ import annotations

import hashlib
from typing import get_args

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..config import InputMode
from ..data.cache import cache_root
from ..constants import OVERLAY_ALPHA
from ..io import atomic_write
from .gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, colorize, overlay
from ..preprocess import to_input

__all__ = ["CAM_METHODS", "INPUT_MODES", "compute_maps", "quantize_maps", "render_input", "weights_digest", "cached_maps"]

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "hirescam": HiResCAM}
INPUT_MODES = get_args(InputMode)  # the config's choices (dermfuse.config)
_FORMAT = 1  # bump when the map computation changes




def compute_maps(cam_model: nn.Module, images: np.ndarray, method: str = "gradcam",
                 batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Heatmaps of the CAM backbone's predicted class.

    images: (N, H, W, 3) uint8. Returns (N, H, W) float32 in [0, 1]."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {sorted(CAM_METHODS)}")
    device = next(cam_model.parameters()).device
    maps = np.zeros(images.shape[:3], np.float32)
    with CAM_METHODS[method](cam_model) as cam, Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("heatmaps", total=len(images))
        for s in range(0, len(images), batch_size):
            x = to_input(np.ascontiguousarray(images[s:s + batch_size])).to(device)
            m = cam(x, None)
            maps[s:s + len(x)] = m.detach().cpu().numpy() if torch.is_tensor(m) else m
            bar.advance(task, len(x))
    return quantize_maps(maps)


def quantize_maps(maps: np.ndarray) -> np.ndarray:
    """Maps on the 256 levels they are cached at, so fresh and cached maps are identical."""
    return np.rint(maps * 255).astype(np.float32) / 255.0


def render_input(mode: str, images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """What the image branch sees. images: (N, H, W, 3) uint8; maps: (N, H, W) in [0, 1].
    Returns (N, H, W, 3) uint8."""
    if mode == "image":
        return images
    if mode == "heatmap":
        return colorize(maps)
    if mode == "overlay":
        return overlay(images, maps, alpha=OVERLAY_ALPHA)
    if mode == "masked":
        return np.rint(images.astype(np.float32) * maps[..., None]).astype(np.uint8)
    raise ValueError(f"unknown input mode {mode!r}; expected one of {INPUT_MODES}")


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous().reshape(-1)  # 1-D: 0-dim tensors cannot be viewed as bytes
        h.update(str(tuple(v.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cached_maps(cam_model: nn.Module, images: np.ndarray, image_cache_key: str, method: str,
                progress: bool = True) -> tuple[np.ndarray, str, bool]:
    """compute_maps with an on-disk uint8 cache. Returns (maps float (N,H,W), key, reused)."""
    key = hashlib.sha256(f"{_FORMAT}|{weights_digest(cam_model)}|{image_cache_key}|{method}".encode()).hexdigest()[:32]
    folder = cache_root() / "heatmaps"
    path = folder / f"{key}.npy"
    if path.exists():
        return np.load(path).astype(np.float32) / 255.0, key, True
    maps = compute_maps(cam_model, images, method=method, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: np.save(tmp, np.rint(maps * 255).astype(np.uint8)), suffix=".npy")
    return maps, key, False
