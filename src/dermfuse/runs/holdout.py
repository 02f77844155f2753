"""Holdout runs: read → clean → split → cache → encode → (heatmaps) → fit → evaluate →
run directory with predictions, metrics, figures, report.html and a model bundle.

`train_run` is what ``dermfuse train`` calls, `calibrate_run` is ``dermfuse calibrate``;
`evaluate_bundle` (``dermfuse evaluate``) lives in `dermfuse.runs.evaluate` and is re-exported here.
Cross-validation and ablations (several runs over the same folds) live in `cv.py`."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from rich.console import Console

from .. import __version__
from ..config import RunConfig, config_to_dict, save_config
from ..constants import HEADLINE_METRICS, LEAKY_SPLIT_BANNER, SYNTHETIC_BANNER, TABLE_METRICS
from ..data.cache import build_cache
from ..errors import ConfigError, DataError
from ..evaluation.calibrate import CALIBRATION_MODES, fit_calibration
from ..evaluation.report import Section, figure_html, json_block, metrics_table_html, table_html, write_report
from ..inference.bundle import load_bundle, save_bundle, update_bundle_info
from ..io import atomic_write_text
from ..models import model_spec
from ..models.ensemble import ENSEMBLE
from ..training.distributed import is_main_process
from ..training.loop import EPOCH_BASE, best_epoch_of, one_based_history
from .cohort import Cohort, cohort_for, holdout_split, load_cohort
from .config_checks import check_config, image_size_for, model_kwargs, split_label
from .evaluate import evaluate_bundle, select_part  # re-exported: where 0.1 callers import them
from .predictions_csv import label_indices, probabilities, read_predictions, write_predictions
from .variant import Trained, calibrated_metrics, calibration_summary, headline, train_variant

__all__ = [
    "Cohort",
    "RunResult",
    "load_cohort",
    "cohort_for",
    "model_kwargs",
    "train_run",
    "evaluate_bundle",
    "select_part",
    "split_label",
]

log = logging.getLogger("dermfuse")
console = Console(stderr=True)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    bundle: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


def train_run(cfg: RunConfig, progress: bool = True, resume: bool = False,
              member: int | None = None, show_cleaning: bool = True) -> RunResult:
    """One holdout run of ``cfg.model`` on ``cfg.data.path``; writes everything into
    ``cfg.out`` and returns the test metrics and the bundle path.

    ``member`` = k (a seed ensemble only, 0 <= k < ``train.members``) trains member k alone
    into ``cfg.out/members/k`` and stops there: no ensemble, metrics or bundle (the result
    has ``bundle`` None and ``metrics`` {"member": k, ...}). Several such jobs can run at
    once, on one GPU or on several machines sharing the folder; a last run with
    ``resume=True`` then finds every member finished and builds the ensemble from them.

    With ``cfg.model.init`` (a bundle folder or 'released') the run fine-tunes that bundle:
    its architecture, classes, extended metadata encoder and weights (`dermfuse.training.finetune`).
    The training itself is `dermfuse.runs.variant.train_variant`, as in cross-validation."""
    init_bundle, init_info = _init_bundle(cfg)
    check_config(cfg)
    if member is not None and (cfg.train.members < 2 or not 0 <= member < cfg.train.members):
        raise ConfigError(f"member {member!r}: expected 0 to {cfg.train.members - 1}, one member of a seed "
                          f"ensemble of train.members = {cfg.train.members} (>= 2) models")
    t0 = time.time()
    main = is_main_process()  # under torchrun every rank trains; only rank 0 writes
    run_dir = Path(cfg.out)
    cohort = _start_run(cfg, run_dir, main, progress, show_cleaning)
    table, classes, y = cohort.table, cohort.classes, cohort.labels
    if init_bundle is not None:
        from ..training.finetune import check_classes

        check_classes(classes, init_bundle.classes, str(cfg.data.path))
    train_idx, val_idx, test_idx = holdout_split(cfg, table, run_dir if main else None)
    size = image_size_for(cfg)
    cache = build_cache(table, size=size, method=cfg.data.resize_method, progress=progress)
    encoder = None
    if init_bundle is not None:  # extended, not refitted: see dermfuse.training.finetune
        from ..training.finetune import encoder_summary, extend_encoder

        encoder = extend_encoder(init_bundle.encoder, table.iloc[train_idx])
        init_info["encoder"] = encoder_summary(init_bundle.encoder, encoder)
    images, cam_model, cam_info = _model_inputs(cfg, cohort, cache, train_idx, val_idx, run_dir, progress, resume)
    done = train_variant(cfg, table, y, classes, images, train_idx, val_idx, test_idx, run_dir, encoder=encoder,
                         init=None if init_bundle is None else (init_bundle, init_info), member=member,
                         resume=resume, progress=progress)
    if member is not None:  # one member alone; the run that builds the ensemble reuses its checkpoint
        f = done.fit
        return RunResult(run_dir, {"member": member, "seed": cfg.train.init_seed + member, "best_epoch": f.best_epoch,
                                   "epoch_base": EPOCH_BASE,
                                   "stopped_early": f.stopped_early, "epochs_run": len(f.history)}, None, f.history)
    metrics = _run_metrics(cfg, done, init_info)
    if not main:
        return RunResult(run_dir, metrics, None, done.fit.history)
    test_ids = table["image_id"].to_numpy()[test_idx]
    _write_scores(run_dir, cfg, done, metrics, test_ids, classes, y[test_idx])
    seen = list(table["image_id"].to_numpy()[np.concatenate([train_idx, val_idx])])
    if init_bundle is not None:  # a fine-tune has seen what its starting bundle saw
        seen += init_bundle.seen_images() or ()  # save_bundle sorts and dedupes
    bundle = _save_run_bundle(run_dir, cfg, cohort, done, cam_model, cam_info, size, metrics,
                              n_train=len(train_idx), n_val=len(val_idx), seen=seen)
    if len(test_idx):
        _holdout_report(run_dir, cfg, cohort, done.fit.history, metrics, y[test_idx], done.proba,
                        n_parts=(len(train_idx), len(val_idx), len(test_idx)), warnings=done.warnings,
                        seconds=time.time() - t0)
    return RunResult(run_dir, metrics, bundle, done.fit.history)


def _start_run(cfg: RunConfig, run_dir: Path, main: bool, progress: bool, show_cleaning: bool) -> Cohort:
    """The run folder with config.yaml (rank 0 only), and the cleaned cohort, its cleaning
    report saved (rank 0) and shown (with ``progress`` and ``show_cleaning``, rank 0)."""
    if main:
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    cohort = cohort_for(cfg, progress)
    if main:
        cohort.report.save_json(run_dir / "cleaning_report.json")
    if progress and main and show_cleaning:  # the demo shows it once for all its runs
        console.print(cohort.report.render())
    return cohort


def _model_inputs(cfg: RunConfig, cohort: Cohort, cache, train_idx: np.ndarray, val_idx: np.ndarray,
                  run_dir: Path, progress: bool, resume: bool) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """(what the model is trained on, the CAM backbone or None, its info): the cached images,
    or for heatmap-input models their rendering by the heatmap stage."""
    if cfg.model.input != "image" and model_spec(cfg.model.name).uses_image:
        from ..training.heatmap_stage import heatmap_stage

        stage = heatmap_stage(cfg, cohort.table, cohort.labels, cohort.classes, cache.images, train_idx, val_idx,
                              run_dir, cache_key=cache.key, progress=progress, resume=resume)
        return stage.inputs, stage.cam_model, stage.info
    return cache.images, None, {}


def _run_metrics(cfg: RunConfig, done: Trained, init_info: dict[str, Any]) -> dict[str, Any]:
    metrics = dict(done.metrics)
    if done.raw is None:  # test_fraction 0: everything but the validation part trains; nothing is held out
        metrics = {"n_images": 0, "note": "no test part (data.test_fraction = 0): trained on all rows but "
                                          "the validation part; held-out numbers come from a run with a test part"}
        if not done.calibration.is_identity:
            metrics["calibration"] = calibration_summary(done.calibration)
    metrics["split"] = split_label(cfg.data.split)
    metrics["weights_source"] = done.weights_source
    if done.member_metrics:
        metrics["members"] = done.member_metrics
    if init_info:
        metrics["init"] = init_info
    return metrics


def _write_scores(run_dir: Path, cfg: RunConfig, done: Trained, metrics: dict[str, Any], test_ids: np.ndarray,
                  classes: list[str], y_test: np.ndarray) -> None:
    """metrics.json, predictions.csv (each member's too; the uncalibrated ones where a
    calibration was fitted) and, for an ensemble, member 0's history.json."""
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    if cfg.train.members > 1:  # member 0's curves stand for the run (the report's, `dermfuse calibrate`'s)
        atomic_write_text(run_dir / "history.json", json.dumps(done.fit.history, indent=2))
    if done.raw is None:
        return
    write_predictions(run_dir / "predictions.csv", test_ids, classes, y_test, done.proba)
    for k, p in enumerate(done.member_proba):  # each member alone, for paired comparisons
        write_predictions(run_dir / "members" / str(k) / "predictions.csv", test_ids, classes, y_test, p)
    if not done.calibration.is_identity:  # `dermfuse calibrate` starts again from these
        write_predictions(run_dir / "predictions_uncalibrated.csv", test_ids, classes, y_test, done.raw)


def _save_run_bundle(run_dir: Path, cfg: RunConfig, cohort: Cohort, done: Trained, cam_model, cam_info: dict,
                     size: int | tuple[int, int], metrics: dict[str, Any], n_train: int, n_val: int,
                     seen: Sequence[str] | None = None) -> Path:
    model_name, kwargs = cfg.model.name, done.kwargs
    if cfg.train.members > 1:
        model_name, kwargs = ENSEMBLE, {"member": cfg.model.name, "member_kwargs": done.kwargs,
                                        "n_members": cfg.train.members, "num_classes": len(cohort.classes),
                                        "meta_dim": done.meta_dim}
    return save_bundle(
        run_dir / "bundle", model=done.model, model_name=model_name, model_kwargs=kwargs,
        classes=cohort.classes, encoder=done.encoder, image_size=size, resize_method=cfg.data.resize_method,
        input_mode=cfg.model.input, cam_model=cam_model, cam_name=cam_info.get("name"),
        cam_kwargs=cam_info.get("kwargs"), cam_method=cfg.cam.method,
        tta=cfg.train.tta, tta_views=cfg.train.tta_views, calibration=done.calibration, weights_dtype=cfg.train.weights_dtype,
        metrics={**headline(metrics), "split": metrics["split"]},
        training_data={"path": str(cfg.data.path), "format": cohort.read.format,
                       "column_map": cfg.data.column_map if cohort.read.format == "generic" else None,
                       "synthetic": cohort.synthetic, "n_train": int(n_train), "n_val": int(n_val)},
        seen_images=seen,
    )


def _init_bundle(cfg: RunConfig):
    """The bundle ``cfg.model.init`` names (loaded) and what the run records about it; sets
    ``cfg``'s architecture to the bundle's. (None, {}) without ``init``."""
    if not cfg.model.init:
        return None, {}
    from ..training.finetune import apply_init_architecture, resolve_init

    path = resolve_init(cfg.model.init)
    bundle = load_bundle(path)
    for line in apply_init_architecture(cfg, bundle):
        log.info(line)
    cfg.model.init = str(path)  # the resolved folder, so the saved config names what was used
    return bundle, {"bundle": str(path), "model_id": bundle.model_id}


HEADLINE = HEADLINE_METRICS  # the old name


def _holdout_report(run_dir: Path, cfg: RunConfig, cohort: Cohort, history: list[dict], metrics: dict,
                    y_test: np.ndarray, proba: np.ndarray, n_parts: tuple[int, int, int],
                    warnings: list[str], seconds: float) -> Path:
    from ..evaluation.plots import fig_to_png_bytes, plot_confusion, plot_history, plot_reliability, plot_roc

    classes = cohort.classes
    cm = np.asarray(metrics["confusion_matrix"])
    figs = {
        "curves": plot_history(history),
        "confusion_counts": plot_confusion(cm, classes, normalize=False),
        "confusion_normalized": plot_confusion(cm, classes, normalize=True),
        "roc": plot_roc(y_test, proba, classes),
        "reliability": plot_reliability(y_test, proba),
    }
    png = {}
    for name, fig in figs.items():
        png[name] = fig_to_png_bytes(fig)
        (run_dir / "plots" / f"{name}.png").write_bytes(png[name])
    summary = cohort.summary
    data_rows = [("format", summary["format"]), ("images", summary["images"]),
                 ("lesions", summary["lesions"]), ("patients", summary["patients"]),
                 ("train / val / test images", " / ".join(map(str, n_parts))),
                 ("split", split_label(cfg.data.split))]
    sections = [
        Section("Data", table_html(data_rows, ("", "")) +
                table_html(sorted(summary["classes"].items(), key=lambda kv: -kv[1]), ("class", "images"))),
        Section("Cleaning report", table_html(sorted(cohort.report.counts.items()), ("dropped: reason", "rows")) +
                table_html(sorted(cohort.report.fixed.items()), ("fixed (row kept)", "rows")) +
                table_html(sorted(summary["missing"].items()), ("missing after cleaning", "rows"))),
        Section("Test metrics", metrics_table_html(metrics)),
        Section("Training curves", figure_html(png["curves"], "training and validation accuracy and loss" + (
            " of member 0; every member's history is in members/K/history.json" if "members" in metrics else ""))),
        Section("Confusion matrix", "<div class='figs'>" + figure_html(png["confusion_counts"], "counts") +
                figure_html(png["confusion_normalized"], "row-normalised (recall)") + "</div>"),
        Section("ROC and calibration", "<div class='figs'>" + figure_html(png["roc"], "one-vs-rest ROC") +
                figure_html(png["reliability"], "reliability diagram") + "</div>"),
        Section("Config", json_block(config_to_dict(cfg))),
    ]
    if "calibration" in metrics:
        sections.insert(3, _calibration_section(metrics))
    if "members" in metrics:
        sections.insert(3, _members_section(metrics))
    banners = []
    if cohort.synthetic:
        banners.append(SYNTHETIC_BANNER)
    if cfg.data.split == "image-leaky":
        banners.append(LEAKY_SPLIT_BANNER)
    return write_report(
        run_dir / "report.html", f"dermfuse — {cfg.model.name} ({cfg.model.input} input)",
        sections, subtitle=f"{cfg.data.path} · {seconds / 60:.1f} min · dermfuse {__version__}",
        banners=banners, warnings=warnings)


def _members_section(metrics: dict[str, Any]) -> Section:
    cols = TABLE_METRICS
    rows = [(f"member {m['member']} (seed {m['seed']}, best epoch {best_epoch_of(m)})", *(m.get(c) for c in cols))
            for m in metrics["members"]]
    rows.append(("ensemble (mean of the members' probabilities)", *(metrics.get(c) for c in cols)))
    return Section("Ensemble members",
                   "<p>Every member scored alone on the same test rows, each calibrated on the validation "
                   "part by itself: what a single-model run with that seed gives. The spread between "
                   "them is the seed noise of one training run.</p>" + table_html(rows, ("model", *cols)))


def _calibration_section(metrics: dict[str, Any]) -> Section:
    cal, raw = metrics["calibration"], metrics.get("uncalibrated", {})
    fitted = cal.get("fitted_on", {})
    params = [("prior shift tau", cal["prior_shift"]), ("temperature T", cal["temperature"]),
              ("fitted on", f"{fitted.get('where', '?')} ({fitted.get('n', '?')} images)"),
              ("validation log loss before / after", f"{fitted.get('val_log_loss_before', float('nan')):.4f} / "
                                                    f"{fitted.get('val_log_loss_after', float('nan')):.4f}")]
    rows = [(k, raw.get(k), metrics.get(k)) for k in HEADLINE if k in raw]
    return Section("Calibration (fitted on validation rows only)",
                   "<p>p = softmax((log p_model + tau · log prior) / T); tau maximises (accuracy + balanced "
                   "accuracy) / 2 on the validation part, T minimises its log loss.</p>" +
                   table_html(params, ("", "")) + table_html(rows, ("test metric", "uncalibrated", "calibrated")))


def calibrate_run(run_dir: str | Path, mode: str = "prior-temperature", progress: bool = True) -> dict[str, Any]:
    """Fit calibration for a finished holdout run (one trained with ``calibration: none``)
    on its validation part, exactly as ``train.calibration`` does inside ``train_run``;
    write it into the run's bundle, rescore the saved test predictions, and rewrite
    metrics.json, predictions.csv (the uncalibrated ones are kept beside it) and the report."""
    from ..config import load_config
    from ..inference.predict import predict_arrays

    run_dir = Path(run_dir)
    for name in ("config.yaml", "split.csv", "history.json", "bundle"):
        if not (run_dir / name).exists():
            raise DataError(f"{run_dir} is not a finished holdout run: {name} is missing")
    cfg = load_config(run_dir / "config.yaml")
    if mode not in CALIBRATION_MODES or mode == "none":
        raise ConfigError(f"calibration {mode!r}: expected temperature, prior-temperature or balanced-temperature")
    bundle = load_bundle(run_dir / "bundle")
    cohort = cohort_for(cfg, progress)
    table, classes = cohort.table, cohort.classes
    if list(classes) != list(bundle.classes):
        raise DataError(f"classes of {cfg.data.path} {classes} differ from the bundle's {bundle.classes}")
    part = pd.read_csv(run_dir / "split.csv").set_index("image_id")["part"]
    where = table["image_id"].map(part)
    if where.isna().any():
        raise DataError(f"{where.isna().sum()} images of {cfg.data.path} are not in {run_dir / 'split.csv'}")
    val_idx = np.flatnonzero(where.to_numpy() == "val")
    train_idx = np.flatnonzero(where.to_numpy() == "train")
    y = cohort.labels
    # the run's own cache (same table, size and method): nothing is decoded again
    images = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=progress).images
    val_proba = predict_arrays(bundle, np.ascontiguousarray(images[val_idx]), bundle.encode_table(table.iloc[val_idx]),
                               progress=progress, calibrated=False)
    calibration = fit_calibration(val_proba, y[val_idx], y[train_idx], mode)

    raw_path = run_dir / "predictions_uncalibrated.csv"  # kept, so calibrating twice starts from the same scores
    if not raw_path.exists():
        if not (run_dir / "predictions.csv").exists():
            raise DataError(f"{run_dir} is not a finished holdout run: predictions.csv is missing")
        (run_dir / "predictions.csv").replace(raw_path)
    pred = read_predictions(raw_path)
    raw = probabilities(pred, classes, renormalise=True)
    y_test = label_indices(pred, classes)
    proba, metrics = calibrated_metrics(y_test, raw, calibration, classes)
    metrics["split"] = split_label(cfg.data.split)
    old = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    if "members" in old:  # an ensemble's members were scored alone, each with its own calibration
        metrics["members"] = old["members"]
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_predictions(run_dir / "predictions.csv", pred["image_id"].to_numpy(), classes, y_test, proba)
    update_bundle_info(run_dir / "bundle", calibration=calibration.to_dict(),
                       metrics={**headline(metrics), "split": metrics["split"]})
    history = one_based_history(json.loads((run_dir / "history.json").read_text()))
    cfg.train.calibration = mode
    save_config(cfg, run_dir / "config.yaml")
    _holdout_report(run_dir, cfg, cohort, history, metrics, y_test, proba,
                    n_parts=(len(train_idx), len(val_idx), len(y_test)), warnings=[],
                    seconds=sum(h.get("seconds", 0.0) for h in history))
    return metrics
