"""``dermfuse demo``: the whole pipeline on embedded synthetic data, in minutes on a laptop
CPU. Generates a synthetic HAM10000-layout data set (with a few planted defects so the
cleaning report has something to say), trains the demo's models briefly on the same
lesion-grouped holdout — the plain CNN, FT-MultiCNN on the image, the paper's own
configuration (FT-MultiCNN on heatmap input, heatmaps from a CAM backbone fine-tuned on the
training rows only) and FT-MultiCNN with the pretrained EfficientNet-Lite0 image branch — and
writes one report comparing them, with the paper's Fig. 4 (class distribution), Fig. 6 (CAM
triptych) and Fig. 8 (model comparison). Everything it shows is labelled SYNTHETIC."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from ..config import RunConfig, apply_overrides
from ..constants import SYNTHETIC_BANNER
from ..data.synth import make_synthetic
from .predictions_csv import read_predictions
from .holdout import RunResult, load_cohort, train_run
from ..evaluation.report import Section, figure_html, table_html, write_report

__all__ = ["run_demo", "DEMO_MODELS", "DemoModel", "demo_config"]

console = Console(stderr=True)

@dataclass(frozen=True)
class DemoModel:
    key: str  # run folder name
    label: str  # what the report calls it
    overrides: dict[str, Any] = field(default_factory=dict)  # section.key -> value on top of demo_config


DEMO_MODELS = (
    DemoModel("cnn", "plain CNN (paper's baseline, image only)", {"model.name": "cnn"}),
    DemoModel("ft_multicnn", "FT-MultiCNN, image + metadata", {"model.name": "ft_multicnn"}),
    DemoModel("ft_multicnn_heatmap", "FT-MultiCNN, heatmap + metadata (the paper's configuration)",
              {"model.name": "ft_multicnn", "model.input": "heatmap", "model.pretrained": True}),
    DemoModel("ft_multicnn_lite0", "FT-MultiCNN, pretrained Lite0 image branch + metadata",
              {"model.name": "ft_multicnn", "model.image_backbone": "efficientnet_lite0",
               "model.pretrained": True, "train.lr": 5e-4}),
)
"""The demo's runs, in report order. The heatmap run's CAM backbone is the pretrained
EfficientNet-Lite0 (offline ImageNet weights), fine-tuned on the training rows only."""

_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "melanoma_sensitivity", "ece")


def demo_config(data: Path, out: Path, model: DemoModel | str, epochs: int, seed: int = 0) -> RunConfig:
    """The run config of one demo model (a `DemoModel` or a registered model name)."""
    spec = model if isinstance(model, DemoModel) else DemoModel(model, model, {"model.name": model})
    cfg = RunConfig()
    cfg.data.path = str(data)
    cfg.data.image_size = 128  # the paper's input size
    cfg.model.pretrained = False  # the paper's models train from scratch here
    cfg.cam.epochs = 4
    cfg.train.epochs = epochs
    cfg.train.patience = 4
    cfg.train.lr = 1e-3
    cfg.data.split_seed = cfg.train.init_seed = seed
    apply_overrides(cfg, dict(spec.overrides))
    cfg.out = str(out / spec.key)
    return cfg


def run_demo(out: str | Path = "demo-out", n: int = 1000, epochs: int = 10, seed: int = 0,
             progress: bool = True, models: tuple[DemoModel, ...] = DEMO_MODELS) -> Path:
    """Run the demo; returns the path of the combined report.html."""
    t0 = time.time()
    out = Path(out)
    data = out / f"synthetic-data-n{n}-seed{seed}"
    if not (data / "metadata.csv").exists():
        console.print(f"[bold]Generating {n} synthetic images[/bold] (SYNTHETIC, not patient data) → {data}")
        make_synthetic(data, n=n, seed=seed, defects=True)
    cohort = load_cohort(data, progress=progress)
    if progress:
        console.print(cohort.report.render())  # once: every run below cleans the same files the same way
    results: dict[str, RunResult] = {}
    seconds: dict[str, float] = {}
    for spec in models:
        console.print(f"[bold]Training {spec.label}[/bold] ({epochs} epochs at most, 128 px, lesion-grouped holdout)")
        t = time.time()
        results[spec.key] = train_run(demo_config(data, out, spec, epochs, seed), progress=progress,
                                      show_cleaning=False)
        seconds[spec.key] = time.time() - t
    path = _demo_report(out, cohort, models, results, seconds, time.time() - t0)
    console.print(f"\n[bold green]Demo report:[/bold green] {path.resolve()}   [yellow]SYNTHETIC data[/yellow]")
    for spec in models:
        m = results[spec.key].metrics
        console.print(f"  {spec.key:20s} accuracy {m['accuracy']:.3f}  balanced accuracy "
                      f"{m['balanced_accuracy']:.3f}  macro F1 {m['macro_f1']:.3f}  ({seconds[spec.key]:.0f} s)")
    console.print(f"  chance level: balanced accuracy {1 / len(cohort.classes):.3f}; total {(time.time() - t0) / 60:.1f} min")
    return path


def _png(fig) -> bytes:
    from ..evaluation.plots import fig_to_png_bytes

    return fig_to_png_bytes(fig)


def _data_section(cohort) -> Section:
    from ..evaluation.plots import plot_class_distribution

    counts = cohort.summary["classes"]
    dropped = {k: v for k, v in cohort.report.counts.items() if v}
    fixed = {k: v for k, v in cohort.report.fixed.items() if v}
    text = (f"<p>{cohort.report.n_in} rows read, {cohort.report.n_out} kept after cleaning. Dropped: "
            + (", ".join(f"{v} × {k.replace('_', ' ')}" for k, v in dropped.items()) or "nothing")
            + ". Fixed in kept rows: " + (", ".join(f"{v} × {k.replace('_', ' ')}" for k, v in fixed.items()) or "nothing")
            + ". Missing after cleaning (kept, encoded as missing): "
            + ", ".join(f"{k} {v}" for k, v in cohort.report.missing.items()) + ".</p>")
    return Section("Data after cleaning (paper Fig. 4)", text + "<div class='figs'>" + figure_html(
        _png(plot_class_distribution(counts, "Class distribution after cleaning (SYNTHETIC)")),
        "images per class after cleaning", width=560) + "</div>" +
        table_html(sorted(cohort.report.counts.items()), ("dropped: reason", "rows")))


def _comparison_section(models, results: dict[str, RunResult], seconds: dict[str, float], n_classes: int) -> Section:
    from ..evaluation.plots import plot_model_comparison

    rows = [(spec.label, *(results[spec.key].metrics.get(k) for k in _KEYS), f"{seconds[spec.key]:.0f}")
            for spec in models]
    summary = {spec.key: {k: (results[spec.key].metrics.get(k), None) for k in _KEYS} for spec in models}
    fig = plot_model_comparison(summary, metrics=("accuracy", "balanced_accuracy", "macro_f1"),
                                title="Model comparison on held-out SYNTHETIC lesions (one split)")
    best = max(models, key=lambda s: results[s.key].metrics.get("balanced_accuracy") or 0.0)
    n_test = results[best.key].metrics.get("n_images")
    return Section("Comparison on the held-out lesions (paper Fig. 8)",
                   table_html(rows, ("model", *_KEYS, "seconds")) +
                   f"<p>{n_test} held-out images of lesions no model saw in training. Chance level: "
                   f"balanced accuracy {1 / n_classes:.3f}. Best: {best.label}.</p>" +
                   figure_html(_png(fig), "accuracy, balanced accuracy and macro F1 per model", width=720))


def _cam_section(result: RunResult, cohort, n_images: int = 4) -> Section | None:
    """Original | heatmap | overlay (paper Fig. 6) for a few held-out images, from the heatmap
    run's own CAM backbone (fine-tuned on training rows only), with a colour bar."""
    from ..inference.bundle import load_bundle
    from ..explain.gradcam import plot_triptych
    from ..data.cache import build_cache
    from ..explain.heatmap_input import compute_maps
    from ..evaluation.plots import add_heatmap_colorbar

    if result.bundle is None:
        return None
    bundle = load_bundle(result.bundle)
    if bundle.cam_model is None:
        return None
    pred = read_predictions(result.run_dir / "predictions.csv")
    picks = pred.groupby("label", sort=False).head(1).head(n_images)  # one held-out image per class
    table = cohort.table.set_index("image_id").loc[picks["image_id"]].reset_index()
    images = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=False).images
    images = np.ascontiguousarray(images)
    maps = compute_maps(bundle.cam_model.eval(), images, method=bundle.cam_method)
    titles = [f"true {r.label}, predicted {r.pred}" for r in picks.itertuples()]
    fig = add_heatmap_colorbar(plot_triptych(images, maps, titles=titles))
    return Section("Class-activation heatmaps (paper Fig. 6)",
                   "<p>Grad-CAM of the CAM backbone's predicted class on held-out images, as the paper's "
                   "FT-MultiCNN sees them (heatmap input). The backbone was fine-tuned on the training rows "
                   "only.</p>" + figure_html(_png(fig), "original | heatmap | overlay (SYNTHETIC images)", width=640))


def _demo_report(out: Path, cohort, models, results: dict[str, RunResult], seconds: dict[str, float],
                 total: float) -> Path:
    sections = [_data_section(cohort), _comparison_section(models, results, seconds, len(cohort.classes))]
    heat = next((results[s.key] for s in models if s.overrides.get("model.input") == "heatmap"), None)
    cam = _cam_section(heat, cohort) if heat is not None else None
    if cam is not None:
        sections.append(cam)
    for spec in models:
        r = results[spec.key]
        plots = r.run_dir / "plots"
        body = "<div class='figs'>"
        for fig, cap in (("curves", "training curves"), ("confusion_normalized", "confusion matrix, row-normalised")):
            if (plots / f"{fig}.png").exists():
                body += figure_html((plots / f"{fig}.png").read_bytes(), f"{spec.key}: {cap}", width=520)
        body += f"</div><p>Full report: <a href='{spec.key}/report.html'>{spec.key}/report.html</a></p>"
        sections.append(Section(spec.label, body))
    return write_report(
        out / "report.html", "dermfuse demo — the paper's models on synthetic lesions", sections,
        subtitle=f"{total / 60:.1f} min on this machine", banners=[SYNTHETIC_BANNER])
