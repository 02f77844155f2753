"""The heatmap stage of the method, without leakage.

For one split (a fold or the holdout): fine-tune the CAM backbone (default
``efficientnet_lite0`` with its offline ImageNet weights) on that split's training rows
only, compute a Grad-CAM heatmap for every row, cache the maps as uint8 under a key of
(CAM backbone weights, image cache key, method), and render what the FT-MultiCNN's image
branch sees: the jet-coloured map (``heatmap``, the paper's input), the map over the image
(``overlay``) or the image times the map (``masked``).

The target class of every map is the CAM backbone's *predicted* class, never the label: at
inference time there is no label, so training inputs must be made the same way."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from .data.cache import cache_root
from .io import atomic_write, atomic_write_text
from .cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, colorize, overlay
from .constants import OVERLAY_ALPHA  # re-exported: dermfuse.heatmaps.OVERLAY_ALPHA
from .transforms import to_input

__all__ = ["CAM_METHODS", "INPUT_MODES", "compute_maps", "render_input", "heatmap_stage", "HeatmapStage"]

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "hirescam": HiResCAM}
INPUT_MODES = ("image", "heatmap", "overlay", "masked")
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
    return _quantize(maps)


def _quantize(maps: np.ndarray) -> np.ndarray:
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


@dataclass
class HeatmapStage:
    inputs: np.ndarray  # (N, H, W, 3) uint8, what the classifier's image branch sees
    maps: np.ndarray  # (N, H, W) float in [0, 1]
    cam_model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)  # name, kwargs, cache key, metrics


def heatmap_stage(cfg, table: pd.DataFrame, y: np.ndarray, classes: list[str], images: np.ndarray,
                  train_idx: np.ndarray, val_idx: np.ndarray, run_dir: Path, cache_key: str,
                  progress: bool = True, resume: bool = False) -> HeatmapStage:
    """Fine-tune the CAM backbone on ``train_idx`` (early stopping on ``val_idx``, both
    training rows of this split), then heatmaps for every row. Writes
    ``cam_training_ids.csv`` (which image_ids trained the backbone) into ``run_dir``."""
    from .config import TrainConfig
    from .metrics import compute_metrics
    from .models import create_model
    from .train import ArrayDataset, fit, predict_proba

    run_dir = Path(run_dir)
    cam_dir = run_dir / "cam_backbone"
    name = cfg.model.cam_backbone
    kwargs: dict[str, Any] = {"num_classes": len(classes), "meta_dim": 0}
    if name == "cnn":
        kwargs["input_size"] = int(images.shape[1])
    torch.manual_seed(cfg.train.seed)  # initial weights independent of what ran before in this process
    cam_model = create_model(name, pretrained=cfg.model.pretrained, **kwargs)
    tcfg = TrainConfig(**{**cfg.train.__dict__, "epochs": cfg.model.cam_epochs, "lr": cfg.model.cam_lr,
                          "patience": max(2, cfg.model.cam_epochs // 2)})
    no_meta = np.zeros((len(table), 0), np.float32)

    def ds(idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(np.ascontiguousarray(images[idx]), no_meta[idx], y[idx])

    from ._distributed import is_main_process

    main = is_main_process()  # under torchrun only rank 0 writes
    if main:
        cam_dir.mkdir(parents=True, exist_ok=True)
        ids = pd.DataFrame({"image_id": table["image_id"].to_numpy()[np.r_[train_idx, val_idx]],
                            "role": ["train"] * len(train_idx) + ["val"] * len(val_idx)})
        atomic_write(run_dir / "cam_training_ids.csv", lambda tmp: ids.to_csv(tmp, index=False))
    fit(cam_model, ds(train_idx), ds(val_idx), tcfg, classes, run_dir=cam_dir, resume=resume, progress=progress)
    val_metrics = compute_metrics(y[val_idx], predict_proba(cam_model, ds(val_idx)), classes)
    cam_model.eval()
    maps, key, reused = cached_maps(cam_model, images, cache_key, cfg.model.cam_method, progress)
    inputs = render_input(cfg.model.input, np.asarray(images), maps)
    info = {"name": name, "kwargs": kwargs, "heatmap_cache_key": key, "reused": reused,
            "method": cfg.model.cam_method, "val_balanced_accuracy": val_metrics["balanced_accuracy"],
            "weights_source": getattr(cam_model, "weights_source", "random")}
    if main:
        atomic_write_text(cam_dir / "cam_stage.json", json.dumps(info, indent=2))
    return HeatmapStage(inputs, maps, cam_model, info)
