"""Fine-tuning a trained bundle on one's own data: ``dermfuse train DATA --init BUNDLE``
(or ``--init released``, the model that ships with the package).

What carries over, and what is rebuilt:

- the architecture (model name and arguments, input mode, image size) is the bundle's: a
  fine-tune continues *that* network, so `apply_init_architecture` sets those config fields;
- the class list must be the bundle's, in the same order (`check_classes`): a different
  list is a clear error, not a silently re-initialised head;
- the metadata encoder is **extended**, not refitted (`extend_encoder`): the bundle's age
  standardisation (mean, std, median for imputation) and its sex / site levels are kept, so
  every input the pretrained metadata layer knows means what it meant in training; levels
  the new training rows add (a body site the first data set never had) are appended before
  'unknown'. Refitting the age statistics on the new rows would shift every age the trained
  layer sees; dropping levels the new data lacks would throw away trained columns;
- weights (`load_matching`): every tensor whose name and shape match is copied; the
  metadata branch's input layer, whose width grows with the new levels, is rebuilt by
  copying the columns of the features both encoders have (matched by feature name) and
  starting the new columns at zero, so a new level starts with no effect and is learnt.
  Anything else that does not fit is left as initialised and listed in the returned report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from ..data.encode import UNKNOWN, MetadataEncoder
from ..errors import BundleError, ConfigError, DataError
from ..image_size import size_json

__all__ = ["RELEASED", "released_dir", "resolve_init", "apply_init_architecture", "check_classes",
           "extend_encoder", "load_matching", "encoder_summary"]

log = logging.getLogger("dermfuse")

RELEASED = "released"
"""The word ``--init`` takes for the package's released model."""


def released_dir() -> Path:
    """Where released bundles live: ``dermfuse/released/<model id>/`` inside the package."""
    return Path(__file__).resolve().parent / "released"


def resolve_init(spec: str | Path, root: Path | None = None) -> Path:
    """The bundle folder that ``--init`` names: a path, or 'released' (the one bundle under
    `released_dir`, or ``root``). BundleError when there is none, or several to choose from."""
    if str(spec) != RELEASED:
        path = Path(spec)
        if not (path / "bundle.json").is_file():
            raise BundleError(f"--init {spec}: not a bundle folder (expected {path / 'bundle.json'})")
        return path
    root = Path(root) if root is not None else released_dir()
    found = sorted(p.parent for p in root.glob("*/bundle.json")) if root.is_dir() else []
    if not found:
        raise BundleError(f"--init released: no released model is installed (looked for "
                          f"{root}/<model id>/bundle.json); pass a bundle folder instead, e.g. --init runs/x/bundle")
    if len(found) > 1:
        raise BundleError(f"--init released: {len(found)} released models under {root} "
                          f"({', '.join(p.name for p in found)}); name one with --init PATH")
    return found[0]


_ARCH_KEYS = ("image_backbone", "use_meta", "dropout", "batchnorm", "fusion")


def apply_init_architecture(cfg, bundle) -> list[str]:
    """Set ``cfg``'s model and preprocessing fields to the bundle's (in place); returns a line
    per field that changed. A seed ensemble is fine-tuned member by member: ``train.members``
    becomes the bundle's, and member k starts from the bundle's member k. ConfigError for what
    a fine-tune cannot continue (a heatmap-input bundle, whose CAM backbone would have to be
    fine-tuned with it)."""
    info = bundle.info["model"]
    name, kw = info["name"], dict(info["kwargs"])
    wanted: dict[str, Any] = {}
    if name == "ensemble":
        n = int(kw["n_members"])
        if cfg.train.members not in (1, n):
            raise ConfigError(f"--init: the bundle is a seed ensemble of {n}; train.members {cfg.train.members} "
                              f"cannot start from it (leave train.members at 1 or {n})")
        wanted["train.members"] = n
        name, kw = kw["member"], dict(kw["member_kwargs"])
    # what the bundle does at inference carries over: its test-time views and its weights' precision
    wanted.update({"train.tta": bundle.tta, "train.tta_views": bundle.tta_views,
                   "train.weights_dtype": bundle.info.get("weights_dtype", "float32")})
    if bundle.input_mode != "image":
        raise ConfigError(f"--init: the bundle takes {bundle.input_mode!r} input (heatmaps from its own CAM "
                          "backbone); fine-tuning supports image-input bundles only")
    wanted.update({"model.name": name, "model.input": "image", "data.image_size": size_json(bundle.image_size),
                   "data.resize_method": bundle.resize_method})
    if name == "ft_multicnn":
        wanted.update({f"model.{k}": kw[k] for k in _ARCH_KEYS if k in kw})
        wanted.setdefault("model.image_backbone", None)
        wanted.setdefault("model.fusion", "concat")
    changed = []
    for dotted, value in wanted.items():
        section, key = dotted.split(".")
        target = getattr(cfg, section)
        if getattr(target, key) != value:
            changed.append(f"{dotted}: {getattr(target, key)!r} -> {value!r} (from the --init bundle)")
            setattr(target, key, value)
    cfg.model.pretrained = False  # the weights come from the bundle, not from ImageNet
    return changed


def check_classes(data_classes: Sequence[str], bundle_classes: Sequence[str], where: str) -> None:
    """DataError unless the data set's class list is the bundle's, in the same order."""
    if list(data_classes) != list(bundle_classes):
        raise DataError(f"--init: {where} has classes {list(data_classes)}, the bundle {list(bundle_classes)}; "
                        "a fine-tune keeps the bundle's classifier, so the class lists must be the same, in order")


def extend_encoder(base: MetadataEncoder, train_rows: pd.DataFrame) -> MetadataEncoder:
    """A copy of ``base`` with the sex and site levels of ``train_rows`` it lacks added
    (before 'unknown'); its age statistics are kept."""
    fresh = MetadataEncoder().fit(train_rows)
    enc = MetadataEncoder.from_dict(base.to_dict())

    def grow(old: list[str], new: list[str]) -> list[str]:
        kept = [v for v in old if v != UNKNOWN]
        return kept + [v for v in new if v != UNKNOWN and v not in kept] + [UNKNOWN]

    enc.sexes, enc.sites = grow(enc.sexes, fresh.sexes), grow(enc.sites, fresh.sites)
    return enc


def _meta_input_keys(model: nn.Module, meta_dim: int) -> list[str]:
    """Names of 2-D weights that read the metadata vector (in_features == meta_dim)."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features == meta_dim and (
                "meta" in name or name.startswith("net.0")):
            keys.append(f"{name}.weight" if name else "weight")
    return keys


def load_matching(model: nn.Module, bundle, new_features: Sequence[str], member: int = 0) -> dict[str, list[str]]:
    """Copy the bundle classifier's weights into ``model`` where they fit (see the module
    docstring); from a seed-ensemble bundle, its member ``member``'s. ``new_features``: the
    extended encoder's feature names, in order.

    Returns {"loaded": [...], "adapted": [...], "skipped": [...]} (tensor names)."""
    source_net = bundle.model.members[member] if hasattr(bundle.model, "members") else bundle.model
    old_state = source_net.state_dict()
    new_state = model.state_dict()
    old_features = list(bundle.encoder.feature_names)[: bundle.model_meta_dim]
    new_features = list(new_features)
    meta_keys = set(_meta_input_keys(model, len(new_features))) if new_features else set()
    report: dict[str, list[str]] = {"loaded": [], "adapted": [], "skipped": []}
    with torch.no_grad():
        for key, target in new_state.items():
            source = old_state.get(key)
            if source is None:
                report["skipped"].append(key)
            elif source.shape == target.shape and (key not in meta_keys or old_features == new_features):
                target.copy_(source)
                report["loaded"].append(key)
            elif key in meta_keys and source.ndim == 2 and source.shape[0] == target.shape[0] \
                    and source.shape[1] == len(old_features):
                cols = {f: i for i, f in enumerate(old_features)}
                target.zero_()
                for j, f in enumerate(new_features):
                    if f in cols:
                        target[:, j] = source[:, cols[f]]
                report["adapted"].append(key)
            else:
                report["skipped"].append(key)
    model.load_state_dict(new_state)
    if report["skipped"]:
        log.warning("--init: %d tensors did not fit and start from their initial values: %s",
                    len(report["skipped"]), ", ".join(report["skipped"][:8]))
    return report


def encoder_summary(base: MetadataEncoder, enc: MetadataEncoder) -> dict[str, Any]:
    """What `extend_encoder` added, for the run's metrics and log."""
    return {"mode": "extended", "added_sexes": [s for s in enc.sexes if s not in base.sexes],
            "added_sites": [s for s in enc.sites if s not in base.sites],
            "n_features": {"bundle": base.n_features, "now": enc.n_features},
            "age_statistics": "kept from the bundle"}
