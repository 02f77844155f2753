"""Every figure function returns a Figure with the expected axes and artists and saves
a PNG."""

from __future__ import annotations

import os

import numpy as np
import pytest
from matplotlib.figure import Figure

from dermfuse import HAM10000_CLASSES
from dermfuse.evaluation.metrics import confusion_matrix
from dermfuse.evaluation.plots import fig_to_png_bytes, plot_class_distribution, plot_confusion, plot_history, plot_model_comparison, plot_reliability, plot_roc, save_figure

CLASSES = list(HAM10000_CLASSES)
C = len(CLASSES)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def preds() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.choice(C, size=300, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    y[:C] = np.arange(C)
    logits = rng.normal(size=(300, C)) + 2.0 * np.eye(C)[y]
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _save(fig: Figure, tmp_path, name: str) -> None:
    out = os.environ.get("DERMFUSE_PLOT_DIR")  # set to keep the PNGs for a look
    path = save_figure(fig, os.path.join(out or tmp_path, f"{name}.png"), dpi=60)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 2_000


def test_history(tmp_path) -> None:
    history = [
        {"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.6 / e + 0.02 * e, "train_acc": 1 - 0.5 / e, "val_acc": 0.9 - 0.5 / e}
        for e in range(1, 11)
    ]
    history[0]["val_loss"] = None  # missing values are left out
    fig = plot_history(history)
    ax_acc, ax_loss = fig.axes
    assert len(fig.axes) == 2
    assert "accuracy" in ax_acc.get_ylabel() and "loss" in ax_loss.get_ylabel()
    assert len(ax_acc.lines) == 2 and len(ax_loss.lines) == 2
    assert len(ax_loss.lines[1].get_xdata()) == 9
    _save(fig, tmp_path, "history")


def test_history_ticks_whole_epochs() -> None:
    """A 3-epoch run has ticks at whole epochs only, not at 1.25, 1.5, ..."""
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.3 * e, "val_acc": 0.2 * e}
               for e in (1, 2, 3)]
    fig = plot_history(history)
    fig.canvas.draw()  # let the locator choose the ticks
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion(tmp_path, preds, normalize: bool) -> None:
    y, proba = preds
    cm = confusion_matrix(y, proba)
    fig = plot_confusion(cm, CLASSES, normalize=normalize)
    assert len(fig.axes) == 2  # matrix + colour bar
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == C * C
    if normalize:
        assert texts[0] == f"{cm[0, 0] / cm[0].sum():.2f}"
    else:
        assert texts[0] == str(cm[0, 0]) and sum(map(int, texts)) == len(y)
    _save(fig, tmp_path, f"confusion_{'norm' if normalize else 'counts'}")


def test_roc(tmp_path, preds) -> None:
    y, proba = preds
    fig = plot_roc(y, proba, CLASSES)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.lines) == C + 1  # one per class + chance
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[CLASSES.index("mel")].startswith("mel (AUC 0.")
    _save(fig, tmp_path, "roc")


def test_reliability(tmp_path, preds) -> None:
    y, proba = preds
    fig = plot_reliability(y, proba, n_bins=15)
    assert len(fig.axes) == 2
    assert "ECE = 0." in fig.axes[0].get_title()
    assert len(fig.axes[1].patches) == 15  # one count bar per bin
    _save(fig, tmp_path, "reliability")


def test_class_distribution(tmp_path) -> None:
    counts = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
    fig = plot_class_distribution(counts, title="HAM10000")
    ax = fig.axes[0]
    assert len(ax.patches) == 7
    assert "6,705" in [t.get_text() for t in ax.texts]
    _save(fig, tmp_path, "class_distribution")


def test_model_comparison(tmp_path) -> None:
    summary = {
        "cnn": {"accuracy": (0.71, 0.02), "macro_f1": (0.41, 0.03), "balanced_accuracy": (0.40, 0.03)},
        "resnet50": {"accuracy": (0.78, 0.01), "macro_f1": (0.55, 0.02), "balanced_accuracy": (0.52, 0.04)},
        "ft_multicnn": {"accuracy": (0.80, 0.01), "macro_f1": (0.60, 0.02)},  # one metric missing
    }
    fig = plot_model_comparison(summary)
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 3
    assert len(ax.get_legend().get_texts()) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == list(summary)
    _save(fig, tmp_path, "model_comparison")


def test_png_bytes() -> None:
    assert fig_to_png_bytes(plot_class_distribution({"a": 1, "b": 2}, "t"))[:8] == PNG
