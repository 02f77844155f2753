"""Post-hoc calibration fitted on the validation part: a prior shift, then temperature.

A model trained with a class-weighted loss (or oversampling) scores as if every class were
equally common, which buys melanoma recall at the price of many nevi called something
else. The prior shift adds ``tau * log(prior)`` to the log-probabilities, where ``prior``
is the class frequency in the training rows: ``tau = 0`` keeps the balanced decision,
``tau = 1`` moves it back to the training frequencies (logit adjustment). ``tau`` is chosen
on the validation part to maximise the mean of accuracy and balanced accuracy, so neither
is traded away blindly. Temperature scaling then fits one scalar T by minimising the
validation log loss; it changes confidence, never the top class.

Mode ``balanced-temperature`` chooses ``tau`` for balanced accuracy alone (post-hoc logit
adjustment, Menon et al. 2021), over a grid that also holds negative values (a shift further
toward the rare classes); ties go to the ``tau`` closest to 0.

    p_calibrated = softmax((log p + tau * log prior) / T)

Everything here is fitted on validation rows only: test rows never choose a parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, get_args

import numpy as np

from ..config import CalibrationMode
from .metrics import balanced_accuracy

__all__ = ["CALIBRATION_MODES", "Calibration", "fit_calibration", "fit_prior_shift", "fit_temperature"]

CALIBRATION_MODES = get_args(CalibrationMode)  # the config's choices (dermfuse.config)
TAU_GRID = np.round(np.linspace(0.0, 1.5, 31), 4)  # step 0.05
BALANCED_TAU_GRID = np.round(np.linspace(-1.0, 1.5, 51), 4)  # step 0.05, 0 included
PRIOR_OBJECTIVES = ("mean", "balanced_accuracy")
_EPS = 1e-12


@dataclass
class Calibration:
    """Parameters of ``softmax((log p + prior_shift * log_prior) / temperature)``."""

    temperature: float = 1.0
    prior_shift: float = 0.0
    log_prior: list[float] | None = None  # (C,), natural log of the training class frequencies
    fitted_on: dict[str, Any] = field(default_factory=dict)  # what chose the parameters

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0 and self.prior_shift == 0.0

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """(N, C) probabilities -> calibrated (N, C) float32 probabilities."""
        proba = np.asarray(proba, np.float64)
        if self.is_identity:
            return proba.astype(np.float32)
        z = np.log(np.clip(proba, _EPS, 1.0))
        if self.prior_shift:
            if self.log_prior is None or len(self.log_prior) != proba.shape[1]:
                raise ValueError(f"calibration: log_prior must have {proba.shape[1]} entries")
            z = z + self.prior_shift * np.asarray(self.log_prior)
        return _softmax(z / self.temperature).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Calibration":
        d = d or {}
        return cls(temperature=float(d.get("temperature", 1.0)), prior_shift=float(d.get("prior_shift", 0.0)),
                   log_prior=d.get("log_prior"), fitted_on=d.get("fitted_on", {}))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    s = s - s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(z: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """T > 0 minimising the mean NLL of softmax(z / T) (golden-section search on log T;
    the NLL is unimodal in T for fixed scores z)."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(z, y, np.exp(c)), _nll(z, y, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(z, y, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(z, y, np.exp(d))
    return float(np.exp((a + b) / 2))


def _score(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    acc = float((pred == y).mean())
    bacc = balanced_accuracy(y, pred)
    return (acc + bacc) / 2, acc, bacc


def fit_prior_shift(proba: np.ndarray, y: np.ndarray, log_prior: np.ndarray,
                    grid: np.ndarray | None = None, objective: str = "mean") -> tuple[float, list[dict[str, float]]]:
    """tau from ``grid`` maximising, for argmax(log p + tau * log prior), either
    (accuracy + balanced accuracy) / 2 (``objective="mean"``, grid ``TAU_GRID``, ties to the
    smallest tau) or balanced accuracy alone (``"balanced_accuracy"``, grid
    ``BALANCED_TAU_GRID``, ties to the tau closest to 0). Returns (tau, the scan)."""
    if objective not in PRIOR_OBJECTIVES:
        raise ValueError(f"prior shift objective {objective!r}: expected one of {', '.join(PRIOR_OBJECTIVES)}")
    if grid is None:
        grid = TAU_GRID if objective == "mean" else BALANCED_TAU_GRID
    logp = np.log(np.clip(np.asarray(proba, np.float64), _EPS, 1.0))
    scan = []
    for tau in grid:
        mean, acc, bacc = _score(y, np.argmax(logp + tau * log_prior, axis=1))
        obj = mean if objective == "mean" else bacc
        scan.append({"tau": float(tau), "objective": obj, "accuracy": acc, "balanced_accuracy": bacc})
    tie = (lambda r: -r["tau"]) if objective == "mean" else (lambda r: -abs(r["tau"]))
    best = max(scan, key=lambda r: (round(r["objective"], 12), tie(r)))
    return best["tau"], scan


def fit_calibration(proba: np.ndarray, y: np.ndarray, train_labels: np.ndarray, mode: str = "prior-temperature",
                    where: str = "validation part") -> Calibration:
    """Fit a Calibration on held-out (validation) probabilities ``proba`` (N, C) with labels ``y``.

    ``train_labels`` give the class prior (frequencies of the training rows; a class absent
    from them counts as one row so its log is finite)."""
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"calibration {mode!r}: expected one of {', '.join(CALIBRATION_MODES)}")
    proba = np.asarray(proba, np.float64)
    y = np.asarray(y, np.int64)
    if mode == "none":
        return Calibration()
    if len(y) == 0:
        raise ValueError("calibration needs validation rows (data.val_fraction > 0)")
    c = proba.shape[1]
    counts = np.maximum(np.bincount(np.asarray(train_labels, np.int64), minlength=c), 1).astype(np.float64)
    log_prior = np.log(counts / counts.sum())
    tau, scan = (0.0, [])
    if mode in ("prior-temperature", "balanced-temperature"):
        objective = "mean" if mode == "prior-temperature" else "balanced_accuracy"
        tau, scan = fit_prior_shift(proba, y, log_prior, objective=objective)
    z = np.log(np.clip(proba, _EPS, 1.0)) + tau * log_prior
    t = fit_temperature(z, y)
    before = _nll(np.log(np.clip(proba, _EPS, 1.0)), y, 1.0)
    fitted = {"where": where, "n": int(len(y)), "mode": mode,
              "objective": ("prior shift: max balanced accuracy; " if mode == "balanced-temperature" else
                            "prior shift: max (accuracy + balanced accuracy) / 2; ") + "temperature: min log loss",
              "val_log_loss_before": before, "val_log_loss_after": _nll(z, y, t)}
    if scan:
        fitted["tau_scan"] = scan
    return Calibration(temperature=t, prior_shift=float(tau), log_prior=log_prior.tolist(), fitted_on=fitted)
