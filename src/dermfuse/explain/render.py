"""Heatmap rendering as the paper does it (section 3.3.3-3.3.4, Fig. 6).

``colorize``: per-image min-max to 0..255 uint8, OpenCV's jet colormap, BGR -> RGB.
The jet table is built here in numpy and equals ``cv2.applyColorMap(x, COLORMAP_JET)``
entry for entry (tests check it), so the package does not need OpenCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..constants import OVERLAY_ALPHA

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["colorize", "overlay", "plot_triptych", "jet_lut"]


def jet_lut() -> np.ndarray:
    """OpenCV's COLORMAP_JET as a ``(256, 3)`` uint8 RGB table.

    Each channel is a trapezoid with slope 4 per level; blue is red mirrored. OpenCV's
    float base table rounds one entry (blue at 159) down from 2 to 1, reproduced here.
    """
    i = np.arange(256)
    red = np.clip(np.minimum(4 * i - 382, 1148 - 4 * i), 0, 255)
    green = np.clip(np.minimum(4 * i - 128, 892 - 4 * i), 0, 255)
    blue = red[::-1].copy()
    blue[159] = 1
    return np.stack([red, green, blue], axis=1).astype(np.uint8)


_JET = jet_lut()


def _as_maps(maps: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(B, H, W)`` or ``(H, W)`` maps as float32 numpy."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must be (B, H, W) or (H, W), got shape {maps.shape}")
    return maps


def _as_uint8_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images as uint8 ``(B, H, W, 3)`` (or ``(H, W, 3)``).

    Accepts uint8 ``(..., H, W, 3)`` (numpy or tensor) or a float tensor/array
    ``(B, 3, H, W)`` / ``(3, H, W)`` in [0, 1] (the model input).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        if images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3) or (H, W, 3), got {images.shape}")
        return images
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) or (3, H, W) in [0, 1], got {images.shape}")
    images = np.moveaxis(images, -3, -1)
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def colorize(maps: np.ndarray | torch.Tensor) -> np.ndarray:
    """Jet-coloured heatmaps.

    Args:
        maps: ``(B, H, W)`` or ``(H, W)`` float heatmaps (any range).

    Returns:
        uint8 RGB ``(B, H, W, 3)`` (or ``(H, W, 3)``): each map min-max scaled to
        ``uint8(255 * (m - min) / (max - min))`` (a constant map gives 0), then looked up
        in OpenCV's jet table — the same pixels as ``cv2.applyColorMap(COLORMAP_JET)``
        followed by ``cv2.cvtColor(BGR2RGB)``.
    """
    m = _as_maps(maps)
    low = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - low
    scaled = np.where(span > 0, (m - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
    return _JET[(255 * scaled).astype(np.uint8)]


def overlay(
    images: np.ndarray | torch.Tensor, maps: np.ndarray | torch.Tensor, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """Heatmaps blended over images: ``round((1 - alpha) * image + alpha * colorize(map))``.

    Args:
        images: uint8 ``(B, H, W, 3)`` RGB, or float ``(B, 3, H, W)`` in [0, 1].
        maps: ``(B, H, W)`` heatmaps of the same size.
        alpha: heatmap weight in [0, 1].

    Returns:
        uint8 RGB ``(B, H, W, 3)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_uint8_images(images)
    heat = colorize(maps)
    if img.shape != heat.shape:
        raise ValueError(f"images {img.shape[:-1]} and maps {heat.shape[:-1]} differ in shape")
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plot_triptych(
    images: np.ndarray | torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    titles: Sequence[str] | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> Figure:
    """The paper's Fig. 6: one row per image, columns original | heatmap | overlay.

    Args:
        images: uint8 ``(B, H, W, 3)`` RGB, or float ``(B, 3, H, W)`` in [0, 1].
        maps: ``(B, H, W)`` heatmaps.
        titles: one label per row (e.g. ``"mel 0.91"``), shown over the original.
        alpha: heatmap weight of the overlay.

    Returns:
        a matplotlib ``Figure`` (not attached to pyplot; save with ``fig.savefig``).
    """
    from matplotlib.figure import Figure

    img = _as_uint8_images(images)
    m = _as_maps(maps)
    if img.ndim == 3:
        img, m = img[None], m[None] if m.ndim == 2 else m
    if titles is not None and len(titles) != len(img):
        raise ValueError(f"titles must have one entry per image ({len(img)}), got {len(titles)}")
    heat, blend = colorize(m), overlay(img, m, alpha)
    fig = Figure(figsize=(9.0, 3.0 * len(img)), layout="constrained")
    axes = fig.subplots(len(img), 3, squeeze=False)
    for row, panels in enumerate(zip(img, heat, blend)):
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            ax.imshow(panel)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(("Original", "Heatmap", "Overlay")[col])
        if titles is not None:
            axes[row][0].set_title(titles[row] if row else f"Original\n{titles[row]}")
    return fig
