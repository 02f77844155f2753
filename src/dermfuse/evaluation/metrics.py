"""Classification metrics: pure functions of ``y_true: (N,) int`` (class index) and
``proba: (N, C) float`` (class probabilities, rows summing to 1).

Decisions are the argmax of ``proba`` (ties go to the lowest index). Functions that only
need decisions (accuracy, balanced accuracy, confusion matrix) also take predicted labels
``(N,) int`` in place of ``proba``. Undefined values (a class with no positives, ...) are
NaN; ``compute_metrics`` turns them into None so its dict is JSON-serialisable.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

__all__ = [
    "group_resamples",
    "accuracy",
    "balanced_accuracy",
    "confusion_matrix",
    "per_class_report",
    "macro_f1",
    "weighted_f1",
    "auc_macro",
    "melanoma_sensitivity",
    "sensitivity_at_specificity",
    "log_loss",
    "reliability_bins",
    "expected_calibration_error",
    "compute_metrics",
    "BOOTSTRAP_METRICS",
    "confusion_metrics",
    "paired_bootstrap",
]


def _labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true of shape {y.shape}; expected (N,) class indices")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true holds non-integer values; expected class indices")
        y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"y_true holds {y.min()}; expected class indices >= 0")
    return y.astype(np.int64, copy=False)


def _proba(y: np.ndarray, proba: Any) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"proba of shape {p.shape}; expected ({y.shape[0]}, C)")
    if y.size and y.max() >= p.shape[1]:
        raise ValueError(f"y_true holds class {y.max()} but proba has only {p.shape[1]} columns")
    return p


def _pred(y: np.ndarray, proba_or_pred: Any) -> tuple[np.ndarray, int]:
    """Predicted labels (N,) and the number of classes C."""
    a = np.asarray(proba_or_pred)
    if a.ndim == 2:
        p = _proba(y, a)
        return p.argmax(axis=1), p.shape[1]
    pred = _labels(a)
    if pred.shape != y.shape:
        raise ValueError(f"predictions of shape {pred.shape}; expected {y.shape}")
    n = int(max(y.max(initial=-1), pred.max(initial=-1))) + 1
    return pred, n


def accuracy(y_true: Any, proba: Any) -> float:
    """Fraction of argmax decisions equal to y_true."""
    y = _labels(y_true)
    pred, _ = _pred(y, proba)
    return float(np.mean(pred == y)) if y.size else math.nan


def confusion_matrix(y_true: Any, proba: Any, n_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts; rows = true class, columns = predicted class."""
    y = _labels(y_true)
    pred, n = _pred(y, proba)
    n = n_classes if n_classes is not None else n
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def _recalls(cm: np.ndarray) -> np.ndarray:
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def balanced_accuracy(y_true: Any, proba: Any) -> float:
    """Mean per-class recall over the classes present in y_true (the ISIC metric)."""
    r = _recalls(confusion_matrix(y_true, proba))
    return float(np.nanmean(r)) if np.any(~np.isnan(r)) else math.nan


def _ovr_auc(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    pos = y == k
    if pos.all() or not pos.any():
        return math.nan
    return float(roc_auc_score(pos, scores))


def per_class_report(y_true: Any, proba: Any, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """class -> precision, recall, f1, sensitivity (= recall), specificity, auc (one vs
    rest, on proba[:, k]), support. NaN where undefined (e.g. no positives)."""
    y = _labels(y_true)
    p = _proba(y, proba)
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for proba with {p.shape[1]} columns")
    cm = confusion_matrix(y, p)
    n = cm.sum()
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(classes):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = n - tp - fn - fp
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / (tp + fn) if tp + fn else math.nan
        out[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else math.nan,
            "sensitivity": float(recall),
            "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
            "auc": _ovr_auc(y, p[:, k], k),
            "support": int(tp + fn),
        }
    return out


def macro_f1(y_true: Any, proba: Any) -> float:
    """Unweighted mean F1 over the classes that occur in y_true or in the predictions."""
    y = _labels(y_true)
    pred, _ = _pred(y, proba)
    return float(f1_score(y, pred, average="macro", zero_division=0)) if y.size else math.nan


def weighted_f1(y_true: Any, proba: Any) -> float:
    """Support-weighted mean F1."""
    y = _labels(y_true)
    pred, _ = _pred(y, proba)
    return float(f1_score(y, pred, average="weighted", zero_division=0)) if y.size else math.nan


def auc_macro(y_true: Any, proba: Any) -> float:
    """Mean one-vs-rest ROC AUC over the classes that have both positives and negatives."""
    y = _labels(y_true)
    p = _proba(y, proba)
    aucs = [_ovr_auc(y, p[:, k], k) for k in range(p.shape[1])]
    valid = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(valid)) if valid else math.nan


def melanoma_sensitivity(y_true: Any, proba: Any, classes: Sequence[str], name: str = "mel") -> float | None:
    """Recall of class ``name`` ('mel'); None where the class is not among ``classes``
    or has no positives in y_true."""
    if name not in classes:
        return None
    y = _labels(y_true)
    pred, _ = _pred(y, proba)
    k = list(classes).index(name)
    pos = y == k
    return float(np.mean(pred[pos] == k)) if pos.any() else None


def sensitivity_at_specificity(positive: Any, score: Any, specificity: float = 0.90) -> float:
    """The highest sensitivity over thresholds ``t`` (positive where ``score > t``) whose
    specificity on these rows is at least ``specificity``: a point of these rows' own ROC
    curve, so the threshold is fitted on the rows it scores (for a held-out claim, fix the
    threshold on validation rows instead). NaN without positives or without negatives."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    if pos.shape != s.shape or pos.ndim != 1:
        raise ValueError(f"positive {pos.shape} and score {s.shape}: expected two (N,) arrays")
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity: expected 0..1, got {specificity!r}")
    if pos.all() or not pos.any():
        return math.nan
    neg = np.sort(s[~pos])[::-1]
    allowed = math.floor((1.0 - specificity) * neg.size + 1e-9)  # false positives the specificity allows
    if allowed >= neg.size:
        return 1.0
    return float(np.mean(s[pos] > neg[allowed]))  # above the first negative that must stay negative


def log_loss(y_true: Any, proba: Any, eps: float = 1e-15) -> float:
    """Mean -log p(true class), with p clipped to [eps, 1]."""
    y = _labels(y_true)
    p = _proba(y, proba)
    if not y.size:
        return math.nan
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], eps, 1.0))))


def reliability_bins(
    y_true: Any, proba: Any, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-label reliability over equal-width confidence bins (lo, hi] on [0, 1].

    Returns (confidence (n_bins,), accuracy (n_bins,), count (n_bins,), edges (n_bins+1,));
    confidence and accuracy are NaN in empty bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = _labels(y_true)
    p = _proba(y, proba)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # bin b holds (edges[b], edges[b+1]]
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return mean_conf, mean_acc, count, edges


def expected_calibration_error(y_true: Any, proba: Any, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of |bin| / N * |accuracy - mean confidence|."""
    conf, acc, count, _ = reliability_bins(y_true, proba, n_bins)
    n = count.sum()
    if n == 0:
        return math.nan
    full = count > 0
    return float(np.sum(count[full] / n * np.abs(acc[full] - conf[full])))


def jsonable(x: Any) -> Any:
    """NaN -> None, numpy scalars/arrays -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x


def compute_metrics(y_true: Any, proba: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Every metric above in one JSON-serialisable dict (NaN -> None).

    Keys: accuracy, balanced_accuracy, macro_f1, weighted_f1, auc_macro, ece, log_loss,
    melanoma_sensitivity, per_class (class -> dict), confusion_matrix (C x C list),
    classes, n_images.
    """
    y = _labels(y_true)
    p = _proba(y, proba)
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for proba with {p.shape[1]} columns")
    return jsonable(
        {
            "accuracy": accuracy(y, p),
            "balanced_accuracy": balanced_accuracy(y, p),
            "macro_f1": macro_f1(y, p),
            "weighted_f1": weighted_f1(y, p),
            "auc_macro": auc_macro(y, p),
            "ece": expected_calibration_error(y, p),
            "log_loss": log_loss(y, p),
            "melanoma_sensitivity": melanoma_sensitivity(y, p, classes),
            "per_class": per_class_report(y, p, classes),
            "confusion_matrix": confusion_matrix(y, p),
            "classes": list(classes),
            "n_images": int(y.size),
        }
    )


BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_sensitivity")
"""Decision metrics the paired bootstrap resamples (each is a function of the confusion
matrix, so thousands of resamples cost one matrix product)."""


def confusion_metrics(cm: np.ndarray, mel: int | None = None) -> dict[str, np.ndarray]:
    """BOOTSTRAP_METRICS of a stack of confusion matrices (..., C, C), rows = true class,
    with the definitions of ``dermfuse.evaluation.metrics``: balanced accuracy = mean recall over the
    classes present; macro F1 = mean F1 over the classes present in the labels or the
    predictions; melanoma sensitivity = recall of class ``mel`` (NaN without it)."""
    cm = np.asarray(cm, np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(-1), cm.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        accuracy = tp.sum(-1) / cm.sum((-2, -1))
        out = {"accuracy": accuracy, "balanced_accuracy": np.nanmean(recall, -1), "macro_f1": np.nanmean(f1, -1)}
    out["melanoma_sensitivity"] = recall[..., mel] if mel is not None else np.full(accuracy.shape, np.nan)
    return out


def group_resamples(groups: np.ndarray, n_boot: int, seed: int = 0):
    """Row indices of ``n_boot`` resamples of whole groups (lesions) with replacement."""
    _, gidx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(gidx, kind="stable")
    starts = np.searchsorted(gidx[order], np.arange(gidx.max() + 2))
    rows = [order[starts[g]:starts[g + 1]] for g in range(len(starts) - 1)]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([rows[g] for g in rng.integers(0, len(rows), len(rows))])


def paired_bootstrap(y: np.ndarray, pred: np.ndarray, pred_ref: np.ndarray, groups: np.ndarray,
                     classes: Sequence[str], n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Difference ``pred`` − ``pred_ref`` (predicted class indices of two variants on the
    same rows with labels ``y``) in each BOOTSTRAP_METRICS metric, with a percentile
    interval from resampling whole groups (lesions) with replacement: images of one lesion
    are not independent, so resampling rows would make the interval too narrow.

    Returns metric -> {"diff" (on all rows), "low", "high" (the ``level`` interval)}."""
    y, pred, pred_ref = (np.asarray(a, np.int64) for a in (y, pred, pred_ref))
    if not (len(y) == len(pred) == len(pred_ref) == len(groups)) or len(y) == 0:
        raise ValueError("paired_bootstrap needs the same, non-empty rows for labels, both predictions and groups")
    c = len(classes)
    mel = list(classes).index("mel") if "mel" in classes else None
    _, gidx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(gidx.max()) + 1
    onehot = [np.zeros((len(y), c * c)) for _ in range(2)]
    for o, p in zip(onehot, (pred, pred_ref)):
        o[np.arange(len(y)), y * c + p] = 1.0
    observed = [confusion_metrics(o.sum(0).reshape(c, c), mel) for o in onehot]
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in BOOTSTRAP_METRICS}
    for start in range(0, n_boot, 250):  # chunks keep the (boots x rows) weights small
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(250, n_boot - start))
        w = counts[:, gidx].astype(np.float64)  # each row weighted by how often its group was drawn
        a, b = (confusion_metrics((w @ o).reshape(-1, c, c), mel) for o in onehot)
        for m in BOOTSTRAP_METRICS:
            diffs[m].append(a[m] - b[m])
    tail = (1.0 - level) / 2 * 100
    out: dict[str, dict[str, float | None]] = {}
    for m in BOOTSTRAP_METRICS:
        d = np.concatenate(diffs[m])
        d = d[~np.isnan(d)]
        diff = float(observed[0][m] - observed[1][m])
        out[m] = {"diff": None if np.isnan(diff) else diff,
                  "low": float(np.percentile(d, tail)) if len(d) else None,
                  "high": float(np.percentile(d, 100 - tail)) if len(d) else None}
    return out
