"""When not to trust an answer: the trust part of a bundle.

Three parts, each fitted without test rows and carried in ``bundle.json["trust"]``:

- **selective prediction**: a threshold on the top (calibrated) probability chosen on
  validation rows so that a stated share of them (``coverage``, default 0.90) is answered;
  below it the answer is "uncertain" (refer).
- **out of distribution**: a score of the image features: the Mahalanobis distance of one
  layer's channel statistics (per-channel mean and standard deviation of its activations)
  to their training mean, with a Ledoit-Wolf covariance, both fitted on training rows. The
  layer (or the pooled features of older bundles) is chosen by AUROC against design
  out-of-distribution images, and the threshold keeps ``keep`` (0.95) of the validation
  images in distribution. Above it the answer has no class. Its arrays live in
  ``trust.safetensors`` beside the weights, checked by SHA-256 like them.
- **melanoma operating point**: a threshold on P(mel) chosen on validation rows for a target
  sensitivity (0.85); ``--operating-point melanoma`` answers 'mel' whenever P(mel) reaches it.

Every answer gets a status, 'ok' | 'uncertain' | 'out_of_distribution'. A bundle without a
trust part answers 'ok' with the argmax, as before."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BundleError, InputError

__all__ = ["STATUSES", "OPERATING_POINTS", "TRUST_FILE", "Assessment", "Selective", "Melanoma", "OOD", "Trust",
           "fit_selective", "fit_melanoma", "fit_ood", "fit_ood_layers", "ood_scores", "auroc", "risk_coverage",
           "selective_report", "load_trust", "save_trust_arrays"]

STATUSES = ("ok", "uncertain", "out_of_distribution")
OPERATING_POINTS = ("argmax", "melanoma")
TRUST_FILE = "trust.safetensors"
OOD_METHODS = ("mahalanobis", "gaussian", "max_probability")


@dataclass
class Assessment:
    """The verdict on one answer."""

    status: str  # ok | uncertain | out_of_distribution
    top_class: str | None  # None when out of distribution
    confidence: float  # the top probability
    ood_score: float | None = None
    operating_point: str = "argmax"

    @property
    def reliable(self) -> bool:
        """Whether the probabilities may be relied on (False out of distribution)."""
        return self.status != "out_of_distribution"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "top_class": self.top_class, "confidence": self.confidence,
                "ood_score": self.ood_score, "probabilities_reliable": self.reliable,
                "operating_point": self.operating_point}


@dataclass
class Selective:
    threshold: float  # answer when top probability >= threshold
    coverage: float  # target share of validation rows answered
    achieved: float  # share of validation rows answered at the threshold
    n: int  # validation rows it was chosen on
    score: str = "max_probability"


@dataclass
class Melanoma:
    threshold: float  # 'mel' when P(mel) >= threshold
    target_sensitivity: float
    sensitivity: float  # on the validation rows it was chosen on
    specificity: float
    n_mel: int
    n: int


@dataclass
class OOD:
    method: str  # mahalanobis | gaussian | max_probability
    threshold: float  # out of distribution when score > threshold
    keep: float  # share of validation images kept in distribution
    n_fit: int  # training rows the means and covariance were fitted on
    n_val: int
    means: np.ndarray | None = None  # (K, F) float32 (K = classes, or 1 for 'gaussian')
    precision: np.ndarray | None = None  # (F, F) float32, inverse of the shared covariance
    selection: dict[str, Any] = field(default_factory=dict)  # AUROC of each method when it was chosen
    layer: str | None = None  # channel statistics of this module's output; None = pooled features

    def score(self, proba: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """(N,) score, higher = further from the training images."""
        return ood_scores(self.method, proba, features, self.means, self.precision)


def ood_scores(method: str, proba: np.ndarray, features: np.ndarray | None, means: np.ndarray | None,
               precision: np.ndarray | None) -> np.ndarray:
    """Out-of-distribution score (N,) for one method; see `fit_ood`."""
    if method == "max_probability":
        return 1.0 - np.asarray(proba, np.float64).max(axis=1)
    if features is None or means is None or precision is None:
        raise InputError(f"OOD method {method!r} needs image features, class means and a precision matrix")
    f = np.asarray(features, np.float64)
    mu = np.asarray(means, np.float64)
    p = np.asarray(precision, np.float64)
    fp = f @ p  # (N, F)
    quad = np.einsum("nf,nf->n", fp, f)[:, None] - 2 * fp @ mu.T + np.einsum("kf,fg,kg->k", mu, p, mu)[None]
    return np.sqrt(np.maximum(quad.min(axis=1), 0.0))  # distance to the nearest mean


@dataclass
class Trust:
    selective: Selective | None = None
    ood: OOD | None = None
    melanoma: Melanoma | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)  # which rows, from which run

    def assess(self, proba: np.ndarray, features: np.ndarray | None, classes: Sequence[str],
               operating_point: str = "argmax") -> list[Assessment]:
        """One `Assessment` per row of ``proba`` (N, C)."""
        proba = np.asarray(proba, np.float64)
        idx = self.decide(proba, classes, operating_point)
        conf = proba.max(axis=1)
        scores = self.ood.score(proba, features) if self.ood is not None else None
        out = []
        for i in range(len(proba)):
            if scores is not None and scores[i] > self.ood.threshold:
                status = "out_of_distribution"
            elif self.selective is not None and conf[i] < self.selective.threshold:
                status = "uncertain"
            else:
                status = "ok"
            out.append(Assessment(status, None if status == "out_of_distribution" else classes[int(idx[i])],
                                  float(conf[i]), None if scores is None else float(scores[i]), operating_point))
        return out

    def decide(self, proba: np.ndarray, classes: Sequence[str], operating_point: str = "argmax") -> np.ndarray:
        """Class index per row at an operating point: the argmax, or 'mel' whenever
        P(mel) >= the melanoma threshold (else the argmax of the other classes)."""
        if operating_point not in OPERATING_POINTS:
            raise InputError(f"operating point {operating_point!r}: expected one of {list(OPERATING_POINTS)}")
        proba = np.asarray(proba, np.float64)
        if operating_point == "argmax":
            return proba.argmax(axis=1)
        if self.melanoma is None or "mel" not in classes:
            raise InputError("this model carries no melanoma operating point (a bundle made by `dermfuse "
                             "release` has one); use --operating-point argmax")
        mel = list(classes).index("mel")
        rest = proba.copy()
        rest[:, mel] = -1.0
        return np.where(proba[:, mel] >= self.melanoma.threshold, mel, rest.argmax(axis=1))

    # -- (de)serialisation --

    def to_dict(self, sha256: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"format": "dermfuse-trust/1", "fitted_on": self.fitted_on,
                             "selective": asdict(self.selective) if self.selective else None,
                             "melanoma": asdict(self.melanoma) if self.melanoma else None, "ood": None}
        if self.ood is not None:
            o = {k: v for k, v in asdict(self.ood).items() if k not in ("means", "precision")}
            if self.ood.means is not None:
                o["file"] = TRUST_FILE
                o["sha256"] = sha256
            d["ood"] = o
        return d


def save_trust_arrays(bundle_dir: str | Path, trust: Trust) -> str | None:
    """Write the OOD arrays to ``bundle_dir/trust.safetensors``; returns its SHA-256 (None
    when the method needs no arrays)."""
    if trust.ood is None or trust.ood.means is None:
        return None
    from safetensors.numpy import save_file

    path = Path(bundle_dir) / TRUST_FILE
    save_file({"means": np.ascontiguousarray(trust.ood.means, np.float32),
               "precision": np.ascontiguousarray(trust.ood.precision, np.float32)}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_trust(bundle_dir: str | Path, info: dict[str, Any] | None) -> Trust | None:
    """The trust part described by ``bundle.json["trust"]`` (None for an older bundle).
    Raises BundleError for a missing or changed trust.safetensors or a malformed entry."""
    if not info:
        return None
    try:
        sel = Selective(**info["selective"]) if info.get("selective") else None
        mel = Melanoma(**info["melanoma"]) if info.get("melanoma") else None
        ood = None
        if info.get("ood"):
            o = dict(info["ood"])
            file, digest = o.pop("file", None), o.pop("sha256", None)
            ood = OOD(**o)
            if ood.method not in OOD_METHODS:
                raise ValueError(f"unknown OOD method {ood.method!r}")
            if file is not None:
                path = Path(bundle_dir) / file
                if not path.is_file():
                    raise BundleError(f"{bundle_dir}: {file} (the out-of-distribution score) is missing")
                if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                    raise BundleError(f"{path}: checksum mismatch (file is truncated or was changed)")
                from safetensors.numpy import load_file

                arrays = load_file(str(path))
                ood.means, ood.precision = arrays["means"], arrays["precision"]
            elif ood.method != "max_probability":
                raise ValueError(f"OOD method {ood.method!r} needs {TRUST_FILE}")
        return Trust(sel, ood, mel, dict(info.get("fitted_on", {})))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{bundle_dir}: malformed trust part in bundle.json ({type(e).__name__}: {e})") from None


# --- fitting (validation and training rows only) -------------------------------------------


def fit_selective(proba_val: np.ndarray, coverage: float = 0.90) -> Selective:
    """Threshold on the top probability so that ``coverage`` of the validation rows are
    answered (ties answered too, so the achieved coverage is at least the target)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage {coverage}: expected a share in (0, 1]")
    conf = np.sort(np.asarray(proba_val, np.float64).max(axis=1))[::-1]
    if len(conf) == 0:
        raise ValueError("fit_selective: no validation rows")
    t = float(conf[math.ceil(coverage * len(conf)) - 1])
    return Selective(t, float(coverage), float((conf >= t).mean()), len(conf))


def fit_melanoma(proba_val: np.ndarray, y_val: np.ndarray, classes: Sequence[str],
                 target_sensitivity: float = 0.85) -> Melanoma:
    """Threshold on P(mel): the highest one that still finds ``target_sensitivity`` of the
    validation melanomas."""
    classes = list(classes)
    if "mel" not in classes:
        raise ValueError(f"no 'mel' class among {classes}")
    mel = classes.index("mel")
    y = np.asarray(y_val)
    p = np.asarray(proba_val, np.float64)[:, mel]
    pos = np.sort(p[y == mel])[::-1]
    if len(pos) == 0:
        raise ValueError("fit_melanoma: no melanoma among the validation rows")
    t = float(pos[math.ceil(target_sensitivity * len(pos)) - 1])
    neg = p[y != mel]
    return Melanoma(t, float(target_sensitivity), float((pos >= t).mean()),
                    float((neg < t).mean()) if len(neg) else float("nan"), int(len(pos)), int(len(y)))


def _class_gaussian(features: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Means (K, F) per class (one mean when y is None) and the precision of the shared,
    Ledoit-Wolf-shrunk covariance of the centred features."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, np.float64)
    if y is None:
        means = f.mean(axis=0, keepdims=True)
        centred = f - means
    else:
        labels = np.unique(y)
        means = np.stack([f[y == k].mean(axis=0) for k in labels])
        centred = f - means[np.searchsorted(labels, y)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return means.astype(np.float32), lw.precision_.astype(np.float32)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling ``out_scores`` (positives, higher) from ``in_scores``."""
    from sklearn.metrics import roc_auc_score

    s = np.r_[np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)]
    return float(roc_auc_score(np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))], s))


def fit_ood(train_features: np.ndarray, y_train: np.ndarray, val_proba: np.ndarray, val_features: np.ndarray,
            keep: float = 0.95, ood_proba: np.ndarray | None = None, ood_features: np.ndarray | None = None,
            method: str | None = None) -> OOD:
    """Fit the OOD score on training rows and its threshold on validation rows.

    With ``method=None`` the method whose AUROC (validation images vs. the given synthetic
    out-of-distribution images ``ood_*``) is highest is chosen; every AUROC is recorded in
    ``selection``. The threshold keeps ``keep`` of the validation images in distribution."""
    fitted: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {
        "mahalanobis": _class_gaussian(train_features, np.asarray(y_train)),
        "gaussian": _class_gaussian(train_features, None),
        "max_probability": (None, None),
    }
    selection: dict[str, Any] = {}
    if ood_proba is not None:
        for name, (mu, prec) in fitted.items():
            selection[name] = auroc(ood_scores(name, val_proba, val_features, mu, prec),
                                    ood_scores(name, ood_proba, ood_features, mu, prec))
    if method is None:
        method = max(selection, key=selection.get) if selection else "mahalanobis"
    if method not in fitted:
        raise ValueError(f"OOD method {method!r}: expected one of {list(fitted)}")
    mu, prec = fitted[method]
    val_scores = ood_scores(method, val_proba, val_features, mu, prec)
    threshold = float(np.quantile(val_scores, keep))
    return OOD(method, threshold, float(keep), int(len(train_features)), int(len(val_scores)), mu, prec,
               {"auroc_val_vs_synthetic_ood": selection} if selection else {})


def fit_ood_layers(train: dict[str, np.ndarray], val: dict[str, np.ndarray], design: dict[str, np.ndarray],
                   keep: float = 0.95) -> OOD:
    """Out-of-distribution score on the best of several feature sets, each keyed by layer
    path ('pooled' = the pooled image features): one Gaussian per set (mean and Ledoit-Wolf
    covariance of the training rows' features, ``train[k]`` (N, F_k)), scored by AUROC of the
    validation images ``val[k]`` against the design out-of-distribution images ``design[k]``.
    The highest AUROC wins; ties go to the larger share of design images flagged at the
    threshold, then to the deeper layer (later key). No test rows take part."""
    table: dict[str, Any] = {}
    best: tuple[tuple[float, float, int], str] | None = None
    for rank, key in enumerate(train):
        mu, prec = _class_gaussian(train[key], None)
        s_val = ood_scores("gaussian", None, val[key], mu, prec)
        s_ood = ood_scores("gaussian", None, design[key], mu, prec)
        threshold = float(np.quantile(s_val, keep))
        a, flagged = auroc(s_val, s_ood), float((s_ood > threshold).mean())
        table[key] = {"auroc": a, "design_flagged_share": flagged}
        if best is None or (a, flagged, rank) > best[0]:
            best = ((a, flagged, rank), key)
            chosen = (mu, prec, threshold)
    if best is None:
        raise ValueError("fit_ood_layers: no feature sets")
    key = best[1]
    mu, prec, threshold = chosen
    return OOD("gaussian", threshold, float(keep), int(len(train[key])), int(len(val[key])), mu, prec,
               {"design_auroc_by_layer": table, "chosen": key}, None if key == "pooled" else key)


# --- evaluation ------------------------------------------------------------------------------


def risk_coverage(y: np.ndarray, proba: np.ndarray) -> dict[str, list[float]]:
    """Risk-coverage curve: rows answered in order of falling top probability; for each
    coverage k/N, the error rate (1 - accuracy) of the k answered rows."""
    proba = np.asarray(proba, np.float64)
    order = np.argsort(-proba.max(axis=1), kind="stable")
    correct = (proba.argmax(axis=1) == np.asarray(y))[order]
    k = np.arange(1, len(correct) + 1)
    risk = 1.0 - np.cumsum(correct) / k
    return {"coverage": (k / len(correct)).tolist(), "risk": risk.tolist(),
            "threshold": proba.max(axis=1)[order].tolist()}


def selective_report(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], trust: Trust | None,
                     features: np.ndarray | None = None, operating_point: str = "argmax") -> dict[str, Any]:
    """What the trust part does on labelled rows: coverage, accuracy and balanced accuracy
    of the answered rows, the melanoma operating point's sensitivity/specificity, the share
    flagged out of distribution, and the area under the risk-coverage curve."""
    from ..evaluation.metrics import balanced_accuracy

    y = np.asarray(y, np.int64)
    proba = np.asarray(proba, np.float64)
    curve = risk_coverage(y, proba)
    out: dict[str, Any] = {"aurc": float(np.mean(curve["risk"])) if len(y) else None}
    if trust is None:
        return out
    a = trust.assess(proba, features, classes, "argmax")
    answered = np.array([x.status == "ok" for x in a])
    pred = proba.argmax(axis=1)
    out["status_counts"] = {s: int(sum(x.status == s for x in a)) for s in STATUSES}
    if trust.selective is not None:
        conf_ok = proba.max(axis=1) >= trust.selective.threshold
        out["selective"] = {
            "threshold": trust.selective.threshold, "target_coverage": trust.selective.coverage,
            "coverage": float(conf_ok.mean()),
            "accuracy": float((pred[conf_ok] == y[conf_ok]).mean()) if conf_ok.any() else None,
            "balanced_accuracy": balanced_accuracy(y[conf_ok], pred[conf_ok]) if conf_ok.any() else None,
            "accuracy_all": float((pred == y).mean()), "balanced_accuracy_all": balanced_accuracy(y, pred),
            "answered_ok_share": float(answered.mean()),
        }
    if trust.melanoma is not None and "mel" in classes:
        mel = list(classes).index("mel")
        flag = trust.decide(proba, classes, "melanoma") == mel
        pos, neg = y == mel, y != mel
        out["melanoma_operating_point"] = {
            "threshold": trust.melanoma.threshold, "target_sensitivity": trust.melanoma.target_sensitivity,
            "sensitivity": float(flag[pos].mean()) if pos.any() else None,
            "specificity": float((~flag[neg]).mean()) if neg.any() else None,
            "argmax_sensitivity": float((pred[pos] == mel).mean()) if pos.any() else None,
            "argmax_specificity": float((pred[neg] != mel).mean()) if neg.any() else None,
            "n_mel": int(pos.sum()),
        }
    if trust.ood is not None:
        out["ood"] = {"method": trust.ood.method, "threshold": trust.ood.threshold,
                      "flagged_share": out["status_counts"]["out_of_distribution"] / max(len(y), 1)}
    return out


def plot_risk_coverage(y: np.ndarray, proba: np.ndarray, shipped: float | None = None, title: str = ""):
    """Figure: error rate of the answered rows against the share answered; a marker at the
    shipped threshold's coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = risk_coverage(y, proba)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(curve["coverage"], curve["risk"], color="#2a5caa", lw=1.6)
    if shipped is not None and len(curve["coverage"]):
        conf = np.asarray(proba).max(axis=1)
        cov = float((conf >= shipped).mean())
        k = max(int(round(cov * len(conf))) - 1, 0)
        ax.scatter([cov], [curve["risk"][k]], color="#c0392b", zorder=3,
                   label=f"shipped threshold {shipped:.3f}: coverage {cov:.2f}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("risk (error rate of answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(title or "risk-coverage curve", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
