"""report.html of a cv / ablate run: the protocol, mean ± std and pooled tables, the model
comparison, the ablation's paired differences, the protocol gap split by exposure, per-fold
metrics, training curves, the best variant's confusion matrix and ROC curves (figures
embedded and also written to plots/)."""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import __version__
from ..constants import LEAKY_SPLIT_BANNER, SYNTHETIC_BANNER
from ..evaluation.metrics import BOOTSTRAP_METRICS
from ..evaluation.report import Section, figure_html, json_block, table_html, write_report
from .cv_stats import METRICS, difference_text, mean_std_text
from .predictions_csv import label_indices, probabilities

__all__ = ["write_cv_report"]

COMPARISON_METRICS = ("accuracy", "macro_f1", "balanced_accuracy")  # the paper's Fig. 8


def write_cv_report(run_dir: Path, plan: dict, result: dict, histories: dict, preds: dict) -> Path:
    """Write run_dir/report.html (and run_dir/plots/*.png) from collect's result; return its path.
    histories, preds: variant -> per finished fold, its history.json rows / predictions."""
    done = [v["name"] for v in plan["variants"] if result["pooled"][v["name"]] is not None]
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    fig = partial(_figure, plots)
    sections = [_protocol_section(plan, result), *_score_sections(plan, result, done, fig),
                *_figure_sections(plan["data"]["classes"], result, histories, preds, done, fig)]
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        sections.append(Section("Config", f"<pre>{html.escape(cfg_path.read_text())}</pre>"))
    sections.append(Section("Data summary", json_block(plan["data"]["summary"])))
    warnings = [f"Missing folds — {v}: {', '.join(map(str, f))}. Tables cover finished folds only; "
                f"run them with --fold K, then collect again." for v, f in result["missing"].items()]
    title = {"cv": "cross-validation", "ablate": "ablation"}.get(plan["kind"], plan["kind"])
    return write_report(run_dir / "report.html", f"dermfuse — {plan['folds']}-fold {title}", sections,
                        subtitle=f"{plan['data']['path']} · {plan['split_label']} · dermfuse {__version__}",
                        banners=_banners(plan), warnings=warnings + result["warnings"])


def _figure(plots: Path, name: str, figure: Any, caption: str, width: int | None = None) -> str:
    """Write ``figure`` to plots/<name>.png and return it as embedded HTML."""
    from ..evaluation.plots import fig_to_png_bytes

    png = fig_to_png_bytes(figure)
    (plots / f"{name.replace('@', '_at_').replace('+', '_')}.png").write_bytes(png)
    return figure_html(png, caption, width)


def _protocol_section(plan: dict, result: dict) -> Section:
    """The data, folds, seed, split and rows, and one row per variant."""
    stats = result["stats"]
    n_variants = len({v["name"] for v in plan["variants"]})
    protocol = [("data", plan["data"]["path"]), ("format", plan["data"]["format"]),
                ("clean images", plan["data"]["n_images"]), ("folds", plan["folds"]), ("seed", plan["seed"]),
                ("split", plan["split_label"]),
                *([("rows (inner folds)", f"part(s) {', '.join(plan['rows']['parts'])} of "
                   f"{plan['rows']['split_file']}: {plan['rows']['n_rows']} rows; {plan['rows']['n_left_out']} "
                   "other rows never read")] if plan.get("rows") else []),
                ("finished folds", f"{len(result['per_fold'])} of {plan['folds'] * n_variants}")]
    variant_rows = [(v["name"], v["model"], v["input"], "yes" if v["use_meta"] else "no",
                     "image-level (leaky)" if v["split"] == "image-leaky" else plan["split_label"],
                     stats[v["name"]]["accuracy"]["n"]) for v in plan["variants"]]
    return Section("Protocol", table_html(protocol, ("", "")) +
                   table_html(variant_rows, ("variant", "model", "image input", "metadata", "split", "folds")))


def _score_sections(plan: dict, result: dict, done: list[str], fig: Callable[..., str]) -> list[Section]:
    """Mean ± std, pooled, model comparison, ablation, protocol gap and per-fold tables."""
    from ..evaluation.plots import plot_model_comparison

    stats, pooled = result["stats"], result["pooled"]
    names = [v["name"] for v in plan["variants"]]
    sections = [Section(
        "Mean ± std over folds",
        table_html([(v, *(mean_std_text(stats[v][m]) for m in METRICS)) for v in dict.fromkeys(names)],
                   ("variant", *METRICS)) +
        "<p class='muted'>Sample standard deviation (ddof = 1) over the finished folds; "
        "ece and log_loss are lower-is-better.</p>")]
    sections.append(Section(
        "Pooled out-of-fold metrics",
        table_html([(v, *(pooled[v].get(m) for m in (*METRICS, "n_images"))) for v in done],
                   ("variant", *METRICS, "n_images")) +
        "<p class='muted'>Every finished fold's test predictions concatenated, then scored once.</p>"))
    if done:
        summary = {v: {m: (stats[v][m]["mean"], stats[v][m]["std"]) for m in COMPARISON_METRICS} for v in done}
        sections.append(Section("Model comparison", fig(
            "comparison", plot_model_comparison(summary, COMPARISON_METRICS),
            "Model comparison (Fig. 8): accuracy, F1 and balanced accuracy, mean ± std over folds") +
            _bootstrap_html(result.get("comparison_bootstrap"))))
    if "ablation" in result:
        sections.append(Section("Ablation: paired differences", _ablation_html(result["ablation"], stats)))
    if result["gap"]:
        sections.append(Section("Protocol gap", _gap_html(result["gap"], plan["split_label"], result.get("gap_bootstrap")) +
                                _exposure_html(result.get("gap_exposure"))))
    fold_rows = [(r["variant"], r["fold"], *(r[m] for m in METRICS), r["n_images"]) for r in result["per_fold"]]
    sections.append(Section("Per-fold metrics", table_html(fold_rows, ("variant", "fold", *METRICS, "n_images"))))
    return sections


def _figure_sections(classes: list[str], result: dict, histories: dict, preds: dict, done: list[str],
                     fig: Callable[..., str]) -> list[Section]:
    """Training curves, the best variant's confusion matrix and the ROC curves."""
    from ..evaluation.plots import plot_confusion, plot_history, plot_roc

    pooled, b = result["pooled"], result["best"]
    sections = []
    if done:
        curves = "".join(fig(f"curves_{v}", plot_history(_mean_history(histories[v]), title=v),
                             f"{v}: accuracy and loss per epoch, mean over the folds that reached it", 520)
                         for v in done)
        sections.append(Section("Training curves", f"<div class='figs'>{curves}</div>"))
    if b:
        cm = np.asarray(pooled[b]["confusion_matrix"])
        sections.append(Section(f"Confusion matrix of the best variant: {b}", (
            "<p class='muted'>Best = highest mean balanced accuracy over folds; pooled out-of-fold "
            "predictions.</p><div class='figs'>" +
            fig("confusion_counts", plot_confusion(cm, classes, title=f"{b}: confusion matrix"), "counts", 520) +
            fig("confusion_normalized", plot_confusion(cm, classes, normalize=True, title=f"{b}: row-normalised"),
                "row-normalised (recall)", 520) + "</div>")))
    if done:
        scored = {}
        for v in done:
            df = pd.concat(preds[v], ignore_index=True)
            scored[v] = (label_indices(df, classes), probabilities(df, classes))
        rocs = fig("roc_variants", _plot_macro_roc(scored, {v: pooled[v]["auc_macro"] for v in done}),
                   "macro-average one-vs-rest ROC per variant, pooled out-of-fold", 480)
        if b:
            rocs += fig("roc_best", plot_roc(*scored[b], classes, title=f"{b}: ROC per class"),
                        f"best variant ({b}), one vs rest per class", 480)
        sections.append(Section("ROC curves", f"<div class='figs'>{rocs}</div>"))
    return sections


def _banners(plan: dict) -> list[str]:
    """Synthetic data; a leaky (image-level) split for the run or for some variants."""
    banners = []
    if plan["data"]["synthetic"]:
        banners.append(SYNTHETIC_BANNER)
    if plan["split"] == "image-leaky":
        banners.append(LEAKY_SPLIT_BANNER)
    elif any(v["split"] == "image-leaky" for v in plan["variants"]):
        banners.append("Variants marked @image use the image-level (leaky) split; they are shown only to measure "
                       "how much that protocol inflates the metrics.")
    return banners


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    """Per epoch (numbered from 1), the mean over the folds that reached it."""
    out = []
    for e in range(max((len(h) for h in histories), default=0)):
        row: dict[str, Any] = {"epoch": e + 1}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            vals = [h[e][key] for h in histories if len(h) > e and h[e].get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None
        out.append(row)
    return out


def _plot_macro_roc(scored: dict[str, tuple[np.ndarray, np.ndarray]], auc: dict[str, float | None]) -> Any:
    """One macro-average ROC curve per variant: per-class one-vs-rest TPR interpolated on a
    common FPR grid and averaged over the classes that have positives and negatives."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    from ..evaluation.plots import finish_roc_axes

    grid = np.linspace(0.0, 1.0, 201)
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.subplots()
    for name, (y, proba) in scored.items():
        tprs = []
        for k in range(proba.shape[1]):
            pos = y == k
            if pos.any() and not pos.all():
                fpr, tpr, _ = roc_curve(pos, proba[:, k])
                tprs.append(np.interp(grid, fpr, tpr))
        if tprs:
            label = f"{name} (AUC {auc[name]:.3f})" if auc.get(name) is not None else name
            ax.plot(grid, np.mean(tprs, axis=0), lw=1.5, label=label)
    finish_roc_axes(ax, "ROC, macro average over classes")
    return fig


def _ablation_html(ab: dict, stats: dict) -> str:
    ref = ab["reference"]
    head = ("variant", "folds paired", *(f"Δ {m}" for m in METRICS))
    rows = [(f"{ref} (reference, absolute)", stats[ref]["accuracy"]["n"], *(mean_std_text(stats[ref][m]) for m in METRICS))]
    rows += [(r["variant"], r["n_pairs"], *(mean_std_text(r[m], signed=True) for m in METRICS)) for r in ab["rows"]]
    per = [(r["variant"], r["fold"], *("–" if r[m] is None else f"{r[m]:+.4f}" for m in METRICS))
           for r in ab["per_fold"]]
    return (table_html(rows, head) +
            f"<p class='muted'>Δ = variant − {html.escape(ref)} on the same fold (same rows, seed and CAM "
            "maps), mean ± std over the folds both finished.</p>" +
            _bootstrap_html(ab.get("bootstrap")) +
            _bootstrap_html(ab.get("metadata_bootstrap"), "What the metadata branch adds, per input") +
            "<h3>Per-fold paired differences</h3>" +
            table_html(per, ("variant", "fold", *(f"Δ {m}" for m in METRICS))))


def _bootstrap_html(boot: dict | None, title: str = "Pooled paired differences with bootstrap intervals") -> str:
    if not boot or not boot["rows"]:
        return ""
    body = [(r["variant"], r["reference"], r["n_images"], r["n_groups"], *(difference_text(r[m]) for m in BOOTSTRAP_METRICS))
            for r in boot["rows"]]
    unit = "lesions" if boot["resampled"] == "lesion" else "images"
    return (f"<h3>{html.escape(title)}</h3>" +
            table_html(body, ("variant", "minus", "images", unit, *(f"Δ {m}" for m in BOOTSTRAP_METRICS))) +
            f"<p class='muted'>Δ = variant − the model in the second column, on the out-of-fold rows both "
            f"scored; in brackets the {boot['level']:.0%} interval from {boot['n_boot']} resamples of whole "
            f"{unit} with replacement. It measures the noise of the test rows for these trained models; "
            f"the noise of training (seed, fold) shows only in the spread over folds, so read both.</p>")


def _gap_html(rows: list[dict], grouped_label: str, boot: dict | None) -> str:
    def interval(r: dict) -> str:
        if r.get("pooled_inflation_low") is None:
            return "–"
        return f"[{r['pooled_inflation_low']:+.3f}, {r['pooled_inflation_high']:+.3f}]"

    body = [(r["variant"], r["metric"], mean_std_text(r["grouped"]), mean_std_text(r["image"]), r["inflation"],
             r["pooled_grouped"], r["pooled_image"], r["pooled_inflation"], interval(r), r.get("pooled_n_images"))
            for r in rows]
    note = ""
    if boot and boot["rows"]:
        unit = "lesions" if boot["resampled"] == "lesion" else "images"
        note = (f" The interval pairs the two protocols on the pooled out-of-fold rows both scored: "
                f"{boot['level']:.0%} of {boot['n_boot']} resamples of whole {unit} (decision metrics only; "
                f"test-row noise for these trained models, not training noise).")
    return (table_html(body, ("model", "metric", grouped_label, "image-level (leaky)", "inflation",
                              "pooled grouped", "pooled image-level", "pooled inflation", "interval",
                              "pooled images")) +
            "<p class='muted'>Inflation = image-level − grouped: how much letting images of one lesion sit "
            "in both training and test folds flatters each metric (for ece and log_loss, lower is better, "
            "so a negative value is the flattering one). The pooled columns score both protocols on the "
            "out-of-fold images that both have scored (all images once every fold has finished)."
            + html.escape(note) + "</p>")


def _exposure_html(exp: dict | None) -> str:
    if not exp:
        return ""
    body = []
    for subset, boot in exp["subsets"].items():
        for r in boot["rows"]:
            g, i = r["reference_scores"], r["variant_scores"]
            body.append((r["reference"], subset, r["n_images"], r["n_groups"],
                         f"{g['accuracy']:.3f}", f"{i['accuracy']:.3f}", difference_text(r["accuracy"]),
                         f"{g['balanced_accuracy']:.3f}", f"{i['balanced_accuracy']:.3f}",
                         difference_text(r["balanced_accuracy"])))
    if not body:
        return ""
    return ("<h3>Where the gap comes from: test images whose lesion the leaky model had seen</h3>" +
            table_html(body, ("model", "test images", "images", "lesions", "accuracy grouped",
                              "accuracy image-level", "Δ accuracy", "bal. acc. grouped",
                              "bal. acc. image-level", "Δ bal. acc.")) +
            f"<p class='muted'>Exposed: another image of the same lesion lies in another image-level fold, "
            f"so the image-level model had it in its training (or validation) rows: {exp['n_exposed']} of "
            f"the data set's {exp['n_images']} images. Δ = image-level − grouped on the images both "
            f"protocols have scored (all of them once every fold has finished), "
            "with lesion-bootstrap intervals. Leakage can act on exposed images only; a difference on the "
            "others comes from the folds' other differences.</p>")
