"""``dermfuse release RUN_DIR --out DIR [--holdout HOLDOUT_RUN_DIR]``: turn a finished
``dermfuse train`` run into a releasable bundle.

1. the trust part, fitted on the run's own rows (never on test rows):
   - out-of-distribution score: mean + Ledoit-Wolf covariance of one layer's channel
     statistics on the TRAINING rows; the layer (or the pooled features) chosen by AUROC
     between VALIDATION images and design non-lesion images (synthetic seed 0 and the
     scikit-learn / matplotlib sample photographs); threshold keeps 95 % of validation images;
   - selective threshold on the top probability for the stated coverage of VALIDATION rows;
   - melanoma threshold on P(mel) for the target sensitivity on VALIDATION rows;
2. the OOD AUROC measured on other synthetic images (seed 1) and skimage.data photographs;
3. the model card: intended use, data and population limits, training command and commit,
   held-out metrics with 95 % lesion-bootstrap intervals from the recipe's HOLDOUT run
   (per class and by sex, age band and site), what it must not be used for, licences.

The weights are copied unchanged (same model id and checksum)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .. import CLASS_NAMES, __version__
from ..inference.bundle import META_FILE, SEEN_FILE, WEIGHTS_FILE, load_bundle, read_bundle_info, update_bundle_info
from ..errors import DataError
from ..image_size import Size, size_hw, size_text
from ..inference.card import CARD_SCHEMA, INTENDED_USE, LICENSES, NOT_FOR, POPULATION_LIMITS
from ..inference.ood_images import design_photos, skimage_photos, synthetic_ood
from ..inference.predictor import Predictor, channel_stats, ood_layers, stat_taps
from ..inference.trust import Trust, auroc, fit_melanoma, fit_ood_layers, fit_selective, save_trust_arrays
from ..evaluation.metrics import confusion_metrics, group_resamples

__all__ = ["release_run", "layer_features", "lesion_bootstrap", "auc_bootstrap", "operating_points", "AGE_BANDS",
           "HOLDOUT_TRUST_DIR"]

# where `dermfuse release HOLDOUT_RUN --out HOLDOUT_RUN/released` puts the holdout run's own trust
# part; the card then reports those thresholds on the holdout's test rows
HOLDOUT_TRUST_DIR = "released"
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+"))


def _git_commit(where: Path) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _run_parts(run_dir: Path, table: pd.DataFrame) -> pd.Series:
    part = pd.read_csv(run_dir / "split.csv").set_index("image_id")["part"]
    where = table["image_id"].map(part)
    if where.isna().any():
        raise DataError(f"{int(where.isna().sum())} images of the data set are not in {run_dir / 'split.csv'}")
    return where


def _score_images(engine: Predictor, images: np.ndarray, meta_one: np.ndarray, progress: bool):
    meta = np.repeat(meta_one, len(images), axis=0)
    out = engine.run(images, meta, features=True, progress=progress)
    return out.proba, out.features


def layer_features(engine: Predictor, images: np.ndarray, meta: np.ndarray, layers: Sequence[str],
                    progress: bool) -> dict[str, np.ndarray]:
    """Every candidate OOD feature set of ``images`` from one pass of the identity view:
    layer path -> (N, 2C) channel statistics (ensemble members side by side), 'pooled' ->
    (N, F) the pooled features."""
    plain = copy.copy(engine)
    plain.tta = False
    plain.trust = None  # pooled features from the run itself
    net = engine.cam_model if engine.input_mode != "image" else engine.model
    grabbed: dict[tuple[str, int], list[torch.Tensor]] = {}
    handles = []

    def hook(key):
        def grab(module, inputs, output):
            grabbed.setdefault(key, []).append(channel_stats(output))
        return grab

    try:
        for layer in layers:
            for j, module in enumerate(stat_taps(net, layer)):
                handles.append(module.register_forward_hook(hook((layer, j))))
        if meta.ndim == 1 or len(meta) == 1:
            meta = np.repeat(meta.reshape(1, -1), len(images), axis=0)
        out = plain.run(np.ascontiguousarray(images), meta, features=True, progress=progress)
    finally:
        for h in handles:
            h.remove()
    feats = {layer: torch.cat([torch.cat(grabbed[(layer, j)]) for j in range(len(stat_taps(net, layer)))],
                              dim=1).numpy() for layer in layers}
    feats["pooled"] = out.features
    return feats


def release_run(run_dir: str | Path, out: str | Path, holdout: str | Path | None = None, data: str | None = None,
                coverage: float = 0.90, mel_sensitivity: float = 0.85, ood_keep: float = 0.95,
                max_train: int | None = None, train_command: str | None = None, commit: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Fit the trust part on ``run_dir``'s rows, write the card, and write the bundle to ``out``.
    Returns a summary (thresholds, OOD AUROCs). ``data`` overrides the run's data path."""
    from ..config import load_config
    from ..data.cache import build_cache
    from .cohort import load_cohort

    run_dir, out = Path(run_dir), Path(out)
    for name in ("config.yaml", "split.csv", "bundle"):
        if not (run_dir / name).exists():
            raise DataError(f"{run_dir} is not a finished `dermfuse train` run: {name} is missing")
    cfg = load_config(run_dir / "config.yaml")
    data_path = data or cfg.data.path
    bundle = load_bundle(run_dir / "bundle")
    engine = Predictor.from_bundle(bundle)
    cohort = load_cohort(data_path, cfg.data.format, cfg.data.check_images, progress, cfg.data.column_map)
    table = cohort.table
    if list(cohort.classes) != list(bundle.classes):
        raise DataError(f"classes of {data_path} {cohort.classes} differ from the bundle's {bundle.classes}")
    train_idx, val_idx = _train_val_rows(run_dir, table, max_train)
    images = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=progress).images
    meta = engine.encode_meta(table)
    unknown = engine.encode_meta(age=None, sex=None, site=None)
    trust, val_scores = _fit_trust(engine, bundle, images, meta, cohort.labels, train_idx, val_idx, run_dir, unknown,
                                   coverage, mel_sensitivity, ood_keep, progress)
    # measured on images the choice did not see
    measure = _measure_ood(engine, trust.ood, val_scores, unknown, bundle.image_size, bundle.resize_method,
                           f"{len(val_idx)} validation images of {run_dir.name}")
    trust.ood.selection["measured"] = measure

    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, META_FILE, SEEN_FILE):
        if name != SEEN_FILE or (run_dir / "bundle" / name).is_file():  # older bundles list none
            shutil.copy2(run_dir / "bundle" / name, out / name)
    digest = save_trust_arrays(out, trust)
    info = read_bundle_info(out)
    hold = holdout_metrics(Path(holdout), data_path, progress) if holdout else None
    card = build_card(info, cfg, run_dir, trust, hold, train_command, commit, data_path)
    update_bundle_info(out, trust=trust.to_dict(digest), model_card=card)
    load_bundle(out)  # the result loads, checksums and all
    return {"bundle": str(out), "model_id": info.get("model_id"), "trust": trust.to_dict(digest),
            "ood_measured": measure, "holdout": hold}


def _train_val_rows(run_dir: Path, table: pd.DataFrame, max_train: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The run's training rows (at most ``max_train``, a seeded sorted sample) and validation rows."""
    where = _run_parts(run_dir, table).to_numpy()
    train_idx, val_idx = np.flatnonzero(where == "train"), np.flatnonzero(where == "val")
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{run_dir / 'split.csv'} needs train and val rows (has {sorted(set(where))})")
    if max_train and len(train_idx) > max_train:
        train_idx = np.sort(np.random.default_rng(0).choice(train_idx, max_train, replace=False))
    return train_idx, val_idx


def _fit_trust(engine: Predictor, bundle, images: np.ndarray, meta: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
               val_idx: np.ndarray, run_dir: Path, unknown: np.ndarray, coverage: float, mel_sensitivity: float,
               ood_keep: float, progress: bool) -> tuple[Trust, np.ndarray]:
    """The trust part (OOD layer and threshold, selective and melanoma thresholds), fitted on
    training and validation rows; with the validation images' OOD scores. The engine keeps
    the chosen OOD layer tapped."""
    size = bundle.image_size
    net = engine.cam_model if engine.input_mode != "image" else engine.model
    layers = ood_layers(net)
    train_f = layer_features(engine, images[train_idx], meta[train_idx], layers, progress)
    val_f = layer_features(engine, images[val_idx], meta[val_idx], layers, progress)
    val_out = engine.run(np.ascontiguousarray(images[val_idx]), meta[val_idx], progress=progress)
    design = np.concatenate([*synthetic_ood(size, 20, seed=0).values(), design_photos(size, method=bundle.resize_method)])
    design_f = layer_features(engine, design, unknown, layers, False)
    ood = fit_ood_layers(train_f, val_f, design_f, keep=ood_keep)
    engine.trust = Trust(ood=ood)  # the engine now taps the chosen layer
    fitted_on = {"run": str(run_dir), "train_rows": int(len(train_idx)), "val_rows": int(len(val_idx)),
                 "note": "OOD means/covariance on training rows; every threshold on validation rows; no test rows"}
    try:
        melanoma = fit_melanoma(val_out.proba, y[val_idx], bundle.classes, mel_sensitivity)
    except ValueError as e:  # no 'mel' class, or no melanoma among the validation rows
        melanoma = None
        fitted_on["melanoma_operating_point"] = f"not fitted: {e}"
    trust = Trust(fit_selective(val_out.proba, coverage), ood, melanoma, fitted_on)
    return trust, ood.score(val_out.proba, val_f[ood.layer or "pooled"])


def _measure_ood(engine: Predictor, ood, val_scores: np.ndarray, unknown: np.ndarray, size: Size, method: str,
                 in_distribution: str) -> dict[str, Any]:
    """AUROCs of the OOD score between the validation images and other non-lesion images
    (synthetic seed 1, scikit-image photographs), and the share of each group flagged."""
    groups = {**{f"synthetic:{k}": v for k, v in synthetic_ood(size, 30, seed=1).items()},
              **{f"skimage:{k}": v[None] for k, v in skimage_photos(size, method).items()}}
    all_scores = []
    flagged = {}
    for name, imgs in groups.items():
        p, f = _score_images(engine, imgs, unknown, False)  # the engine as users get it
        s = ood.score(p, f)
        all_scores.append(s)
        flagged[name] = float((s > ood.threshold).mean())
    skimage_scores = [s for n, s in zip(groups, all_scores) if n.startswith("skimage:")]
    synth_scores = [s for n, s in zip(groups, all_scores) if n.startswith("synthetic:")]
    return {
        "in_distribution": in_distribution,
        "auroc_all": auroc(val_scores, np.concatenate(all_scores)),
        "auroc_synthetic": auroc(val_scores, np.concatenate(synth_scores)),
        "auroc_skimage": auroc(val_scores, np.concatenate(skimage_scores)) if skimage_scores else None,
        "flagged_share": flagged,
        "val_flagged_share": float((val_scores > ood.threshold).mean()),
    }


def build_card(info: dict[str, Any], cfg, run_dir: Path, trust: Trust, hold: dict | None,
               train_command: str | None, commit: str | None, data_path: str) -> dict[str, Any]:
    """The model card of a released bundle (MONAI-metadata-like fields where they fit)."""
    import torch

    td = info.get("training_data", {})
    synthetic = bool(td.get("synthetic", False))
    h, w = size_hw(info["preprocessing"]["image_size"])
    resized = (f"square size, {h}x{w}, aspect ratio not kept" if h == w else
               f"{h}x{w} (height x width): an image of that aspect ratio keeps it, others are squashed")
    cmd = train_command or (f"dermfuse train {cfg.data.path} --config {run_dir / 'config.yaml'} --out {run_dir}")
    return {
        "schema": CARD_SCHEMA,
        "name": f"dermfuse {_architecture(info['model'])}, {size_text(info['preprocessing']['image_size'])} px, "
                "image + metadata",
        "model_id": info.get("model_id"),
        "version": __version__,
        "task": "7-class skin-lesion classification from a dermoscopic image and age, sex, body site",
        "description": ("Trained on all of the HAM10000 development set except the 10 % of lesions kept as "
                        "validation rows (early stopping, calibration and the trust thresholds); it has no test "
                        "part of its own: its held-out metrics come from the same recipe's holdout run."),
        "synthetic": synthetic,
        "intended_use": INTENDED_USE,
        "not_for": NOT_FOR,
        "data_source": {"name": "HAM10000 (Tschandl et al. 2018, doi:10.1038/sdata.2018.161)",
                        "path": td.get("path", data_path), "n_train": td.get("n_train"),
                        "n_val": trust.fitted_on.get("val_rows"), "synthetic": synthetic,
                        "licence": "CC BY-NC 4.0"},
        "data_type": f"dermoscopic RGB image (any size >= 32 px, resized to the model's {resized}) + "
                     "age (years), sex, body site",
        "image_classes": {c: CLASS_NAMES.get(c, c) for c in info.get("classes", [])},
        "population_limits": POPULATION_LIMITS,
        "training": {"command": cmd, "git_commit": commit or _git_commit(Path(__file__).parent) or "unknown",
                     "config": str(run_dir / "config.yaml"), "recipe": _recipe(cmd, run_dir),
                     "epochs": cfg.train.epochs, "calibration": cfg.train.calibration, "tta": cfg.train.tta,
                     "tta_views": info["preprocessing"].get("tta_views", "all") if cfg.train.tta else 0,
                     "members": cfg.train.members, "weights_dtype": info.get("weights_dtype", "float32")},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "RGB", "num_channels": 3,
                                 "spatial_shape": list(size_hw(info["preprocessing"]["image_size"])),
                                 "value_range": [0, 1], "preprocessing": info["preprocessing"]},
                       "metadata": {"fields": ["age", "sex", "site"], "missing": "empty or 'unknown'"}},
            "outputs": {"pred": {"type": "probabilities", "num_channels": len(info.get("classes", [])),
                                 "channel_def": dict(enumerate(info.get("classes", [])))},
                        "status": "ok | uncertain | out_of_distribution"}},
        "performance": {"holdout": hold} if hold else {
            "note": "held-out metrics: not yet recorded (rerun `dermfuse release ... --holdout HOLDOUT_RUN`)",
            "metrics": {}},
        "trust": _card_trust(trust),
        "license": LICENSES,
        "pytorch_version": torch.__version__,
        "references": ["Shimbre & Solanki 2025, Activation Heatmap-Guided FT-MultiCNN, doi:10.18280/isi.300520",
                       "Tschandl, Rosendahl & Kittler 2018, The HAM10000 dataset, doi:10.1038/sdata.2018.161"],
    }


def _recipe(command: str, run_dir: Path) -> str:
    """The config file the training command names (``--config FILE``), else the run's own."""
    words = command.split()
    for i, word in enumerate(words[:-1]):
        if word == "--config":
            return words[i + 1]
    return str(run_dir / "config.yaml")


def _architecture(model: dict[str, Any]) -> str:
    """'ft_multicnn + efficientnet_lite0', or for a seed ensemble
    'ft_multicnn + efficientnet_lite0, a seed ensemble of 2'."""
    name, kwargs = model["name"], model.get("kwargs", {})
    if name == "ensemble":
        inner = _architecture({"name": kwargs.get("member"), "kwargs": kwargs.get("member_kwargs", {})})
        return f"{inner}, a seed ensemble of {kwargs.get('n_members')}"
    return name + (f" + {kwargs['image_backbone']}" if kwargs.get("image_backbone") else "")


def _card_trust(trust: Trust) -> dict[str, str]:
    """The card's trust part in words: when the model answers, flags OOD, says melanoma."""
    return {
        "selective": f"answers when the top probability >= {trust.selective.threshold:.3f} "
                     f"({trust.selective.achieved:.1%} of {trust.selective.n} validation images; target "
                     f"{trust.selective.coverage:.0%}); otherwise 'uncertain'",
        "out_of_distribution": f"Mahalanobis distance of the {trust.ood.layer or 'pooled image'} "
                               f"features > {trust.ood.threshold:.2f} "
                               f"(keeps {trust.ood.keep:.0%} of validation images); "
                               f"measured AUROC {trust.ood.selection['measured']['auroc_all']:.3f}",
        **({"melanoma_operating_point":
            f"'mel' when P(mel) >= {trust.melanoma.threshold:.3f}: validation sensitivity "
            f"{trust.melanoma.sensitivity:.3f}, specificity {trust.melanoma.specificity:.3f} "
            f"({trust.melanoma.n_mel} melanomas)"} if trust.melanoma else {})}


# --- held-out metrics with lesion-bootstrap intervals ---------------------------------------


def lesion_bootstrap(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, classes: Sequence[str],
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Accuracy, balanced accuracy, melanoma sensitivity, and per-class sensitivity and
    specificity of predicted class indices, each with a percentile interval from resampling
    whole lesions (``groups``) with replacement. value/low/high per metric."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    c = len(classes)
    mel = list(classes).index("mel") if "mel" in classes else None
    _, gidx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    ng = int(gidx.max()) + 1
    onehot = np.zeros((len(y), c * c))
    onehot[np.arange(len(y)), y * c + pred] = 1.0
    cm = onehot.sum(0).reshape(c, c)
    rng = np.random.default_rng(seed)
    boots = []
    for start in range(0, n_boot, 250):
        counts = rng.multinomial(ng, np.full(ng, 1.0 / ng), size=min(250, n_boot - start))
        boots.append((counts[:, gidx].astype(np.float64) @ onehot).reshape(-1, c, c))
    cms = np.concatenate(boots)
    tail = (1 - level) / 2 * 100

    def ci(values: np.ndarray, observed: float) -> dict[str, float | None]:
        v = values[~np.isnan(values)]
        return {"value": None if np.isnan(observed) else float(observed),
                "low": float(np.percentile(v, tail)) if len(v) else None,
                "high": float(np.percentile(v, 100 - tail)) if len(v) else None}

    def sens_spec(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (..., C)
        tp = np.diagonal(m, axis1=-2, axis2=-1)
        pos = m.sum(-1)
        predp = m.sum(-2)
        tot = m.sum((-2, -1))[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / pos, (tot - pos - predp + tp) / (tot - pos)

    obs, boot = confusion_metrics(cm, mel), confusion_metrics(cms, mel)
    overall = {k: ci(np.asarray(boot[k], float), float(obs[k])) for k in ("accuracy", "balanced_accuracy",
                                                                          "melanoma_sensitivity") if k in obs}
    s_obs, p_obs = sens_spec(cm)
    s_b, p_b = sens_spec(cms)
    per_class = {cl: {"sensitivity": ci(s_b[:, k], s_obs[k]), "specificity": ci(p_b[:, k], p_obs[k]),
                      "n": int(cm[k].sum())} for k, cl in enumerate(classes)}
    return {"overall": overall, "per_class": per_class}


def _age_band(age: Any) -> str:
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if np.isnan(a):
        return "unknown"
    return next(label for lo, hi, label in AGE_BANDS if lo <= a < hi)


def holdout_metrics(holdout_dir: Path, data_path: str, progress: bool = True, n_boot: int = 1000) -> dict[str, Any]:
    """Metrics of a holdout run's test predictions (its predictions.csv) with 95 % lesion-bootstrap
    intervals, per class and by sex, age band and site (with counts)."""
    from .cohort import load_cohort
    from .predictions_csv import classes_of, label_indices, probabilities, read_predictions

    pred_file = holdout_dir / "predictions.csv"
    if not pred_file.is_file():
        raise DataError(f"{holdout_dir} has no predictions.csv: not a finished holdout run")
    pred = read_predictions(pred_file)
    classes = classes_of(pred)
    cohort = load_cohort(data_path, None, False, progress)
    rows = cohort.table.set_index("image_id").loc[pred["image_id"]].reset_index()
    y = label_indices(pred, classes)
    p = probabilities(pred, classes).argmax(1)
    groups = rows["lesion_id"].to_numpy() if "lesion_id" in rows else rows["image_id"].to_numpy()
    res = lesion_bootstrap(y, p, groups, classes, n_boot=n_boot)
    subgroups: dict[str, dict[str, Any]] = {}
    keys = {"sex": rows.get("sex"), "age_band": rows.get("age").map(_age_band) if "age" in rows else None,
            "site": rows.get("site")}
    for name, col in keys.items():
        if col is None:
            continue
        col = col.fillna("unknown").astype(str)
        subgroups[name] = {}
        for g in sorted(col.unique()):
            m = (col == g).to_numpy()
            if m.sum() < 10:
                subgroups[name][g] = {"n": int(m.sum()), "balanced_accuracy": None}
                continue
            r = lesion_bootstrap(y[m], p[m], groups[m], classes, n_boot=n_boot // 2)
            subgroups[name][g] = {"n": int(m.sum()), "balanced_accuracy": r["overall"]["balanced_accuracy"],
                                  "accuracy": r["overall"]["accuracy"]}
    proba = probabilities(pred, classes)
    out = {"source": str(holdout_dir), "n_images": int(len(y)), "n_lesions": int(len(set(groups))),
           "overall": {**res["overall"], **auc_bootstrap(y, proba, groups, classes, n_boot=n_boot)},
           "per_class": res["per_class"], "subgroups": subgroups}
    trust_dir = holdout_dir / HOLDOUT_TRUST_DIR
    if (trust_dir / META_FILE).is_file():
        trust = load_bundle(trust_dir).trust
        out["operating_points"] = operating_points(y, proba, groups, classes, trust, n_boot=n_boot)
        out["operating_points"]["fitted_on"] = (f"{trust_dir}: thresholds fitted on the holdout run's own "
                                                "validation rows, applied here to its test rows")
    else:
        out["operating_points"] = {"note": f"not measured: no {trust_dir} (run `dermfuse release "
                                           f"{holdout_dir} --out {trust_dir}` first)"}
    return out


def _interval(values: list[float], observed: float, level: float) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], float)
    tail = (1 - level) / 2 * 100
    return {"value": None if observed is None or np.isnan(observed) else float(observed),
            "low": float(np.percentile(v, tail)) if len(v) else None,
            "high": float(np.percentile(v, 100 - tail)) if len(v) else None}


def auc_bootstrap(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, classes: Sequence[str],
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Macro one-vs-rest AUC (over the classes present) and melanoma AUC, with lesion-bootstrap
    intervals."""
    from sklearn.metrics import roc_auc_score

    y, proba = np.asarray(y, np.int64), np.asarray(proba, np.float64)
    mel = list(classes).index("mel") if "mel" in classes else None

    def aucs(idx: np.ndarray) -> tuple[float, float]:
        yy, pp = y[idx], proba[idx]
        per = [roc_auc_score(yy == k, pp[:, k]) for k in range(len(classes)) if 0 < (yy == k).sum() < len(yy)]
        m = roc_auc_score(yy == mel, pp[:, mel]) if mel is not None and 0 < (yy == mel).sum() < len(yy) else np.nan
        return (float(np.mean(per)) if per else np.nan), float(m)

    obs = aucs(np.arange(len(y)))
    boot = [aucs(idx) for idx in group_resamples(groups, n_boot, seed)]
    out = {"macro_auc": _interval([b[0] for b in boot], obs[0], level)}
    if mel is not None:
        out["melanoma_auc"] = _interval([b[1] for b in boot], obs[1], level)
    return out


def operating_points(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, classes: Sequence[str], trust: Trust,
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The trust part's thresholds on labelled held-out rows, with lesion-bootstrap intervals:
    the selective threshold's coverage and the accuracy / balanced accuracy of the answered
    rows; the melanoma threshold's sensitivity and specificity."""
    from ..evaluation.metrics import balanced_accuracy

    y, proba = np.asarray(y, np.int64), np.asarray(proba, np.float64)
    pred, conf = proba.argmax(1), proba.max(1)
    out: dict[str, Any] = {}
    if trust.selective is not None:
        answered = conf >= trust.selective.threshold

        def sel(idx):
            a = idx[answered[idx]]
            return (answered[idx].mean(), (pred[a] == y[a]).mean() if len(a) else np.nan,
                    balanced_accuracy(y[a], pred[a]) if len(a) else np.nan)

        obs, boot = sel(np.arange(len(y))), [sel(i) for i in group_resamples(groups, n_boot, seed)]
        out["selective"] = {"threshold": trust.selective.threshold, "target_coverage": trust.selective.coverage,
                            **{k: _interval([b[j] for b in boot], obs[j], level)
                               for j, k in enumerate(("coverage", "accuracy_answered", "balanced_accuracy_answered"))}}
    if trust.melanoma is not None and "mel" in classes:
        mel = list(classes).index("mel")
        flag = proba[:, mel] >= trust.melanoma.threshold

        def mel_point(idx):
            pos, neg = idx[y[idx] == mel], idx[y[idx] != mel]
            return (flag[pos].mean() if len(pos) else np.nan, (~flag[neg]).mean() if len(neg) else np.nan)

        obs, boot = mel_point(np.arange(len(y))), [mel_point(i) for i in group_resamples(groups, n_boot, seed)]
        out["melanoma"] = {"threshold": trust.melanoma.threshold,
                           "target_sensitivity": trust.melanoma.target_sensitivity,
                           "n_mel": int((y == mel).sum()),
                           "sensitivity": _interval([b[0] for b in boot], obs[0], level),
                           "specificity": _interval([b[1] for b in boot], obs[1], level)}
    return out
