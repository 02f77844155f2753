"""Run configuration: a few nested dataclasses with commented defaults, loaded from YAML,
overridden from the command line (``section.key=value``) and written into every run folder.
Unknown keys are an error, and so is a value outside a field's closed set of choices (the
``Literal`` types below, which the CLI's ``choices=`` come from too).

Version 2 (``config_version: 2``, written into every saved config) renamed some names;
a config without ``config_version`` is version 1 and is read with its old meaning:

- ``data.split``: ``lesion`` (and ``auto``) -> ``grouped`` (by patient where a data set
  has patient ids, else by lesion), ``image`` -> ``image-leaky``; in version 2 ``lesion``
  and ``patient`` group by exactly that id;
- the top-level ``seed`` -> ``data.split_seed``; ``train.seed`` -> ``train.init_seed``;
- ``model.cam_backbone|cam_method|cam_epochs|cam_lr`` -> the ``cam`` section.

Overrides (``--set``) take version-2 values; the renamed keys are still accepted there."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .image_size import parse_size, size_json

__all__ = [
    "read_yaml",
    "CONFIG_VERSION",
    "V1_SPLIT_NAMES",
    "SplitName",
    "InputMode",
    "CamMethod",
    "ResizeMethod",
    "Balance",
    "Schedule",
    "EarlyStopping",
    "AugmentOn",
    "Device",
    "CalibrationMode",
    "Fusion",
    "OptimizerName",
    "DataConfig",
    "ModelConfig",
    "CamConfig",
    "TrainConfig",
    "RunConfig",
    "choices",
    "check_values",
    "load_config",
    "save_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
]


CONFIG_VERSION = 2
"""The config layout this code writes; see the module docstring for what changed."""

SplitName = Literal["grouped", "lesion", "patient", "image-leaky"]
"""grouped: patient where a data set has patient ids, else lesion (rows sharing either id
are one group); lesion / patient: exactly that id; image-leaky: every image its own group
(the paper's leaky image-level protocol, for comparison only)."""
InputMode = Literal["image", "heatmap", "overlay", "masked"]  # what the image branch sees
CamMethod = Literal["gradcam", "gradcam++", "layercam", "hirescam"]
ResizeMethod = Literal["nearest", "bilinear", "bicubic", "lanczos"]
Balance = Literal["weighted-loss", "oversample", "undersample", "none"]
Schedule = Literal["none", "cosine", "plateau"]
EarlyStopping = Literal["balanced_accuracy", "loss", "none"]
AugmentOn = Literal["auto", "workers", "device"]
Device = Literal["auto", "cpu", "cuda"]
CalibrationMode = Literal["none", "temperature", "prior-temperature", "balanced-temperature"]
Fusion = Literal["concat", "metablock"]  # ft_multicnn: how the metadata meets the image features
WeightsDtype = Literal["float32", "float16"]  # how a bundle stores its weights (the model computes in float32)
OptimizerName = Literal["adam", "adamw"]  # adam: weight_decay is an L2 term; adamw: decoupled, not on biases/norms


@dataclass(slots=True)  # slots: setting a misspelt or renamed field (cfg.seed) is an error
class DataConfig:
    path: str = ""  # data set folder or CSV ("" = synthetic demo data)
    format: str | None = None  # None = detect from the CSV columns
    column_map: dict[str, str] | None = None  # format 'generic': canonical name -> CSV column
    image_size: int | list[int] | None = None  # a side (square) or [height, width]; None = the model's default
    resize_method: ResizeMethod = "bilinear"
    split: SplitName = "grouped"  # see SplitName; version-1 'lesion' is this one
    split_seed: int = 0  # which rows go to test / val / which fold (version 1: the top-level seed)
    test_fraction: float = 0.2  # holdout part when not cross-validating
    folds: int = 5  # for cross-validation
    val_fraction: float = 0.1  # carved out of the training rows for early stopping
    check_images: bool = True  # decode every image once during cleaning


@dataclass(slots=True)
class ModelConfig:
    name: str = "ft_multicnn"
    pretrained: bool = True  # ImageNet weights where they can be had offline
    weights: str | None = None  # a local .safetensors / .pth state dict for the backbone
    image_backbone: str | None = None  # ft_multicnn: None = the paper's three conv blocks
    use_meta: bool = True  # ft_multicnn: False drops the metadata branch (ablation)
    fusion: Fusion = "concat"  # ft_multicnn: concat (the paper's) | metablock (metadata gates the image features)
    dropout: float = 0.3
    batchnorm: bool = True
    input: InputMode = "image"  # heatmap | overlay | masked: rendered from the cam section's maps
    init: str | None = None  # fine-tune from this bundle folder (or "released"): see dermfuse.training.finetune


@dataclass(slots=True)
class CamConfig:
    """The CAM backbone that makes the heatmaps when model.input is not 'image'. It sees
    the classifier's own input (data.image_size): there is no separate CAM image size."""

    backbone: str = "efficientnet_lite0"  # a registered model, fine-tuned on each split's training rows
    method: CamMethod = "gradcam"
    epochs: int = 5  # fine-tuning epochs of the CAM backbone (per fold)
    lr: float = 5e-4


@dataclass(slots=True)
class TrainConfig:
    epochs: int = 50  # the paper's 50
    batch_size: int = 32  # the paper's 32
    lr: float = 1e-3  # Adam
    optimizer: OptimizerName = "adam"  # the paper's Adam; adamw decouples the weight decay (Loshchilov & Hutter)
    weight_decay: float = 0.0  # adam: L2 in the gradient; adamw: decoupled, on weight matrices and kernels only
    schedule: Schedule = "none"
    warmup_epochs: int = 0
    balance: Balance = "weighted-loss"
    augment: bool = True  # the paper's recipe (dermfuse.preprocess)
    augment_strength: float = 1.0  # scales the recipe's magnitudes; 1 = the paper's (dermfuse tune searches it)
    augment_on: AugmentOn = "auto"  # workers (per image, in the data loader) | device (per batch) | auto: device on CUDA
    early_stopping: EarlyStopping = "balanced_accuracy"
    patience: int = 8
    amp: bool = True  # used on CUDA only
    channels_last: bool = True  # NHWC memory format while training: faster on CPU (docs/performance.md), same results
    num_workers: int = 0
    init_seed: int = 0  # weight initialisation, shuffling, augmentation (version 1: train.seed)
    device: Device = "auto"
    max_steps_per_epoch: int | None = None  # cap for quick runs (demo, tests)
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights (dermfuse.training.ema)
    mixup_alpha: float = 0.0  # > 0: mixup of each training batch, lam ~ Beta(alpha, alpha) (dermfuse.training.mixing)
    cutmix_alpha: float = 0.0  # > 0: CutMix likewise; with both > 0 each batch is one or the other
    distill_targets: str | None = None  # a `dermfuse teach` CSV: teachers' probabilities for the training rows (dermfuse.runs.teach)
    distill_weight: float = 0.5  # with distill_targets: the soft targets' share of the loss
    distill_temperature: float = 2.0  # with distill_targets: the softening of teacher and student
    tta: bool = False  # average predictions over flips at evaluation
    tta_views: int = 0  # with tta: the first N of identity, h-flip, v-flip, hv-flip, transpose; 0 = all the shape has (5 square, 4 not)
    calibration: CalibrationMode = "none"  # fitted on the validation part
    members: int = 1  # > 1: a seed ensemble of that many models (init seeds init_seed, init_seed+1, ...), probabilities averaged
    weights_dtype: WeightsDtype = "float32"  # float16: the bundle stores half-precision weights (half the file); scored as stored


@dataclass(slots=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/latest"
    config_version: int = CONFIG_VERSION  # a saved config without it is version 1


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "cam": CamConfig, "train": TrainConfig}

_RENAMED = {  # version-1 key -> version-2 key (dotted)
    "seed": "data.split_seed",
    "train.seed": "train.init_seed",
    "model.cam_backbone": "cam.backbone",
    "model.cam_method": "cam.method",
    "model.cam_epochs": "cam.epochs",
    "model.cam_lr": "cam.lr",
}
V1_SPLIT_NAMES = {"lesion": "grouped", "auto": "grouped", "image": "image-leaky"}
"""Version-1 data.split names (configs, plan.json) -> version 2; others are unchanged."""


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The allowed values of field ``name`` of config dataclass ``cls`` (its Literal's
    arguments), e.g. ``choices(DataConfig, "split")``; () for an open field."""
    return _literal_fields(cls).get(name, ())


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> dict[str, tuple[str, ...]]:
    return {name: get_args(hint) for name, hint in get_type_hints(cls).items() if get_origin(hint) is Literal}


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """The one check of a closed-set value: ConfigError naming the field, the value and
    what is allowed (and the new name of a version-1 split)."""
    if value in allowed:
        return
    hint = ""
    if key.endswith("data.split") and value in V1_SPLIT_NAMES:
        hint = (f" ({value!r} is a version-1 name: it is {V1_SPLIT_NAMES[value]!r} now"
                + ("; 'lesion' groups by lesion id only" if value == "lesion" else "") + ")")
    raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {', '.join(map(repr, allowed))}{hint}")


def check_values(cfg: RunConfig) -> RunConfig:
    """Check every closed-set field of ``cfg`` (the Literal-typed ones); returns ``cfg``.
    Runs whenever a config is built, loaded or overridden, and before a run starts."""
    for section in _SECTIONS:
        obj = getattr(cfg, section)
        for name, allowed in _literal_fields(type(obj)).items():
            _check_choice(f"{section}.{name}", getattr(obj, name), allowed)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain JSON/YAML-able data."""
    return dataclasses.asdict(cfg)


@functools.lru_cache(maxsize=None)
def _optional_scalars(cls: type) -> dict[str, type]:
    """Fields typed ``int | None`` (or float / str / bool): their scalar type, so that a value
    given for a field whose default is None is checked as the others are."""
    out = {}
    for name, hint in get_type_hints(cls).items():
        args = [a for a in get_args(hint) if a is not type(None)]
        if type(None) in get_args(hint) and len(args) == 1 and args[0] in (int, float, str, bool):
            out[name] = args[0]
    return out


def _coerce(key: str, value: Any, default: Any, kind: type | None = None) -> Any:
    """``value`` as the type of the field's default, or ``kind`` for a field whose default is
    None (YAML reads ``1e-3`` as a string; ``--set data.split_seed=abc`` is an error)."""
    if value is None or dataclasses.is_dataclass(default) or (default is None and kind is None):
        return value
    kind = type(default) if default is not None else kind
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


def _coerce_image_size(key: str, value: Any) -> int | list[int] | None:
    """data.image_size: a side in px (a square, the paper's squash) or [height, width]
    (e.g. [120, 160], HAM10000's 4:3); '120x160' from the command line. Kept as an int or a
    list, so the run's config.yaml stays plain YAML."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "~", "none")):
        return None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = yaml.safe_load(value)  # --set data.image_size=[120,160]
        except yaml.YAMLError:
            pass
    try:
        return size_json(parse_size(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a side in px (128) or [height, width] (e.g. [120, 160]), "
                          f"got {value!r}") from None


_FIELD_COERCERS = {"data.image_size": _coerce_image_size}  # fields of more than one type


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    renamed = [f"{k} is {_RENAMED[_dotted(where, k)]}" for k in unknown if _dotted(where, k) in _RENAMED]
    if renamed:
        raise ConfigError(f"{where}: version-1 key(s) in a config_version {CONFIG_VERSION} config: "
                          f"{'; '.join(renamed)} now")
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    defaults, kinds = cls(), _optional_scalars(cls)
    return cls(**{k: _FIELD_COERCERS[f"{where}.{k}"](f"{where}.{k}", v) if f"{where}.{k}" in _FIELD_COERCERS
                  else _coerce(f"{where}.{k}", v, getattr(defaults, k), kinds.get(k)) for k, v in values.items()})


def _dotted(where: str, key: str) -> str:
    return key if where == "config" else f"{where}.{key}"


def _upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config dict in version-2 names, with the same meaning."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for old, new in _RENAMED.items():
        *old_sec, old_key = old.split(".")
        src = d.get(old_sec[0]) if old_sec else d
        if not isinstance(src, dict) or old_key not in src:
            continue
        value = src.pop(old_key)
        new_sec, new_key = new.split(".")
        dst = d.get(new_sec)
        dst = d[new_sec] = dict(dst) if isinstance(dst, dict) else {}
        if new_key in dst:
            raise ConfigError(f"config: both {old} (version 1) and {new} are set")
        dst[new_key] = value
    data = d.get("data")
    if isinstance(data, dict) and isinstance(data.get("split"), str):
        data["split"] = V1_SPLIT_NAMES.get(data["split"], data["split"])
    return d


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested dicts, version 1 (no ``config_version``) or 2; unknown
    keys, mistyped values and values outside a field's choices raise ConfigError."""
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(d).__name__}")
    d = dict(d or {})
    version = d.pop("config_version", 1)
    if version == 1:
        d = _upgrade_v1(d)
    elif version != CONFIG_VERSION:
        raise ConfigError(f"config_version {version!r}: this dermfuse reads versions 1 and {CONFIG_VERSION}")
    sections = {}
    for name, cls in _SECTIONS.items():
        sections[name] = _build(cls, d.pop(name, {}) or {}, name)
    return check_values(_build(RunConfig, {**d, **sections}, "config"))


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config file (None gives the defaults)."""
    if path is None:
        return RunConfig()
    return config_from_dict(read_yaml(path, "config file"))


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML of ``path`` ({} for an empty file); ConfigError names a missing file
    (as ``what``) or invalid YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Apply ``section.key=value`` overrides (or a {"section.key": value} dict) in place.
    Values are version-2 ones; a renamed key (``train.seed``) sets its new one."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for dotted, value in items:
        dotted = _RENAMED.get(dotted, dotted)
        if dotted == "config_version":
            raise ConfigError("config_version cannot be overridden: it says how a config file was written")
        parts = dotted.split(".")
        target: Any = cfg
        for p in parts[:-1]:
            if not hasattr(target, p) or not dataclasses.is_dataclass(getattr(target, p)):
                raise ConfigError(f"unknown config section {p!r} in {dotted!r}")
            target = getattr(target, p)
        key = parts[-1]
        if key not in {f.name for f in dataclasses.fields(target)}:
            raise ConfigError(f"unknown config key {dotted!r}")
        if dotted in _FIELD_COERCERS:
            setattr(target, key, _FIELD_COERCERS[dotted](dotted, value))
            continue
        current, default = getattr(target, key), getattr(type(target)(), key)
        kind = _optional_scalars(type(target)).get(key)  # for a field whose default is None
        if isinstance(value, str) and (kind is str or isinstance(default, str)):
            value = None if kind is str and value.lower() in ("", "null", "~") else value  # a path "007" stays text
        elif isinstance(value, str) and not isinstance(current, str):
            value = yaml.safe_load(value)  # "7" -> 7, "false" -> False; _coerce checks the type
        setattr(target, key, _coerce(dotted, value, default if default is not None else current, kind))
    return check_values(cfg)


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()
