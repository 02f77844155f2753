"""`collect`: merge the finished folds of a cv / ablate run directory into per-fold
tables, mean ± std per metric, pooled out-of-fold metrics, the ablation's paired
differences, the protocol gap, and one report.html (figures embedded).

Reads only the run directory (plan.json, <variant>/fold<K>/), so it runs on any machine
that can see it, while other folds are still running elsewhere."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from rich.console import Console, Group
from rich.table import Table

from ..io import atomic_write, atomic_write_text
from .. import __version__
from ..constants import LEAKY_SPLIT_BANNER, SYNTHETIC_BANNER
from ..errors import DataError
from ..evaluation.metrics import BOOTSTRAP_METRICS, accuracy, balanced_accuracy, compute_metrics, paired_bootstrap
from .predictions_csv import label_indices, probabilities, proba_columns, read_predictions
from ..evaluation.report import Section, figure_html, json_block, table_html, write_report

__all__ = ["METRICS", "collect", "exposed_images", "mean_std", "paired_differences", "render_summary", "protocol_gap"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_sensitivity", "auc_macro", "ece", "log_loss")
"""Metrics in the tables; ece and log_loss are lower-is-better."""
COMPARISON_METRICS = ("accuracy", "macro_f1", "balanced_accuracy")  # the paper's Fig. 8
LEAKY = "@image"
console = Console(stderr=True)


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std" (sample, ddof=1; None for fewer than 2 values), "n"} over the values
    that are not None/NaN."""
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None,
            "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


def paired_differences(per_fold: Sequence[dict[str, Any]], reference: str, metrics: Sequence[str],
                       variants: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-fold differences variant − reference on the folds both finished, and their
    mean ± std per metric.

    per_fold: rows with variant, fold and one value per metric; variants: the order of the
    rows (default: as they appear in per_fold), the reference left out. Returns {"reference",
    "rows": [{variant, n_pairs, metric: {mean, std, n}}], "per_fold": [{variant, fold,
    metric: difference}]}."""
    ref = {r["fold"]: r for r in per_fold if r["variant"] == reference}
    if variants is None:
        variants = list(dict.fromkeys(r["variant"] for r in per_fold))
    variants = [v for v in variants if v != reference]
    rows, diffs = [], []
    for v in variants:
        pairs = [(r, ref[r["fold"]]) for r in per_fold if r["variant"] == v and r["fold"] in ref]
        d = [{"variant": v, "fold": r["fold"],
              **{m: None if r[m] is None or b[m] is None else r[m] - b[m] for m in metrics}} for r, b in pairs]
        diffs += d
        rows.append({"variant": v, "n_pairs": len(d), **{m: mean_std([x[m] for x in d]) for m in metrics}})
    return {"reference": reference, "rows": rows, "per_fold": diffs}


def _pm(s: dict[str, Any] | None, signed: bool = False) -> str:
    if not s or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:+.4f}" if signed else f"{s['mean']:.4f}"
    return text + (f" ± {s['std']:.4f}" if s.get("std") is not None else "")


def protocol_gap(stats: dict[str, dict[str, dict]], pooled: dict[str, dict], metrics: Sequence[str] = METRICS
                 ) -> list[dict[str, Any]]:
    """One row per (variant with an ``@image`` twin, metric): grouped and image-level mean
    ± std over folds, ``inflation`` = image mean − grouped mean (folds differ between
    protocols, so that part is not paired), and the same for the pooled out-of-fold values.
    ``pooled``: variant -> metrics; pass those of ``paired_pooled`` so that both sides of a
    pooled inflation are scored on the same images."""
    rows = []
    for name in stats:
        twin = name + LEAKY
        if name.endswith(LEAKY) or twin not in stats:
            continue
        for m in metrics:
            g, i = stats[name][m], stats[twin][m]
            pg, pi = (pooled.get(name) or {}).get(m), (pooled.get(twin) or {}).get(m)
            rows.append({"variant": name, "metric": m, "grouped": g, "image": i,
                         "inflation": None if g["mean"] is None or i["mean"] is None else i["mean"] - g["mean"],
                         "pooled_grouped": pg, "pooled_image": pi,
                         "pooled_inflation": None if pg is None or pi is None else pi - pg,
                         "pooled_n_images": (pooled.get(name) or {}).get("n_images")})
    return rows


def paired_pooled(oof: dict[str, pd.DataFrame], classes: Sequence[str]) -> dict[str, dict | None]:
    """For each grouped variant with an ``@image`` twin, both protocols' metrics on the
    out-of-fold images that both have scored. Once every fold of both has finished that is
    every image; before, the two protocols' finished test folds overlap only in part, and
    scoring each side on all of its own rows would compare different images."""
    out: dict[str, dict | None] = {}
    for name in oof:
        twin = name + LEAKY
        if name.endswith(LEAKY) or twin not in oof:
            continue
        common = set(oof[name]["image_id"]) & set(oof[twin]["image_id"])
        for v in (name, twin):
            df = oof[v][oof[v]["image_id"].isin(common)].sort_values("image_id")
            out[v] = _score(df, classes) if len(df) else None
    return out


def _score(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """compute_metrics of out-of-fold prediction rows (label, p_<class> columns)."""
    return compute_metrics(label_indices(df, classes), probabilities(df, classes), classes)


def _read_folds(run_dir: Path, plan: dict) -> tuple[list[dict], dict, dict, dict, list[str]]:
    """per-fold rows, histories, predictions and missing folds per variant, warnings."""
    rows, histories, preds, missing, warnings = [], {}, {}, {}, []
    hardware: dict[str, dict[str, list[int]]] = {}  # what the folds trained on -> variant -> folds
    for v in (v["name"] for v in plan["variants"]):
        histories[v], preds[v], missing[v] = [], [], []
        for k in range(plan["folds"]):
            folder = run_dir / v / f"fold{k}"
            if not (folder / "DONE").exists():
                missing[v].append(k)
                continue
            m = json.loads((folder / "metrics.json").read_text())
            rows.append({"variant": v, "fold": k, **{key: m.get(key) for key in METRICS},
                         "n_images": m["n_images"], "seconds": m.get("seconds")})
            hist = folder / "history.json"
            histories[v].append(json.loads(hist.read_text()) if hist.exists() else [])
            preds[v].append(read_predictions(folder / "predictions.csv"))
            warnings += [w for w in m.get("warnings", []) if w not in warnings]
            hardware.setdefault(m.get("hardware", "not recorded"), {}).setdefault(v, []).append(k)
    # folds from before dermfuse recorded it are no evidence of a difference by themselves
    if len(set(hardware) - {"not recorded"}) > 1:
        where = "; ".join(f"{h}: " + ", ".join(f"{v} fold {'/'.join(map(str, f))}" for v, f in by.items())
                          for h, by in hardware.items())
        warnings.append(f"Folds trained on different hardware or precision, which can shift results a little: "
                        f"{where}.")
    return rows, histories, preds, missing, warnings


def collect(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Merge whatever folds have finished. Returns (and writes as summary.json) a dict with
    kind, folds, variants, per_fold (rows), stats (variant -> metric -> mean/std/n),
    pooled (variant -> compute_metrics of the concatenated out-of-fold predictions),
    missing (variant -> folds), complete, best, gap and, for ablate, ablation. Also writes
    summary.csv, per_fold.csv, ablation.csv / gap.csv where they apply, plots/ and
    report.html."""
    run_dir = Path(run_dir)
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise DataError(f"{run_dir}: no plan.json; expected a run directory of `dermfuse cv` or `dermfuse ablate`")
    plan = json.loads(plan_path.read_text())
    classes = plan["data"]["classes"]
    per_fold, histories, preds, missing, warnings = _read_folds(run_dir, plan)
    names = [v["name"] for v in plan["variants"]]
    stats = {v: {m: mean_std([r[m] for r in per_fold if r["variant"] == v]) for m in METRICS} for v in names}
    oof = {v: pd.concat(preds[v], ignore_index=True) for v in names if preds[v]}  # pooled out-of-fold rows
    pooled: dict[str, dict | None] = {}
    for v in names:
        if v not in oof:
            pooled[v] = None
            continue
        pooled[v] = _score(oof[v], classes)
        pooled[v]["n_folds"] = len(preds[v])
    # the best is chosen among the grouped variants: a leaky image-level twin never wins
    ranked = [v for v in names if stats[v]["balanced_accuracy"]["mean"] is not None and not v.endswith(LEAKY)]
    best = max(ranked, key=lambda v: stats[v]["balanced_accuracy"]["mean"]) if ranked else None
    result: dict[str, Any] = {
        "kind": plan["kind"], "run_dir": str(run_dir), "folds": plan["folds"], "split": plan["split_label"],
        "rows": plan.get("rows"),
        "variants": plan["variants"], "per_fold": per_fold, "stats": stats, "pooled": pooled,
        "missing": {v: f for v, f in missing.items() if f}, "complete": not any(missing.values()),
        "best": best, "gap": protocol_gap(stats, paired_pooled(oof, classes)), "warnings": warnings,
    }
    if plan.get("reference"):
        result["ablation"] = paired_differences(per_fold, plan["reference"], METRICS, names)
        ref = plan["reference"]
        result["ablation"]["bootstrap"] = {"reference": ref, **_pooled_bootstrap(
            run_dir, [(v, ref) for v in names if v != ref], oof, classes)}
        # the paper's "metadata helps": each input with the metadata branch minus without it
        without = {v: v.removesuffix("+meta") + "-only" for v in names if v.endswith("+meta")}
        result["ablation"]["metadata_bootstrap"] = _pooled_bootstrap(
            run_dir, [(v, w) for v, w in without.items() if w in names], oof, classes)
    elif best is not None:  # cv: every other grouped model against the best one, on the same rows
        others = [v for v in names if v != best and not v.endswith(LEAKY)]
        if others:
            result["comparison_bootstrap"] = {"reference": best, **_pooled_bootstrap(
                run_dir, [(v, best) for v in others], oof, classes)}
    if result["gap"]:
        twins = list(dict.fromkeys(r["variant"] for r in result["gap"]))
        result["gap_bootstrap"] = _pooled_bootstrap(run_dir, [(v + LEAKY, v) for v in twins], oof, classes)
        boot = {r["reference"]: r for r in result["gap_bootstrap"]["rows"]}
        for r in result["gap"]:
            b = boot.get(r["variant"], {}).get(r["metric"], {})
            r["pooled_inflation_low"], r["pooled_inflation_high"] = b.get("low"), b.get("high")
        result["gap_exposure"] = _gap_exposure(run_dir, twins, oof, classes)
    _write_tables(run_dir, result)
    _report(run_dir, plan, result, histories, preds)
    if progress:
        for v, f in result["missing"].items():
            console.print(f"[yellow]missing[/yellow] {v}: fold(s) {', '.join(map(str, f))} not finished")
        console.print(f"report: {run_dir / 'report.html'}")
    return result


def _pooled_bootstrap(run_dir: Path, pairs: Sequence[tuple[str, str]], oof: dict[str, pd.DataFrame],
                      classes: Sequence[str], n_boot: int = 2000, level: float = 0.95,
                      keep: set[str] | None = None) -> dict[str, Any]:
    """For each (variant, reference) pair, variant − reference on the pooled out-of-fold
    rows (``oof``: variant -> its finished folds' predictions) both scored, with a lesion-bootstrap interval (``metrics.paired_bootstrap``).
    Unlike mean ± std over folds this gives an uncertainty with one or two finished folds,
    and it pairs the two protocols of the protocol gap, whose folds differ but whose pooled
    rows are the same images. Runs whose folds.csv has no group column (begun before it
    had one) resample images instead, and ``resampled`` says so. ``keep``: score only these
    image ids. Each row also holds both sides' accuracy and balanced accuracy on its rows."""
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"image_id": str, "group": str})
    grouped = "group" in folds.columns
    group_of = dict(zip(folds["image_id"], folds["group"])) if grouped else {}
    cols = proba_columns(classes)
    rows = []
    for v, ref in pairs:
        if v not in oof or ref not in oof:
            continue
        df = oof[v].merge(oof[ref][["image_id", *cols]], on="image_id", suffixes=("", "_ref"))
        if keep is not None:
            df = df[df["image_id"].isin(keep)]
        if df.empty:
            continue
        groups = df["image_id"].map(group_of).fillna(df["image_id"]) if grouped else df["image_id"]
        y = label_indices(df, classes)
        diff = paired_bootstrap(y, df[cols].to_numpy().argmax(1), df[[f"{c}_ref" for c in cols]].to_numpy().argmax(1),
                                groups.to_numpy(), classes, n_boot=n_boot, level=level)
        levels = {side: {m: fn(y, df[c].to_numpy()) for m, fn in (("accuracy", accuracy),
                                                                  ("balanced_accuracy", balanced_accuracy))}
                  for side, c in (("variant_scores", cols), ("reference_scores", [f"{c}_ref" for c in cols]))}
        rows.append({"variant": v, "reference": ref, "n_images": len(df), "n_groups": int(groups.nunique()),
                     **diff, **levels})
    return {"n_boot": n_boot, "level": level, "resampled": "lesion" if grouped else "image", "rows": rows}


def exposed_images(folds: pd.DataFrame) -> pd.Series:
    """Per row of a run's folds.csv (image_id, fold_image, group), indexed by image id:
    whether another image of its group lies in another image-level fold, i.e. whether the
    leaky split let the model that scores this image see the same lesion (the group; on data
    with patient ids, the same patient) in its training (or validation) rows."""
    size = folds.groupby("group")["image_id"].transform("size")
    same_fold = folds.groupby(["group", "fold_image"])["image_id"].transform("size")
    return pd.Series((size - same_fold).to_numpy() > 0, index=folds["image_id"].to_numpy())


def _gap_exposure(run_dir: Path, twins: Sequence[str], oof: dict[str, pd.DataFrame],
                  classes: Sequence[str]) -> dict[str, Any] | None:
    """The protocol gap split by exposure: the paired image-level − grouped differences on
    the test images whose lesion the leaky model had seen (another image of it in its
    training folds) and on the others. Leakage acts on the first group only; the second
    shows what the image-level split changes besides (fold composition, chance)."""
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"image_id": str, "group": str})
    if not {"fold_image", "group"} <= set(folds.columns):
        return None
    exposed = exposed_images(folds)
    out: dict[str, Any] = {"n_exposed": int(exposed.sum()), "n_images": int(len(exposed)), "subsets": {}}
    for subset, ids in (("exposed", set(exposed.index[exposed])), ("not exposed", set(exposed.index[~exposed]))):
        out["subsets"][subset] = _pooled_bootstrap(run_dir, [(v + LEAKY, v) for v in twins], oof, classes,
                                                   keep=ids)
    return out


def _write_tables(run_dir: Path, result: dict[str, Any]) -> None:
    def save_csv(df: pd.DataFrame, name: str) -> None:
        atomic_write(run_dir / name, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6f"))

    rows = []
    for v in result["variants"]:
        name, pooled = v["name"], result["pooled"][v["name"]] or {}
        row = {"variant": name, "model": v["model"], "input": v["input"], "metadata": v["use_meta"],
               "split": v["split"], "n_folds": result["stats"][name]["accuracy"]["n"]}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = result["stats"][name][m]["mean"], result["stats"][name][m]["std"]
        row.update({f"pooled_{m}": pooled.get(m) for m in METRICS})
        row["pooled_n_images"] = pooled.get("n_images")
        rows.append(row)
    save_csv(pd.DataFrame(rows), "summary.csv")
    save_csv(pd.DataFrame(result["per_fold"], columns=["variant", "fold", *METRICS, "n_images", "seconds"]),
             "per_fold.csv")
    if "ablation" in result:
        ab = result["ablation"]
        flat = [{"variant": r["variant"], "reference": ab["reference"], "n_pairs": r["n_pairs"],
                 **{f"{m}_diff_{s}": r[m][s] for m in METRICS for s in ("mean", "std")}} for r in ab["rows"]]
        boot = {r["variant"]: r for r in (ab.get("bootstrap") or {}).get("rows", [])}
        for row in flat:
            b = boot.get(row["variant"], {})
            for m in BOOTSTRAP_METRICS:
                for key, col in (("diff", "pooled_diff"), ("low", "ci_low"), ("high", "ci_high")):
                    row[f"{m}_{col}"] = b[m][key] if m in b else None
        save_csv(pd.DataFrame(flat), "ablation.csv")
    if result["gap"]:
        save_csv(pd.DataFrame([{"variant": r["variant"], "metric": r["metric"],
                                "grouped_mean": r["grouped"]["mean"], "grouped_std": r["grouped"]["std"],
                                "image_mean": r["image"]["mean"], "image_std": r["image"]["std"],
                                "inflation": r["inflation"], "pooled_grouped": r["pooled_grouped"],
                                "pooled_image": r["pooled_image"], "pooled_inflation": r["pooled_inflation"],
                                "pooled_inflation_ci_low": r.get("pooled_inflation_low"),
                                "pooled_inflation_ci_high": r.get("pooled_inflation_high"),
                                "pooled_n_images": r.get("pooled_n_images")}
                               for r in result["gap"]]), "gap.csv")
    atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2, default=str))


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


def _report(run_dir: Path, plan: dict, result: dict, histories: dict, preds: dict) -> Path:
    from ..evaluation.plots import fig_to_png_bytes, plot_confusion, plot_history, plot_model_comparison, plot_roc

    classes = plan["data"]["classes"]
    stats, pooled = result["stats"], result["pooled"]
    done = [v["name"] for v in plan["variants"] if pooled[v["name"]] is not None]
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)

    def fig(name: str, figure: Any, caption: str, width: int | None = None) -> str:
        png = fig_to_png_bytes(figure)
        (plots / f"{name.replace('@', '_at_').replace('+', '_')}.png").write_bytes(png)
        return figure_html(png, caption, width)

    by_name = {v["name"]: v for v in plan["variants"]}
    protocol = [("data", plan["data"]["path"]), ("format", plan["data"]["format"]),
                ("clean images", plan["data"]["n_images"]), ("folds", plan["folds"]), ("seed", plan["seed"]),
                ("split", plan["split_label"]),
                *([("rows (inner folds)", f"part(s) {', '.join(plan['rows']['parts'])} of "
                   f"{plan['rows']['split_file']}: {plan['rows']['n_rows']} rows; {plan['rows']['n_left_out']} "
                   "other rows never read")] if plan.get("rows") else []),
                ("finished folds", f"{len(result['per_fold'])} of {plan['folds'] * len(by_name)}")]
    variant_rows = [(v["name"], v["model"], v["input"], "yes" if v["use_meta"] else "no",
                     "image-level (leaky)" if v["split"] == "image" else plan["split_label"],
                     stats[v["name"]]["accuracy"]["n"]) for v in plan["variants"]]
    sections = [Section("Protocol", table_html(protocol, ("", "")) +
                        table_html(variant_rows, ("variant", "model", "image input", "metadata", "split", "folds")))]
    sections.append(Section(
        "Mean ± std over folds",
        table_html([(v, *(_pm(stats[v][m]) for m in METRICS)) for v in by_name], ("variant", *METRICS)) +
        "<p class='muted'>Sample standard deviation (ddof = 1) over the finished folds; "
        "ece and log_loss are lower-is-better.</p>"))
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
    if done:
        curves = "".join(fig(f"curves_{v}", plot_history(_mean_history(histories[v]), title=v),
                             f"{v}: accuracy and loss per epoch, mean over the folds that reached it", 520)
                         for v in done)
        sections.append(Section("Training curves", f"<div class='figs'>{curves}</div>"))
    if result["best"]:
        b = result["best"]
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
        if result["best"]:
            rocs += fig("roc_best", plot_roc(*scored[result["best"]], classes,
                                             title=f"{result['best']}: ROC per class"),
                        f"best variant ({result['best']}), one vs rest per class", 480)
        sections.append(Section("ROC curves", f"<div class='figs'>{rocs}</div>"))
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        sections.append(Section("Config", f"<pre>{html.escape(cfg_path.read_text())}</pre>"))
    sections.append(Section("Data summary", json_block(plan["data"]["summary"])))

    banners = []
    if plan["data"]["synthetic"]:
        banners.append(SYNTHETIC_BANNER)
    if plan["split"] == "image":
        banners.append(LEAKY_SPLIT_BANNER)
    elif any(v["split"] == "image" for v in plan["variants"]):
        banners.append("Variants marked @image use the image-level (leaky) split; they are shown only to measure "
                       "how much that protocol inflates the metrics.")
    warnings = [f"Missing folds — {v}: {', '.join(map(str, f))}. Tables cover finished folds only; "
                f"run them with --fold K, then collect again." for v, f in result["missing"].items()]
    title = {"cv": "cross-validation", "ablate": "ablation"}.get(plan["kind"], plan["kind"])
    return write_report(run_dir / "report.html", f"dermfuse — {plan['folds']}-fold {title}", sections,
                        subtitle=f"{plan['data']['path']} · {plan['split_label']} · dermfuse {__version__}",
                        banners=banners, warnings=warnings + result["warnings"])


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
    rows = [(f"{ref} (reference, absolute)", stats[ref]["accuracy"]["n"], *(_pm(stats[ref][m]) for m in METRICS))]
    rows += [(r["variant"], r["n_pairs"], *(_pm(r[m], signed=True) for m in METRICS)) for r in ab["rows"]]
    per = [(r["variant"], r["fold"], *("–" if r[m] is None else f"{r[m]:+.4f}" for m in METRICS))
           for r in ab["per_fold"]]
    return (table_html(rows, head) +
            f"<p class='muted'>Δ = variant − {html.escape(ref)} on the same fold (same rows, seed and CAM "
            "maps), mean ± std over the folds both finished.</p>" +
            _bootstrap_html(ab.get("bootstrap")) +
            _bootstrap_html(ab.get("metadata_bootstrap"), "What the metadata branch adds, per input") +
            "<h3>Per-fold paired differences</h3>" +
            table_html(per, ("variant", "fold", *(f"Δ {m}" for m in METRICS))))


def _diff_cell(d: dict) -> str:
    """A paired difference with its bootstrap interval: '+0.050 [+0.028, +0.072]'."""
    if d["diff"] is None:
        return "–"
    return f"{d['diff']:+.3f}" + ("" if d["low"] is None else f" [{d['low']:+.3f}, {d['high']:+.3f}]")


def _bootstrap_html(boot: dict | None, title: str = "Pooled paired differences with bootstrap intervals") -> str:
    if not boot or not boot["rows"]:
        return ""
    body = [(r["variant"], r["reference"], r["n_images"], r["n_groups"], *(_diff_cell(r[m]) for m in BOOTSTRAP_METRICS))
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

    body = [(r["variant"], r["metric"], _pm(r["grouped"]), _pm(r["image"]), r["inflation"],
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
                         f"{g['accuracy']:.3f}", f"{i['accuracy']:.3f}", _diff_cell(r["accuracy"]),
                         f"{g['balanced_accuracy']:.3f}", f"{i['balanced_accuracy']:.3f}",
                         _diff_cell(r["balanced_accuracy"])))
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


def render_summary(result: dict[str, Any]) -> Table | Group:
    """The mean ± std table (plus missing folds) for the terminal; for a protocol-gap run
    also the paired inflation, overall and split by exposure."""
    t = Table(title=f"{result['folds']}-fold {result['kind']} ({result['split']})")
    t.add_column("variant")
    t.add_column("folds", justify="right")
    shown = {"accuracy": "accuracy", "balanced_accuracy": "bal. acc.", "macro_f1": "macro F1",
             "melanoma_sensitivity": "mel. sens.", "auc_macro": "AUC"}
    for header in shown.values():
        t.add_column(header, justify="right")
    for v in result["variants"]:
        s = result["stats"][v["name"]]
        t.add_row(v["name"], str(s["accuracy"]["n"]), *(_pm(s[m]) for m in shown))
    if result["missing"]:
        t.caption = "missing: " + "; ".join(f"{v} fold {', '.join(map(str, f))}" for v, f in result["missing"].items())
    gap = _gap_table(result)
    return t if gap is None else Group(t, gap)


def _gap_table(result: dict[str, Any]) -> Table | None:
    """Image-level − grouped on the pooled rows both protocols scored, with the lesion
    bootstrap's interval: on all of them, then on exposed and unexposed images."""
    subsets = [("all", result.get("gap_bootstrap"))]
    subsets += list(((result.get("gap_exposure") or {}).get("subsets") or {}).items())
    rows = [(name, r) for name, boot in subsets if boot for r in boot["rows"]]
    if not rows:
        return None
    shown = {"accuracy": "Δ accuracy", "balanced_accuracy": "Δ bal. acc.", "melanoma_sensitivity": "Δ mel. sens."}
    t = Table(title="protocol gap: image-level − grouped, paired (95 % lesion bootstrap)")
    for header in ("model", "test images", "images"):
        t.add_column(header, justify="right" if header == "images" else "left")
    for header in shown.values():
        t.add_column(header, justify="right")
    for name, r in rows:
        t.add_row(r["reference"], name, str(r["n_images"]), *(_diff_cell(r[m]) for m in shown))
    return t
