"""The heatmap stage of the paper's method: fine-tune the CAM backbone on one split's
training rows, then compute (or reuse from the cache) a heatmap for every row and render
the classifier's input from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..explain.heatmap_input import cached_maps, render_input
from ..image_size import size_json
from ..io import atomic_write, atomic_write_text
from ..models import create_model
from .distributed import is_main_process
from .loop import ArrayDataset, fit

__all__ = ["HeatmapStage", "heatmap_stage"]


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

    run_dir = Path(run_dir)
    cam_dir = run_dir / "cam_backbone"
    name = cfg.cam.backbone
    kwargs: dict[str, Any] = {"num_classes": len(classes), "meta_dim": 0}
    if name == "cnn":
        kwargs["input_size"] = size_json(images.shape[1:3])
    torch.manual_seed(cfg.train.init_seed)  # initial weights independent of what ran before in this process
    cam_model = create_model(name, pretrained=cfg.model.pretrained, **kwargs)
    tcfg = replace(cfg.train, epochs=cfg.cam.epochs, lr=cfg.cam.lr, patience=max(2, cfg.cam.epochs // 2))
    no_meta = np.zeros((len(table), 0), np.float32)

    def ds(idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(np.ascontiguousarray(images[idx]), no_meta[idx], y[idx])

    main = is_main_process()  # under torchrun only rank 0 writes
    if main:
        cam_dir.mkdir(parents=True, exist_ok=True)
        ids = pd.DataFrame({"image_id": table["image_id"].to_numpy()[np.r_[train_idx, val_idx]],
                            "role": ["train"] * len(train_idx) + ["val"] * len(val_idx)})
        atomic_write(run_dir / "cam_training_ids.csv", lambda tmp: ids.to_csv(tmp, index=False))
    res = fit(cam_model, ds(train_idx), ds(val_idx), tcfg, classes, run_dir=cam_dir, resume=resume,
              progress=progress)
    val_ba = res.history[res.best_epoch - 1]["val_balanced_accuracy"]  # of the weights it ends with
    cam_model.eval()
    maps, key, reused = cached_maps(cam_model, images, cache_key, cfg.cam.method, progress)
    inputs = render_input(cfg.model.input, np.asarray(images), maps)
    info = {"name": name, "kwargs": kwargs, "heatmap_cache_key": key, "reused": reused,
            "method": cfg.cam.method, "val_balanced_accuracy": val_ba,
            "weights_source": getattr(cam_model, "weights_source", "random")}
    if main:
        atomic_write_text(cam_dir / "cam_stage.json", json.dumps(info, indent=2))
    return HeatmapStage(inputs, maps, cam_model, info)
