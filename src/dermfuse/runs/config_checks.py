"""What a run config means before any image is read: the checks a run's values must
pass, the model's keyword arguments, its image size and the split's grouping."""

from __future__ import annotations

import math
from typing import Any

from ..config import RunConfig, check_values
from ..data.splits import SPLIT_GROUPING, SPLIT_LABELS
from ..errors import ConfigError
from ..image_size import Size, canonical_size, size_hw, size_json
from ..models import model_spec

__all__ = ["check_config", "model_kwargs", "image_size_for", "split_by", "split_label"]


def split_label(split: str) -> str:
    """Human label of a split protocol (data.split), e.g. 'image-level (leaky)'."""
    return SPLIT_LABELS[split]


def split_by(split: str) -> str:
    """The grouping (`group_ids`'s ``by``) of a split protocol (data.split)."""
    return SPLIT_GROUPING[split]


def model_kwargs(cfg: RunConfig, num_classes: int, meta_dim: int) -> dict[str, Any]:
    """Keyword arguments that rebuild the configured architecture (weights excluded)."""
    m = cfg.model
    kw: dict[str, Any] = {"num_classes": num_classes, "meta_dim": meta_dim}
    if m.name == "cnn" or (m.name == "ft_multicnn" and m.image_backbone in (None, "", "cnn")):
        kw["input_size"] = size_json(image_size_for(cfg))  # the flatten layer fixes the input size
    if m.name == "ft_multicnn":
        kw.update(use_meta=m.use_meta, dropout=m.dropout, batchnorm=m.batchnorm)
        if m.fusion != "concat":  # absent = concat, so bundles from before the option rebuild as they were
            kw["fusion"] = m.fusion
        if m.image_backbone and m.image_backbone != "cnn":
            kw["image_backbone"] = m.image_backbone
    return kw


def image_size_for(cfg: RunConfig) -> Size:
    """The classifier's input: an int side (a square) or (height, width); see `dermfuse.image_size`."""
    if cfg.data.image_size:
        return canonical_size(cfg.data.image_size)
    name = cfg.model.image_backbone if cfg.model.name == "ft_multicnn" and cfg.model.image_backbone else cfg.model.name
    size = model_spec(name).default_size
    return int(size or 128)


def check_config(cfg: RunConfig) -> None:
    """Fail fast, before any image is decoded, on names and values a run cannot use."""
    check_values(cfg)  # every closed-set field (split, input, cam.method, calibration, ...)
    model_spec(cfg.model.name)
    if cfg.model.image_backbone and cfg.model.image_backbone != "cnn":
        model_spec(cfg.model.image_backbone)
    if cfg.model.input != "image":
        model_spec(cfg.cam.backbone)
    if not 0 <= cfg.data.test_fraction < 1 or not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError("data.test_fraction (0 = no test part: train on all rows) and data.val_fraction "
                          "must be in [0, 1)")
    if cfg.train.calibration != "none" and cfg.data.val_fraction == 0:
        raise ConfigError("train.calibration is fitted on the validation part: set data.val_fraction > 0")
    if cfg.train.members < 1:
        raise ConfigError(f"train.members {cfg.train.members!r}: expected 1 (one model) or more (a seed ensemble)")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1 or cfg.train.lr <= 0:
        raise ConfigError("train.epochs and train.batch_size must be >= 1 and train.lr > 0")
    if not (cfg.train.weight_decay >= 0 and math.isfinite(cfg.train.weight_decay)):
        raise ConfigError(f"train.weight_decay: expected a finite value >= 0, got {cfg.train.weight_decay!r}")
    try:  # a config built in Python skips the YAML / --set coercion
        small = cfg.data.image_size is not None and min(size_hw(cfg.data.image_size)) < 8
    except ValueError:
        raise ConfigError(f"data.image_size: {cfg.data.image_size!r}; expected a side in px (128) or "
                          "[height, width] (e.g. [120, 160])") from None
    if small:
        raise ConfigError(f"data.image_size: {cfg.data.image_size!r} px; expected at least 8 a side (a square "
                          "side, or [height, width]), or none for the model's default")
    if isinstance(cfg.train.tta_views, bool) or not isinstance(cfg.train.tta_views, int) \
            or not 0 <= cfg.train.tta_views <= 5:
        raise ConfigError(f"train.tta_views: expected 0 (every view) or 1-5 (identity, h-flip, v-flip, hv-flip, "
                          f"transpose: the first N), got {cfg.train.tta_views!r}")
    if cfg.train.tta_views and not cfg.train.tta:
        raise ConfigError(f"train.tta_views {cfg.train.tta_views} needs train.tta: true (without it there is "
                          "one view)")
    if cfg.train.tta_views == 5 and cfg.data.image_size is not None and len(set(size_hw(cfg.data.image_size))) == 2:
        raise ConfigError(f"train.tta_views 5: a {cfg.data.image_size} input has four views (no transpose of a "
                          "rectangle); use 4 or 0")
    if cfg.train.max_steps_per_epoch is not None and cfg.train.max_steps_per_epoch < 1:
        raise ConfigError(f"train.max_steps_per_epoch: expected >= 1 or none, got {cfg.train.max_steps_per_epoch!r}")
