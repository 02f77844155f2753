"""Train one variant on one split and score its test rows: the one training path that
holdout runs (``dermfuse train``), cross-validation folds and ablations all take.

The caller owns the split and the classifier's input images (rendered heatmaps where the
variant needs them); this module fits the metadata encoder on the training rows, builds
the model (a seed ensemble for ``train.members`` > 1, or the bundle ``model.init`` names),
fits it with early stopping on the validation rows, fits the calibration there, and
scores the test rows through the inference engine, `dermfuse.inference.predictor`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from torch import nn

from ..config import RunConfig
from ..constants import HEADLINE_METRICS
from ..data.encode import MetadataEncoder
from ..evaluation.calibrate import Calibration, fit_calibration
from ..evaluation.metrics import compute_metrics
from ..inference.bundle import round_weights
from ..inference.predictor import Predictor
from ..models import create_model, model_spec
from ..models.ensemble import Ensemble
from ..training.distributed import is_main_process
from ..training.loop import EPOCH_BASE, ArrayDataset, FitResult, fit
from .config_checks import model_kwargs
from .teach import load_soft_targets

__all__ = ["Trained", "train_variant", "takes_meta", "pretrainable", "score", "headline", "calibrated_metrics"]

log = logging.getLogger("dermfuse")
console = Console(stderr=True)


def takes_meta(cfg: RunConfig) -> bool:
    """Whether the configured classifier reads metadata: its model takes it and, for the
    FT-MultiCNN, ``model.use_meta`` is on. Without it the classifier gets no metadata
    columns at all (meta_dim 0), and its bundle asks for none."""
    return model_spec(cfg.model.name).uses_meta and (cfg.model.name != "ft_multicnn" or cfg.model.use_meta)


def pretrainable(cfg: RunConfig) -> bool:
    """Whether the configured model's image part could start from pretrained weights (a
    backbone with a pretrained source), so that starting from random ones is worth a warning."""
    m = cfg.model
    if m.name == "ft_multicnn":
        return bool(m.image_backbone) and m.image_backbone != "cnn"
    spec = model_spec(m.name)
    return spec.uses_image and spec.pretrained_source is not None


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}


def calibration_summary(calibration: Calibration) -> dict[str, Any]:
    return {k: v for k, v in calibration.to_dict().items() if k != "log_prior"}


def calibrated_metrics(y: np.ndarray, raw: np.ndarray, calibration: Calibration,
                       classes: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Calibrated probabilities and their metrics; with a non-identity calibration the
    metrics also hold the uncalibrated headline numbers and the fitted parameters."""
    proba = calibration.apply(raw)
    metrics = compute_metrics(y, proba, classes)
    if not calibration.is_identity:
        metrics["uncalibrated"] = headline(compute_metrics(y, raw, classes))
        metrics["calibration"] = calibration_summary(calibration)
    return proba, metrics


def score(model: nn.Module, classes: list[str], encoder: MetadataEncoder, images: np.ndarray,
          meta: np.ndarray, tta: bool, tta_views: int = 0) -> np.ndarray:
    """Uncalibrated probabilities (N, C) float32 of ``model`` for the classifier's own inputs
    (N, S, S, 3) uint8 (heatmaps already rendered) and metadata (N, meta_dim): the engine's
    views and averaging, as `dermfuse evaluate` and `predict` compute them."""
    engine = Predictor(model, classes, encoder, images.shape[1:3], meta_dim=meta.shape[1], tta=tta,
                       tta_views=tta_views)
    return engine.run(images, meta, calibrated=False).proba


@dataclass
class Trained:
    """What `train_variant` returns."""

    model: nn.Module  # the classifier (an `Ensemble` for train.members > 1), in eval mode
    encoder: MetadataEncoder  # fitted on the training rows (or extended from model.init's)
    meta_dim: int  # metadata columns the classifier reads (0: none)
    kwargs: dict[str, Any]  # model_kwargs: what rebuilds the architecture
    fit: FitResult  # member 0's for an ensemble
    calibration: Calibration = field(default_factory=Calibration)
    raw: np.ndarray | None = None  # (n_test, C) uncalibrated test probabilities
    proba: np.ndarray | None = None  # (n_test, C) calibrated
    metrics: dict[str, Any] = field(default_factory=dict)  # test metrics (empty without test rows)
    warnings: list[str] = field(default_factory=list)
    member_metrics: list[dict[str, Any]] = field(default_factory=list)  # each member alone
    member_proba: list[np.ndarray] = field(default_factory=list)

    @property
    def weights_source(self) -> str:
        return getattr(self.model, "weights_source", "random")


def _builder(cfg: RunConfig, kwargs: dict[str, Any], warnings: list[str], init: Any,
             features: list[str]) -> Callable[[int | None], nn.Module]:
    """A function that builds one fresh classifier: ``build(k)`` for member k of a seed
    ensemble (None: the single model); from an --init ensemble, member k's weights."""
    init_bundle, init_info = init if init is not None else (None, None)

    def build(k: int | None = None) -> nn.Module:
        weights, build_kw = cfg.model.weights, dict(kwargs)
        if cfg.model.name == "ft_multicnn" and "image_backbone" in kwargs and weights:
            build_kw["backbone_weights"], weights = weights, None  # the file is the backbone's
        net = create_model(cfg.model.name, pretrained=cfg.model.pretrained, weights=weights, **build_kw)
        if init_bundle is not None:
            from ..training.finetune import load_matching

            done = load_matching(net, init_bundle, features, member=k or 0)
            summary = {key: len(v) for key, v in done.items()} | {"skipped_names": done["skipped"]}
            if not k:  # the single model, or member 0
                init_info["weights"] = summary
            if k is not None:
                init_info.setdefault("weights_by_member", {})[str(k)] = summary
            net.weights_source = f"init: {cfg.model.init}"
        elif cfg.model.pretrained and pretrainable(cfg) and getattr(net, "weights_source", "random") == "random":
            text = f"{cfg.model.name}: no pretrained weights available offline; trained from random weights."
            if text not in warnings:
                warnings.append(text)
                log.warning(text)
        return net

    return build


def _fit_one(cfg: RunConfig, build: Callable[[int | None], nn.Module], k: int | None, train: ArrayDataset,
             val: ArrayDataset, classes: list[str], run_dir: Path, resume: bool,
             progress: bool) -> tuple[nn.Module, FitResult]:
    """One network: the single model (k None, seed train.init_seed, checkpoint in run_dir) or
    member k of a seed ensemble (seed train.init_seed + k, checkpoint in run_dir/members/k; a
    finished checkpoint there is loaded, not trained again)."""
    seed = cfg.train.init_seed + (k or 0)
    if k is not None and progress and is_main_process():
        console.print(f"member {k + 1}/{cfg.train.members} (seed {seed})")
    torch.manual_seed(seed)  # the initial weights of what pretrained weights leave out
    net = build(k)
    folder = run_dir if k is None else run_dir / "members" / str(k)
    return net, fit(net, train, val, replace(cfg.train, init_seed=seed), classes, run_dir=folder, resume=resume,
                    progress=progress)


def train_variant(cfg: RunConfig, table: pd.DataFrame, y: np.ndarray, classes: list[str], images: np.ndarray,
                  train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray, run_dir: str | Path, *,
                  encoder: MetadataEncoder | None = None, init: tuple[Any, dict[str, Any]] | None = None,
                  member: int | None = None, resume: bool = False, progress: bool = True) -> Trained:
    """Fit the variant ``cfg`` describes on ``train_idx`` (early stopping on ``val_idx``)
    and score ``test_idx`` (which may be empty).

    images: (N, S, S, 3) uint8, what the classifier sees for every row of ``table``;
    y: (N,) class indices. ``encoder``: a metadata encoder to use as it is (default: one
    fitted on the training rows). ``init``: (bundle, info) of `dermfuse.training.finetune`
    to start from. ``member`` = k trains member k of a seed ensemble alone and scores
    nothing. Checkpoints and history go to ``run_dir``."""
    run_dir = Path(run_dir)
    encoder = encoder if encoder is not None else MetadataEncoder().fit(table.iloc[train_idx])
    meta = encoder.transform(table) if takes_meta(cfg) else np.zeros((len(table), 0), np.float32)
    meta_dim = meta.shape[1]
    kwargs = model_kwargs(cfg, len(classes), meta_dim)
    warnings: list[str] = []
    build = _builder(cfg, kwargs, warnings, init, encoder.feature_names if meta_dim else [])

    def ds(idx: np.ndarray, soft: np.ndarray | None = None) -> ArrayDataset:
        return ArrayDataset(np.ascontiguousarray(images[idx]), meta[idx], y[idx], soft=soft)

    def probs(net: nn.Module, idx: np.ndarray) -> np.ndarray:
        return score(net, classes, encoder, images[idx], meta[idx], cfg.train.tta, cfg.train.tta_views)

    calibrate = cfg.train.calibration != "none"
    soft = None  # with train.distill_targets: the teachers' probabilities for the training rows (dermfuse teach)
    if cfg.train.distill_targets:
        soft = load_soft_targets(cfg.train.distill_targets, table["image_id"].iloc[train_idx].astype(str).tolist(),
                                 classes)
    train, val = ds(train_idx, soft), ds(val_idx)
    if member is not None:
        net, res = _fit_one(cfg, build, member, train, val, classes, run_dir, resume, progress)
        return Trained(net.eval(), encoder, meta_dim, kwargs, res, warnings=warnings)
    ks = [None] if cfg.train.members == 1 else list(range(cfg.train.members))
    nets, fits, val_p, test_p, member_metrics, member_proba = [], [], [], [], [], []
    for k in ks:
        net, res = _fit_one(cfg, build, k, train, val, classes, run_dir, resume, progress)
        round_weights(net, cfg.train.weights_dtype)  # scored (and calibrated) as the bundle will store it
        nets.append(net)
        fits.append(res)
        val_p.append(probs(net, val_idx) if calibrate else None)
        test_p.append(probs(net, test_idx) if len(test_idx) else None)
        if k is not None and len(test_idx):  # each member alone, as a run with members: 1 and its seed
            own = fit_calibration(val_p[-1], y[val_idx], y[train_idx], cfg.train.calibration) if calibrate \
                else Calibration()
            p, m = calibrated_metrics(y[test_idx], test_p[-1], own, classes)
            member_proba.append(p)
            member_metrics.append({"member": k, "seed": cfg.train.init_seed + k, "best_epoch": res.best_epoch, "epoch_base": EPOCH_BASE,
                                   **headline(m)})
    model = nets[0] if len(nets) == 1 else Ensemble(nets)
    mean = (lambda ps: ps[0] if len(ps) == 1 else np.mean(ps, axis=0, dtype=np.float64).astype(np.float32))
    calibration = Calibration()
    if calibrate:
        calibration = fit_calibration(mean(val_p), y[val_idx], y[train_idx], cfg.train.calibration)
        log.info("calibration on %d validation images: prior shift %.2f, temperature %.3f",
                 len(val_idx), calibration.prior_shift, calibration.temperature)
    out = Trained(model.eval(), encoder, meta_dim, kwargs, fits[0], calibration, warnings=warnings,
                  member_metrics=member_metrics, member_proba=member_proba)
    if len(test_idx):
        out.raw = mean(test_p)
        out.proba, out.metrics = calibrated_metrics(y[test_idx], out.raw, calibration, classes)
    return out
