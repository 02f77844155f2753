"""Is a heatmap faithful to the model, and is it on the lesion? Pure functions over arrays.

Faithfulness (does the model need the pixels the map points at?):

- **deletion** / **insertion** curves (Petsiuk et al. 2018, RISE): replace the most salient
  pixels first by a fill (deletion) or start from the fill and put the most salient pixels
  back first (insertion), tracking the probability of the
  explained class; the area under each curve (AUC over the fraction 0..1 of pixels) is low
  for deletion and high for insertion when the map is faithful. The fill is each image's
  mean colour by default (`fill_for`): a blur keeps a lesion's colour, and colour is much
  of a lesion's evidence, so a blurred lesion is hardly removed;
- **average drop** and **increase in confidence** (Chattopadhay et al. 2018): the class
  probability on ``image * map`` against the one on the image: average drop =
  mean(max(0, Y - O) / Y) x 100, increase = share of images with O > Y x 100 (what
  pytorch-grad-cam's ``DropInConfidence`` / ``IncreaseInConfidence`` give per image).

Localisation (needs a lesion mask): **energy in the lesion** (share of the map's sum inside
the mask) and the **pointing game** (the map's maximum falls inside the mask). **Border
energy**: share of the map's sum in the outer band of the image (a frame artefact).

Every score is per image, so `lesion_bootstrap` can give intervals that resample whole
lesions. `random_maps` is the baseline: smooth noise at the CAM's own grid, upsampled the
way a CAM is, so that it differs from a CAM only in not looking at the model.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "ScoreFn",
    "FILLS",
    "fill_for",
    "blurred",
    "perturbation_curves",
    "curve_auc",
    "confidence_change",
    "average_drop",
    "increase_in_confidence",
    "energy_in_mask",
    "pointing_game",
    "border_band",
    "border_energy",
    "random_maps",
    "lesion_bootstrap",
]

ScoreFn = Callable[[torch.Tensor, np.ndarray], torch.Tensor]
"""score(images (B, 3, H, W) float in [0, 1], rows (B,) int indices into the batch being
explained) -> (B,) probability of each row's explained class."""


FILLS = ("mean", "blur", "zero")


def fill_for(images: torch.Tensor, fill: str = "mean") -> torch.Tensor:
    """What a removed pixel becomes, (B, 3, H, W): ``mean`` the image's mean colour (its
    colour and structure both go: the default), ``blur`` `blurred`, ``zero`` black."""
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if fill == "blur":
        return blurred(images)
    if fill == "zero":
        return torch.zeros_like(images)
    raise ValueError(f"fill {fill!r}: expected one of {FILLS}")


def blurred(images: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-blurred copy of ``images`` (B, 3, H, W); sigma default = side / 20 px (the
    RISE insertion canvas: the colours stay, the structure goes)."""
    side = min(images.shape[-2:])
    sigma = float(sigma if sigma is not None else max(1.0, side / 20))
    k = 2 * math.ceil(3 * sigma) + 1
    k = min(k, 2 * (side // 2) - 1)  # an odd kernel no larger than the image
    return TF.gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """Position of every pixel in the descending order of its map, (B, H*W) long; ties keep
    pixel order (a stable sort), so the result is deterministic."""
    flat = maps.flatten(1)
    order = torch.sort(-flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks


def perturbation_curves(score: ScoreFn, images: torch.Tensor, maps: torch.Tensor,
                        steps: int = 16, fill: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves, each (B, steps + 1) float64.

    images: (B, 3, H, W) float in [0, 1]; maps: (B, H, W), higher = more salient; fill: what
    a removed pixel becomes (default: each image's mean colour). Point k has the top k/steps of the
    pixels removed (deletion: image -> fill) or put back (insertion: fill -> image); the class
    is the one ``score`` explains. fill default: `fill_for` (images, "mean")."""
    if images.ndim != 4 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"images (B, 3, H, W) and maps (B, H, W) must match, got {tuple(images.shape)} "
                         f"and {tuple(maps.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fill = fill_for(images) if fill is None else fill
    ranks = _ranks(maps.float()).view(maps.shape)  # (B, H, W)
    n_pix = ranks[0].numel()
    rows = np.arange(len(images))
    deletion, insertion = np.zeros((len(images), steps + 1)), np.zeros((len(images), steps + 1))
    for k in range(steps + 1):
        top = (ranks < round(k * n_pix / steps)).unsqueeze(1).to(images.dtype)  # (B, 1, H, W)
        deletion[:, k] = score(images * (1 - top) + fill * top, rows).double().cpu().numpy()
        insertion[:, k] = score(fill * (1 - top) + images * top, rows).double().cpu().numpy()
    return deletion, insertion


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve (B, K + 1) over the fraction 0..1 (trapezoids) -> (B,)."""
    curves = np.asarray(curves, np.float64)
    k = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * k)


def confidence_change(score: ScoreFn, images: torch.Tensor, maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(Y, O): the explained class's probability on each image and on ``image * map``
    (maps (B, H, W) in [0, 1]), both (B,) float64."""
    rows = np.arange(len(images))
    y = score(images, rows).double().cpu().numpy()
    o = score(images * maps.unsqueeze(1).to(images.dtype), rows).double().cpu().numpy()
    return y, o


def average_drop(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image max(0, Y - O) / Y x 100 (its mean is the average drop, in %)."""
    return np.maximum(0.0, y - o) / np.maximum(y, 1e-12) * 100


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image 100 where O > Y, else 0 (its mean is the increase in confidence, in %)."""
    return np.where(o > y, 100.0, 0.0)


def _check_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks).astype(bool)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps and masks must both be (B, H, W), got {maps.shape} and {masks.shape}")
    return maps, masks


def energy_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's sum inside its mask, (B,) in [0, 1]; NaN for an all-zero map
    (it points nowhere). maps: (B, H, W) >= 0; masks: (B, H, W) bool."""
    maps, masks = _check_masks(maps, masks)
    total = maps.sum((1, 2))
    inside = (maps * masks).sum((1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """1.0 where the map's maximum (the first, in pixel order) lies within ``tolerance`` px
    of the mask, 0.0 where not, NaN for an all-zero map. (B,) float64."""
    maps, masks = _check_masks(maps, masks)
    if tolerance > 0:
        t = torch.from_numpy(masks[:, None].astype(np.float32))
        masks = F.max_pool2d(t, 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0].numpy() > 0
    flat = maps.reshape(len(maps), -1)
    best = flat.argmax(1)
    hit = masks.reshape(len(masks), -1)[np.arange(len(maps)), best].astype(np.float64)
    return np.where(flat.max(1) > 0, hit, np.nan)


def border_band(shape: tuple[int, int], band: float = 0.1) -> np.ndarray:
    """(H, W) bool: the outer frame of width round(band x side) on each side."""
    h, w = shape
    bh, bw = max(1, round(band * h)), max(1, round(band * w))
    frame = np.ones((h, w), bool)
    frame[bh:h - bh, bw:w - bw] = False
    return frame


def border_energy(maps: np.ndarray, band: float = 0.1) -> np.ndarray:
    """Share of each map's sum in the outer band (see `border_band`), (B,); NaN for an
    all-zero map. A map that ignores position puts the band's area share there."""
    maps = np.asarray(maps, np.float64)
    frame = np.broadcast_to(border_band(maps.shape[1:], band), maps.shape)
    return energy_in_mask(maps, frame)


def random_maps(n: int, size: tuple[int, int], grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Baseline maps (n, H, W) float32 in [0, 1]: uniform noise on a ``grid`` (the CAM
    layer's h, w), upsampled bilinearly to ``size`` and min-max scaled per map, like a CAM."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(n, 1, *grid, generator=g)
    up = F.interpolate(noise, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = up.flatten(1).min(1).values[:, None, None]
    high = up.flatten(1).max(1).values[:, None, None]
    return ((up - low) / (high - low + 1e-7)).float()


def lesion_bootstrap(values: np.ndarray, groups: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float | int | None]:
    """Mean of per-image ``values`` (N,) with a percentile interval from resampling whole
    groups (lesions) with replacement. NaN values are left out first.

    Returns {"mean", "low", "high", "n" (images), "n_groups"}; low/high None with < 2 groups."""
    values = np.asarray(values, np.float64)
    groups = np.asarray(groups).astype(str)
    if values.shape != groups.shape:
        raise ValueError(f"values and groups must have the same length, got {values.shape} and {groups.shape}")
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    if len(values) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "n_groups": 0}
    _, gidx = np.unique(groups, return_inverse=True)
    k = int(gidx.max()) + 1
    sums = np.bincount(gidx, weights=values, minlength=k)
    counts = np.bincount(gidx, minlength=k).astype(np.float64)
    out: dict[str, float | int | None] = {"mean": float(values.mean()), "low": None, "high": None,
                                          "n": int(len(values)), "n_groups": k}
    if k >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)  # (n_boot, k)
        means = (draws @ sums) / (draws @ counts)
        tail = (1 - level) / 2 * 100
        out["low"], out["high"] = float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
    return out
