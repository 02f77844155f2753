"""Run configuration: a few nested dataclasses with commented defaults, loaded from YAML,
overridden from the command line (``section.key=value``) and written into every run folder.
Unknown keys are an error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "save_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
]


@dataclass
class DataConfig:
    path: str = ""  # data set folder or CSV ("" = synthetic demo data)
    format: str | None = None  # None = detect from the CSV columns
    column_map: dict[str, str] | None = None  # format 'generic': canonical name -> CSV column
    image_size: int | None = None  # None = the model's default (128 for the paper's models)
    resize_method: str = "bilinear"
    split: str = "lesion"  # lesion | patient | auto (grouped) or image (image-level, leaky)
    test_fraction: float = 0.2  # holdout part when not cross-validating
    folds: int = 5  # for cross-validation
    val_fraction: float = 0.1  # carved out of the training rows for early stopping
    check_images: bool = True  # decode every image once during cleaning


@dataclass
class ModelConfig:
    name: str = "ft_multicnn"
    pretrained: bool = True  # ImageNet weights where they can be had offline
    weights: str | None = None  # a local .safetensors / .pth state dict for the backbone
    image_backbone: str | None = None  # ft_multicnn: None = the paper's three conv blocks
    use_meta: bool = True  # ft_multicnn: False drops the metadata branch (ablation)
    dropout: float = 0.3
    batchnorm: bool = True
    input: str = "image"  # image | heatmap | overlay | masked (what the image branch sees)
    cam_backbone: str = "efficientnet_lite0"  # fine-tuned to make heatmaps (input != image)
    cam_method: str = "gradcam"  # gradcam | gradcam++ | layercam | hirescam
    cam_epochs: int = 5  # fine-tuning epochs of the CAM backbone (per fold)
    cam_lr: float = 5e-4
    init: str | None = None  # fine-tune from this bundle folder (or "released"): see dermfuse.training.finetune


@dataclass
class TrainConfig:
    epochs: int = 50  # the paper's 50
    batch_size: int = 32  # the paper's 32
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    schedule: str = "none"  # none | cosine | plateau
    warmup_epochs: int = 0
    balance: str = "weighted-loss"  # weighted-loss | oversample | undersample | none
    augment: bool = True  # the paper's recipe (dermfuse.preprocess)
    augment_strength: float = 1.0  # scales the recipe's magnitudes; 1 = the paper's (dermfuse tune searches it)
    augment_on: str = "auto"  # workers (per image, in the data loader) | device (per batch) | auto: device on CUDA
    early_stopping: str = "balanced_accuracy"  # balanced_accuracy | loss | none
    patience: int = 8
    amp: bool = True  # used on CUDA only
    channels_last: bool = True  # NHWC memory format while training: faster on CPU (docs/performance.md), same results
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    max_steps_per_epoch: int | None = None  # cap for quick runs (demo, tests)
    label_smoothing: float = 0.0
    tta: bool = False  # average predictions over flips at evaluation
    calibration: str = "none"  # none | temperature | prior-temperature, fitted on the validation part
    members: int = 1  # > 1: a seed ensemble of that many models (seeds seed, seed+1, ...), probabilities averaged


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/latest"
    seed: int = 0


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain JSON/YAML-able data."""
    return dataclasses.asdict(cfg)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the field's default (YAML reads ``1e-3`` as a string)."""
    if value is None or default is None or dataclasses.is_dataclass(default):
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if isinstance(value, kind):
        return value
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    try:
        return kind(float(value)) if kind is int and isinstance(value, str) and "." in value else kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    defaults = cls()
    return cls(**{k: _coerce(f"{where}.{k}", v, getattr(defaults, k)) for k, v in values.items()})


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested dicts; unknown keys and mistyped values raise ConfigError."""
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(d).__name__}")
    d = dict(d or {})
    sections = {}
    for name, cls in _SECTIONS.items():
        sections[name] = _build(cls, d.pop(name, {}) or {}, name)
    return _build(RunConfig, {**d, **sections}, "config")


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config file (None gives the defaults)."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return config_from_dict(data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))




def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Apply ``section.key=value`` overrides (or a {"section.key": value} dict) in place."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for dotted, value in items:
        parts = dotted.split(".")
        target: Any = cfg
        for p in parts[:-1]:
            if not hasattr(target, p) or not dataclasses.is_dataclass(getattr(target, p)):
                raise ConfigError(f"unknown config section {p!r} in {dotted!r}")
            target = getattr(target, p)
        key = parts[-1]
        if key not in {f.name for f in dataclasses.fields(target)}:
            raise ConfigError(f"unknown config key {dotted!r}")
        current = getattr(target, key)
        if isinstance(value, str) and not isinstance(current, str):
            value = yaml.safe_load(value)  # "7" -> 7, "false" -> False; _coerce checks the type
        default = getattr(type(target)(), key)
        setattr(target, key, _coerce(dotted, value, default if default is not None else current))
    return cfg


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()
