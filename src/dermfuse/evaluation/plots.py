"""Figures: functions that return a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no display, no
global state), rendered with Agg; ``save_figure`` / ``fig_to_png_bytes`` write them out.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as _area, roc_curve

from dermfuse.evaluation.metrics import reliability_bins

__all__ = [
    "plot_history",
    "plot_confusion",
    "plot_roc",
    "plot_reliability",
    "plot_class_distribution",
    "plot_model_comparison",
    "add_heatmap_colorbar",
    "plot_subgroups",
    "fig_to_png_bytes",
    "save_figure",
]

_CMAP = "tab10"


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps[_CMAP if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_history(history: Sequence[Mapping[str, float | None]], title: str | None = None) -> Figure:
    """Training curves (paper Fig. 9): accuracy (left) and loss (right) per epoch.

    history: one dict per epoch with keys epoch, train_loss, val_loss, train_acc, val_acc
    (missing or None values are left out).
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for ax, key, label in ((ax_acc, "acc", "accuracy"), (ax_loss, "loss", "loss")):
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [
                (h.get("epoch", i + 1), h.get(f"{split}_{key}"))
                for i, h in enumerate(history)
                if h.get(f"{split}_{key}") is not None
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, markersize=3, label=f"{split} {label}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.25" on short runs
        ax.set_ylabel(label)
        ax.set_title(f"Model {label}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion(
    cm: Any, classes: Sequence[str], normalize: bool = False, title: str | None = None
) -> Figure:
    """Confusion matrix (paper Fig. 10), rows = true class, columns = predicted.

    cm: (C, C) counts. normalize=True shows each row as fractions of its true class
    (rows with no images stay 0). Every cell is annotated.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"cm of shape {cm.shape}; expected ({len(classes)}, {len(classes)})")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    else:
        shown = cm
    n = len(classes)
    side = max(4.5, 0.75 * n + 2)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(shown.max(), 1.0)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "images")
    for i in range(n):
        for j in range(n):
            v = shown[i, j]
            text = f"{v:.2f}" if normalize else f"{int(round(v))}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if v > 0.55 * vmax else "black")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    return fig


def plot_roc(y_true: Any, proba: Any, classes: Sequence[str], title: str | None = None) -> Figure:
    """One-vs-rest ROC curve per class (AUC in the legend) and the chance diagonal.

    y_true: (N,) int; proba: (N, C). Classes without both positives and negatives have no
    curve and are listed as 'n/a' in the legend.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.subplots()
    for k, (name, color) in enumerate(zip(classes, _colors(len(classes)))):
        pos = y == k
        if pos.all() or not pos.any():
            ax.plot([], [], color=color, label=f"{name} (n/a)")
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, k])
        auc = float(_area(fpr, tpr))
        ax.plot(fpr, tpr, color=color, lw=1.5, label=f"{name} (AUC {auc:.3f})")
    finish_roc_axes(ax, title or "ROC, one vs rest")
    return fig


def finish_roc_axes(ax: Any, title: str) -> None:
    """Chance diagonal, limits, labels and legend shared by the ROC figures."""
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def plot_reliability(y_true: Any, proba: Any, n_bins: int = 15, title: str | None = None) -> Figure:
    """Reliability diagram (top-label accuracy vs confidence per bin) with the ECE in the
    title, over a histogram of confidences. Two axes."""
    from dermfuse.evaluation.metrics import expected_calibration_error

    conf, acc, count, edges = reliability_bins(y_true, proba, n_bins)
    ece = expected_calibration_error(y_true, proba, n_bins)
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    full = count > 0
    ax.bar(centers[full], acc[full], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centers[full], conf[full] - acc[full], bottom=acc[full], width=width,
           edgecolor="tab:red", color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"Reliability (ECE = {ece:.3f}, {n_bins} bins)")
    ax_hist.bar(centers, count, width=width, edgecolor="black", color="grey")
    ax_hist.set_xlabel("confidence (top-class probability)")
    ax_hist.set_ylabel("images")
    return fig


def plot_class_distribution(counts: Mapping[str, int], title: str = "Class distribution") -> Figure:
    """Bar chart of images per class with the count on each bar (paper Fig. 4)."""
    names = list(counts)
    values = [int(counts[k]) for k in names]
    fig = Figure(figsize=(max(5.0, 0.8 * len(names) + 2), 4), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, values, color=_colors(len(names)), edgecolor="black")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=2, fontsize=9)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.margins(y=0.12)
    return fig


def plot_model_comparison(
    summary: Mapping[str, Mapping[str, tuple[float, float] | Sequence[float]]],
    metrics: Sequence[str] = ("accuracy", "macro_f1", "balanced_accuracy"),
    title: str = "Model comparison (mean ± std over folds)",
) -> Figure:
    """Grouped bars (paper Fig. 8): one group per model, one bar per metric, error bars
    = std. summary: model -> metric -> (mean, std); missing metrics are left out."""
    models = list(summary)
    n_m = len(metrics)
    width = 0.8 / max(n_m, 1)
    x = np.arange(len(models))
    fig = Figure(figsize=(max(6.0, 1.4 * len(models) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    for j, (metric, color) in enumerate(zip(metrics, _colors(n_m))):
        means, stds = [], []
        for m in models:
            v = summary[m].get(metric)
            mean, std = (v[0], v[1]) if v is not None else (math.nan, math.nan)
            means.append(math.nan if mean is None else mean)
            stds.append(0.0 if std is None or (isinstance(std, float) and math.isnan(std)) else std)
        bars = ax.bar(x + (j - (n_m - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                      color=color, edgecolor="black", label=metric.replace("_", " "))
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.2f}" for v in means],
                     padding=2, fontsize=7)
    ax.set_xticks(x, labels=models)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=min(n_m, 4))
    return fig


def add_heatmap_colorbar(fig: Figure, axes: Sequence[Any] | None = None,
                         label: str = "class activation (0 = none, 1 = strongest)") -> Figure:
    """Add a colour bar of the heatmaps' jet colours (OpenCV's table, as `cam_render.colorize`
    draws them) beside ``axes`` (default: every axis of ``fig``); returns ``fig``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    from dermfuse.explain.render import jet_lut

    cmap = ListedColormap(jet_lut().astype(np.float64) / 255.0, name="opencv_jet")
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=list(axes if axes is not None else fig.axes),
                       shrink=0.8, pad=0.02)
    bar.set_label(label)
    return fig


def plot_subgroups(result: Mapping[str, Any], metric: str = "balanced_accuracy",
                   title: str | None = None) -> Figure:
    """Forest plot of one metric per subgroup (a ``subgroup_metrics`` result): a dot and
    its interval per subgroup, grouped by key, the overall value as a dashed line; groups
    flagged too small to judge are drawn hollow and grey, with their image count."""
    rows = list(result["subgroups"])
    overall = result["overall"][metric]
    fig = Figure(figsize=(7.0, 0.32 * len(rows) + 1.4), layout="constrained")
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    labels = []
    for yv, r in zip(ys, rows):
        v = r[metric]
        labels.append(f"{r['by']}: {r['group']} (n={r['n_images']})")
        if v["value"] is None:
            continue
        lo = v["low"] if v["low"] is not None else v["value"]
        hi = v["high"] if v["high"] is not None else v["value"]
        colour = "0.6" if r["too_small"] else "C0"
        ax.errorbar(v["value"], yv, xerr=[[v["value"] - lo], [hi - v["value"]]], fmt="o", color=colour,
                    mfc="white" if r["too_small"] else colour, capsize=2, ms=5)
    if overall["value"] is not None:
        ax.axvline(overall["value"], color="black", ls="--", lw=1, label=f"overall {overall['value']:.3f}")
    ax.set_yticks(ys, labels=labels, fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"{metric.replace('_', ' ')} ({int(round(100 * result.get('level', 0.95)))} % "
                  f"{result.get('resampled_by', 'lesion')}-bootstrap interval)")
    ax.set_title(title or f"{metric.replace('_', ' ')} by subgroup (hollow grey: too small to judge)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _close(fig: Figure) -> None:
    """Release a figure; only pyplot-managed figures need it."""
    if getattr(fig, "number", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


def fig_to_png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    """PNG bytes of ``fig``; closes the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        _close(fig)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. .png, .pdf, .svg; parent
    folders are created); closes the figure and returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(p, dpi=dpi)
    finally:
        _close(fig)
    return p
