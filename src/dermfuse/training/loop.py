"""The training loop: ``fit()`` runs ``train_one_epoch()`` then ``evaluate()`` each epoch.

Adam + cross entropy (on mixup/CutMix batches with train.mixup_alpha / cutmix_alpha,
`dermfuse.training.mixing`), class balancing (weighted loss, over- or undersampling), an lr
schedule with linear warmup, early stopping on the validation part with the best weights
restored, AMP on CUDA, and an atomic ``checkpoint.pt`` after every epoch from which
``resume=True`` continues exactly. DistributedDataParallel switches on when the
environment says ``WORLD_SIZE`` > 1 (as ``torchrun`` does); then only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, get_args

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..io import atomic_write, atomic_write_text
from .distributed import all_gather_objects, all_reduce_sum, broadcast_buffers, dist_info, init_distributed, is_main_process
from ..config import AugmentOn, EarlyStopping, Schedule, TrainConfig
from ..errors import ConfigError
from ..evaluation.metrics import balanced_accuracy
from ..preprocess import BatchAugmentation, to_input, train_augmentation
from .dataset import ArrayDataset
from .distill import DistillLoss
from .ema import WeightEma
from .mixing import BatchMix, MixedTargetLoss, check_alpha
from .seeding import rank_seed, rng_state as _rng_state, seed_everything as _seed_everything
from .seeding import set_rng_state as _set_rng_state
from .sampling import BALANCE_MODES, EpochSampler, class_weights, epoch_indices

__all__ = [
    "ArrayDataset",
    "EPOCH_BASE",
    "EpochSampler",
    "FitResult",
    "class_weights",
    "dist_info",
    "epoch_indices",
    "evaluate",
    "best_epoch_of",
    "one_based_history",
    "fit",
    "is_main_process",
    "make_optimizer",
    "train_one_epoch",
]

SCHEDULES = get_args(Schedule)
EARLY_STOPPING = get_args(EarlyStopping)
AUGMENT_ON = get_args(AugmentOn)
EPOCH_BASE = 1  # epochs are numbered from 1, as the progress bar shows them ("epoch 1/12")
console = Console(stderr=True)  # progress bars and epoch summaries


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # one row per epoch, see fit(); row["epoch"] counts from 1
    best_epoch: int  # epoch (from 1) whose weights the model holds at the end: history[best_epoch - 1]
    best_score: float | None  # its early-stopping score (None without early stopping)
    stopped_early: bool


def one_based_history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows with epochs counted from 1: rows of a history.json (or checkpoint)
    written when epochs counted from 0 are renumbered; others are returned as they are
    (rows without an "epoch", e.g. federated rounds, too)."""
    if not rows or rows[0].get("epoch") != 0:
        return list(rows)
    return [{**r, "epoch": r["epoch"] + EPOCH_BASE} for r in rows]


def best_epoch_of(record: dict[str, Any]) -> int:
    """The best epoch, counted from 1, of a metrics record with a "best_epoch" (records
    without "epoch_base" were written when epochs counted from 0)."""
    return int(record["best_epoch"]) + (0 if record.get("epoch_base") == EPOCH_BASE else EPOCH_BASE)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, mode: str) -> Any:
    """cosine / none: a LambdaLR (linear warmup, then cosine or flat), stepped per epoch.
    plateau: ReduceLROnPlateau (halve after patience // 2 flat epochs); fit() warms it up."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5,
                                                          patience=max(1, cfg.patience // 2))
    warm, total = cfg.warmup_epochs, cfg.epochs

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / max(1, total - warm)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- one epoch ----------------------------------------------------------------------------


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, amp: bool = False,
                    max_steps: int | None = None, bar: Progress | None = None,
                    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    ema: WeightEma | None = None, mix: BatchMix | None = None) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_steps`` batches); returns {"loss", "acc"}
    averaged over every sample all ranks saw. ``augment`` (uint8 batch -> uint8 batch) runs
    on ``device`` after the copy, for augmentation per batch instead of per image.
    ``memory_format``: the layout of the input batch (channels_last with a channels_last model).
    ``ema``: updated from the (unwrapped) model after every optimiser step. Batches with a
    fourth part (soft targets) call ``criterion(logits, labels, soft)``. ``mix``: mixup/CutMix of
    each batch, the criterion then gets class distributions; accuracy counts the unmixed labels."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, samples
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    task = bar.add_task("train", total=steps, stats="") if bar is not None else None
    for step, (images, meta, labels, *soft) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        x = to_input(images).contiguous(memory_format=memory_format)  # (B, 3, H, W) float in [0, 1]
        meta, labels = meta.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        targets = labels
        if mix is not None:
            x, meta, targets = mix(x, meta, labels)  # targets: (B, C) class distributions
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x, meta)  # (B, C)
        loss = criterion(logits.float(), targets, *(t.to(device, non_blocking=True) for t in soft))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model.module if isinstance(model, DistributedDataParallel) else model)
        totals[0] += loss.detach() * len(labels)
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += len(labels)
        if bar is not None:
            loss_avg, acc = (totals[:2] / totals[2]).tolist()
            bar.update(task, advance=1, stats=f"loss {loss_avg:.4f}  acc {acc:.3f}")
        if step + 1 >= steps:
            break
    totals = all_reduce_sum(totals)
    return {"loss": (totals[0] / totals[2]).item(), "acc": (totals[1] / totals[2]).item()}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
             memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, float]:
    """Unweighted cross entropy, accuracy and balanced accuracy over every rank's share of
    ``loader``: {"loss", "acc", "balanced_accuracy"}."""
    model.eval()
    loss_sum, ys, preds = torch.zeros(1, dtype=torch.float64, device=device), [], []
    for images, meta, labels in loader:
        x = to_input(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x, meta.to(device, non_blocking=True)).float()  # (B, C)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        ys.append(labels.cpu().numpy())
        preds.append(logits.argmax(1).cpu().numpy())
    gathered = all_gather_objects((np.concatenate(ys or [np.zeros(0, np.int64)]),
                                   np.concatenate(preds or [np.zeros(0, np.int64)])))
    y = np.concatenate([g[0] for g in gathered])
    pred = np.concatenate([g[1] for g in gathered])
    loss = all_reduce_sum(loss_sum).item() / max(1, len(y))
    return {"loss": loss, "acc": float((y == pred).mean()), "balanced_accuracy": float(balanced_accuracy(y, pred))}


# --- checkpoints --------------------------------------------------------------------------


def training_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but no CUDA device is available")
        return torch.device("cuda", dist_info()[2])
    if name != "cpu":
        raise ConfigError(f"train.device: expected auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def _augment_on_device(cfg: TrainConfig, device: torch.device, train: ArrayDataset) -> bool:
    """Whether the recipe runs per batch on ``device`` (train.augment_on: device, or auto on
    CUDA, where per-image augmentation in the CPU workers leaves the GPU waiting)."""
    return cfg.augment_on == "device" or (cfg.augment_on == "auto" and device.type == "cuda")


def _check(cfg: TrainConfig, train: ArrayDataset, classes: list[str]) -> None:
    for key, allowed in (("balance", BALANCE_MODES), ("schedule", SCHEDULES), ("early_stopping", EARLY_STOPPING),
                         ("augment_on", AUGMENT_ON)):
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"train.{key}: expected one of {allowed}, got {getattr(cfg, key)!r}")
    if not 0.0 <= cfg.augment_strength <= 5.0:
        raise ConfigError(f"train.augment_strength: expected 0..5 (1 = the paper's recipe), got {cfg.augment_strength!r}")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise ConfigError(f"train.weight_decay: expected a finite value >= 0, got {cfg.weight_decay!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: expected 0 (off) or a decay in (0, 1), e.g. 0.998, got {cfg.ema_decay!r}")
    check_alpha("mixup_alpha", cfg.mixup_alpha)
    check_alpha("cutmix_alpha", cfg.cutmix_alpha)
    if train.soft is not None and (cfg.mixup_alpha or cfg.cutmix_alpha):
        raise ConfigError("train.mixup_alpha / train.cutmix_alpha with train.distill_targets: mixing batches "
                          "with soft targets is not supported; use one or the other")
    if len(train) == 0:
        raise ValueError("fit: the training set is empty")
    if train.soft is not None and train.soft.shape[1] != len(classes):
        raise ValueError(f"fit: soft targets for {train.soft.shape[1]} classes, the model has {len(classes)}")
    if train.labels.min() < 0 or train.labels.max() >= len(classes):
        raise ValueError(f"fit: labels must be in 0..{len(classes) - 1} ({len(classes)} classes), "
                         f"got {train.labels.min()}..{train.labels.max()}")


# --- fit ----------------------------------------------------------------------------------


def fit(model: nn.Module, train: ArrayDataset, val: ArrayDataset | None, cfg: TrainConfig, classes: list[str],
        run_dir: Path | None = None, resume: bool = False, progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``model`` (forward(image (B,3,H,W) float [0,1], meta (B,D)) -> logits (B,C)) in place.

    Each epoch appends {epoch (1, 2, ...), train_loss, train_acc, val_loss, val_acc,
    val_balanced_accuracy, lr, seconds} to the history (val_* None without ``val``). With
    ``val`` and ``cfg.early_stopping`` != "none", training stops after ``cfg.patience``
    epochs without improvement and the best epoch's weights are loaded back; otherwise the
    model keeps the last epoch's weights. With ``run_dir``, rank 0 writes checkpoint.pt and
    history.json after every epoch; ``resume=True`` continues from checkpoint.pt there.
    ``on_epoch(row)`` is called on every rank after each epoch's row (and checkpoint); an
    exception it raises (e.g. optuna's TrialPruned) ends the fit and propagates.
    With ``cfg.channels_last`` the model trains and is validated in the channels_last memory
    format (faster on CPU) and is handed back in the usual contiguous one.
    With ``cfg.ema_decay`` > 0 validation scores, and the model ends with, the moving
    average of the weights (``dermfuse.training.ema``) instead of the raw weights.
    """
    _check(cfg, train, list(classes))
    device = training_device(cfg.device)
    rank, world = init_distributed(device)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("fit: resume=True needs a run_dir")
    _seed_everything(rank_seed(cfg.init_seed, rank))
    amp = cfg.amp and device.type == "cuda"
    monitor = cfg.early_stopping if val is not None and len(val) and cfg.early_stopping != "none" else None

    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:  # conv weights NHWC; given back in the usual layout when fit returns
        model.to(memory_format=torch.channels_last)
    try:
        return _fit(model, train, val, cfg, classes, run_dir, resume, progress, on_epoch, device, rank, world,
                    amp, monitor, memory_format)
    finally:
        if cfg.channels_last:
            model.to(memory_format=torch.contiguous_format)


@dataclass
class _Loaders:
    """What one fit reads its batches from; the generators are reseeded every epoch."""

    train: DataLoader
    val: DataLoader | None
    sampler: EpochSampler
    loader_rng: torch.Generator  # the loader's shuffling and worker seeds
    augment_rng: torch.Generator  # the per-batch augmentation's draws
    batch_augment: BatchAugmentation | None  # the recipe per batch on the device, or None
    mix: BatchMix | None  # train.mixup_alpha / cutmix_alpha > 0: the batch mixer, reseeded per epoch


def _make_loaders(train: ArrayDataset, val: ArrayDataset | None, cfg: TrainConfig, device: torch.device,
                  rank: int, world: int, n_classes: int) -> _Loaders:
    """Training and validation loaders of this rank, with the augmentation in the loader's
    workers (per image) or on the device (per batch)."""
    batch_augment = None
    if cfg.augment and train.transform is None:
        if _augment_on_device(cfg, device, train):
            batch_augment = BatchAugmentation(strength=cfg.augment_strength)
        else:
            train = copy.copy(train)  # shares the arrays
            train.transform = train_augmentation(tuple(train.images.shape[1:3]), strength=cfg.augment_strength)
    sampler = EpochSampler(train.labels, cfg.balance, seed=cfg.init_seed, num_replicas=world, rank=rank)
    # Own generators, reseeded per epoch: loader and worker seeds come from (seed, epoch, rank)
    # alone and the global RNG (augmentation, dropout) is drawn from by nothing else.
    loader_rng = torch.Generator()
    loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train, sampler=sampler, generator=loader_rng, **loader_kw)
    val_loader = None
    if val is not None and len(val):  # rank r evaluates rows r, r + world, ...
        val_loader = DataLoader(val, sampler=range(rank, len(val), world), generator=torch.Generator(), **loader_kw)
    mix = BatchMix(n_classes, cfg.mixup_alpha, cfg.cutmix_alpha) if cfg.mixup_alpha or cfg.cutmix_alpha else None
    return _Loaders(train_loader, val_loader, sampler, loader_rng, torch.Generator(), batch_augment, mix)


@dataclass
class _Optimisation:
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: WeightEma | None  # train.ema_decay > 0: the weights validation scores and fit returns


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with ``weight_decay`` as an L2 term (the paper's optimiser), or AdamW with the decay
    decoupled and applied to weight matrices and kernels only: biases and normalisation
    scales (the 1-D parameters) are not decayed, as is usual for AdamW."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def _make_optimisation(model: nn.Module, labels: np.ndarray, cfg: TrainConfig, n_classes: int,
                       device: torch.device, amp: bool, higher_is_better: bool,
                       distill: bool = False, mixed: bool = False) -> _Optimisation:
    """Loss (class-weighted for balance=weighted-loss; mixed with the soft targets when
    ``distill``; for class distributions with mixup/CutMix), Adam or AdamW, the lr schedule, the AMP scaler and the weight average (with train.ema_decay > 0)."""
    weight = class_weights(labels, n_classes).to(device) if cfg.balance == "weighted-loss" else None
    if distill:
        criterion = DistillLoss(cfg.distill_weight, cfg.distill_temperature, weight, cfg.label_smoothing)
    elif mixed:  # targets are class distributions
        criterion = MixedTargetLoss(weight, cfg.label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    optimizer = make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg, "max" if higher_is_better else "min")
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    return _Optimisation(criterion, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp), ema)


def _resume(ckpt_path: Path, cfg: TrainConfig, rank: int, model: nn.Module,
            opt: _Optimisation, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Model, optimisation, fit state, best weights and this rank's RNG streams from checkpoint.pt."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain types only
    saved = ckpt.get("config", {})
    seed = saved.get("init_seed", saved.get("seed", cfg.init_seed))  # "seed" in checkpoints before config_version 2
    if seed != cfg.init_seed:
        raise ConfigError(f"{ckpt_path} was trained with init seed {seed}, this run asks for "
                          f"init seed {cfg.init_seed}: resume with the same seed or use a new run directory")
    if saved.get("optimizer", "adam") != cfg.optimizer:  # checkpoints before the option are Adam's
        raise ConfigError(f"{ckpt_path} was trained with train.optimizer={saved.get('optimizer', 'adam')}, this run "
                          f"asks for {cfg.optimizer}: resume with the same optimizer or use a new run directory")
    for key in ("lr", "weight_decay"):  # the optimiser's state would silently bring back the saved value
        if key in saved and float(saved[key]) != float(getattr(cfg, key)):
            raise ConfigError(f"{ckpt_path} was trained with train.{key}={saved[key]}, this run asks for "
                              f"{getattr(cfg, key)}; the checkpoint's optimiser state would keep the old value: "
                              "resume with the same setting or use a new run directory")
    for name, obj in (("model", model), ("optimizer", opt.optimizer), ("scheduler", opt.scheduler),
                      ("scaler", opt.scaler)):
        obj.load_state_dict(ckpt[name])
    if opt.ema is not None:
        if ckpt.get("ema") is None:
            raise ConfigError(f"{ckpt_path} was trained without train.ema_decay; this run asks for "
                              f"{cfg.ema_decay}: resume with the same setting or use a new run directory")
        opt.ema.load_state_dict(ckpt["ema"])
    state = {k: ckpt[k] for k in state}
    if ckpt.get("epoch_base", 0) != EPOCH_BASE:  # a checkpoint from before epochs counted from 1
        state["history"] = one_based_history(state["history"])
        state["best_epoch"] = state["best_epoch"] + EPOCH_BASE if state["best_epoch"] >= 0 else -1
    if rank < len(ckpt["rng"]):
        _set_rng_state(ckpt["rng"][rank])  # last, so nothing above shifts the random streams
    return state, ckpt["best_weights"]


def _run_epoch(net: nn.Module, model: nn.Module, epoch: int, cfg: TrainConfig, data: _Loaders,
               opt: _Optimisation, device: torch.device, rank: int, amp: bool, show: bool,
               memory_format: torch.memory_format) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Train one epoch and validate: (history row, train stats, validation stats)."""
    start = time.perf_counter()
    data.sampler.set_epoch(epoch)
    data.loader_rng.manual_seed(int(np.random.SeedSequence([cfg.init_seed, epoch, rank]).generate_state(1)[0]))
    data.augment_rng.manual_seed(int(np.random.SeedSequence([cfg.init_seed, epoch, rank, 1]).generate_state(1)[0]))
    if data.mix is not None:
        data.mix.seed(int(np.random.SeedSequence([cfg.init_seed, epoch, rank, 2]).generate_state(1)[0]))
    if cfg.schedule == "plateau" and epoch <= cfg.warmup_epochs:
        for group in opt.optimizer.param_groups:
            group["lr"] = cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    lr = opt.optimizer.param_groups[0]["lr"]

    columns = (TextColumn(f"epoch {epoch + 1}/{cfg.epochs}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
    augment = None if data.batch_augment is None else (lambda x: data.batch_augment(x, data.augment_rng))
    with Progress(*columns, console=console, transient=True, disable=not show) as bar:
        tr = train_one_epoch(net, data.train, opt.criterion, opt.optimizer, opt.scaler, device, amp,
                             cfg.max_steps_per_epoch, bar if show else None, augment, memory_format, opt.ema,
                             data.mix)
    scored = model if opt.ema is None else opt.ema.module
    broadcast_buffers(scored)
    va = evaluate(scored, data.val, device, amp, memory_format) if data.val is not None else {}
    row = {"epoch": epoch + EPOCH_BASE, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va.get("loss"),
           "val_acc": va.get("acc"), "val_balanced_accuracy": va.get("balanced_accuracy"),
           "lr": lr, "seconds": time.perf_counter() - start}
    return row, tr, va


def _schedule_and_stop(epoch: int, cfg: TrainConfig, opt: _Optimisation, tr: dict[str, float],
                       va: dict[str, float], monitor: str | None, model: nn.Module, state: dict[str, Any],
                       best_weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Step the lr schedule and track the best epoch (updates ``state``); returns the best weights."""
    higher_is_better = monitor == "balanced_accuracy"
    if cfg.schedule != "plateau":
        opt.scheduler.step()
    elif epoch >= cfg.warmup_epochs:
        opt.scheduler.step(va.get("balanced_accuracy" if higher_is_better else "loss", tr["loss"]))
    if monitor is None:
        return best_weights
    score = va["balanced_accuracy"] if higher_is_better else va["loss"]
    best = state["best_score"]
    if best is None or (score > best if higher_is_better else score < best):
        state.update(best_score=score, best_epoch=epoch + EPOCH_BASE, bad_epochs=0)
        scored = model if opt.ema is None else opt.ema.module
        return {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
    state["bad_epochs"] += 1
    state["stopped_early"] = state["bad_epochs"] >= cfg.patience and epoch + 1 < cfg.epochs
    return best_weights


def _save(run_dir: Path, model: nn.Module, opt: _Optimisation, best_weights: dict[str, torch.Tensor] | None,
          rng: list[dict[str, Any]], cfg: TrainConfig, classes: list[str], state: dict[str, Any]) -> None:
    """checkpoint.pt (everything `_resume` reads) and history.json, each written atomically."""
    ckpt = {"model": model.state_dict(), "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(),
            "best_weights": best_weights, "ema": None if opt.ema is None else opt.ema.state_dict(), "rng": rng, "config": dataclasses.asdict(cfg),
            "classes": list(classes), "epoch_base": EPOCH_BASE, **state}
    atomic_write(run_dir / "checkpoint.pt", lambda tmp: torch.save(ckpt, tmp))
    atomic_write_text(run_dir / "history.json", json.dumps(state["history"], indent=2))


def _fit(model: nn.Module, train: ArrayDataset, val: ArrayDataset | None, cfg: TrainConfig, classes: list[str],
         run_dir: Path | None, resume: bool, progress: bool, on_epoch: Callable[[dict[str, Any]], None] | None,
         device: torch.device, rank: int, world: int, amp: bool, monitor: str | None,
         memory_format: torch.memory_format) -> FitResult:
    main = rank == 0
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    data = _make_loaders(train, val, cfg, device, rank, world, len(classes))
    opt = _make_optimisation(model, train.labels, cfg, len(classes), device, amp, monitor == "balanced_accuracy",
                             distill=train.soft is not None, mixed=data.mix is not None)

    state: dict[str, Any] = {"epoch": 0, "history": [], "best_epoch": -1, "best_score": None,
                             "bad_epochs": 0, "stopped_early": False}
    best_weights: dict[str, torch.Tensor] | None = None
    if resume and (run_dir / "checkpoint.pt").exists():
        state, best_weights = _resume(run_dir / "checkpoint.pt", cfg, rank, model, opt, state)
    if main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)

    show = progress and main
    for epoch in range(state["epoch"], cfg.epochs):
        if state["stopped_early"]:
            break
        row, tr, va = _run_epoch(net, model, epoch, cfg, data, opt, device, rank, amp, show, memory_format)
        state["history"].append(row)
        state["epoch"] = epoch + 1
        best_weights = _schedule_and_stop(epoch, cfg, opt, tr, va, monitor, model, state, best_weights)
        rng = all_gather_objects(_rng_state())  # every rank's, so each resumes its own streams
        if main and run_dir is not None:
            _save(run_dir, model, opt, best_weights, rng, cfg, classes, state)
        if show:
            console.print(_summary(row, cfg.epochs), soft_wrap=True, highlight=False)
        if on_epoch is not None:
            on_epoch(dict(row))

    if monitor is not None and best_weights is not None:
        model.load_state_dict(best_weights)
    else:
        if opt.ema is not None:
            model.load_state_dict(opt.ema.module.state_dict())
        state["best_epoch"] = len(state["history"])  # the last, counted from 1
    return FitResult(state["history"], state["best_epoch"], state["best_score"], state["stopped_early"])


def _summary(row: dict[str, Any], epochs: int) -> str:
    text = f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
    if row["val_loss"] is not None:
        text += (f"  | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
                 f" bal acc {row['val_balanced_accuracy']:.3f}")
    return text + f"  | lr {row['lr']:.2e}  {row['seconds']:.1f}s"

