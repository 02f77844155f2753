"""`collect`: merge the finished folds of a cv / ablate run directory into per-fold
tables, mean ± std per metric, pooled out-of-fold metrics, the ablation's paired
differences, the protocol gap, and one report.html (figures embedded).

Reads only the run directory (plan.json, <variant>/fold<K>/), so it runs on any machine
that can see it, while other folds are still running elsewhere. The statistics live in
`dermfuse.runs.cv_stats` (re-exported here), the CSV tables in `cv_tables`, report.html in
`cv_html`; this module reads the folds and prints the terminal summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console, Group
from rich.table import Table

from ..config import V1_SPLIT_NAMES
from ..errors import DataError
from ..training.loop import one_based_history
from .cv_html import write_cv_report
from .cv_stats import (
    LEAKY,
    METRICS,
    difference_text,
    exposed_images,
    gap_exposure,
    mean_std,
    mean_std_text,
    paired_differences,
    paired_pooled,
    pooled_bootstrap,
    protocol_gap,
    score_rows,
)
from .cv_tables import write_tables
from .predictions_csv import read_predictions

__all__ = ["METRICS", "collect", "exposed_images", "mean_std", "paired_differences", "paired_pooled",
           "protocol_gap", "render_summary"]

console = Console(stderr=True)


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
            histories[v].append(one_based_history(json.loads(hist.read_text())) if hist.exists() else [])
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


def read_plan(path: Path) -> dict[str, Any]:
    """A run directory's plan.json; one written before config_version 2 gets its split
    names in today's (lesion -> grouped, image -> image-leaky: what they meant then)."""
    plan = json.loads(Path(path).read_text())
    if plan.get("config_version", 1) == 1:
        plan["split"] = V1_SPLIT_NAMES.get(plan["split"], plan["split"])
        plan["variants"] = [{**v, "split": V1_SPLIT_NAMES.get(v["split"], v["split"])} for v in plan["variants"]]
    return plan


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
    plan = read_plan(plan_path)
    classes = plan["data"]["classes"]
    per_fold, histories, preds, missing, warnings = _read_folds(run_dir, plan)
    names = [v["name"] for v in plan["variants"]]
    stats = {v: {m: mean_std([r[m] for r in per_fold if r["variant"] == v]) for m in METRICS} for v in names}
    oof = {v: pd.concat(preds[v], ignore_index=True) for v in names if preds[v]}  # pooled out-of-fold rows
    pooled = _pooled(names, oof, preds, classes)
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
        result["ablation"] = _ablation(run_dir, per_fold, plan["reference"], names, oof, classes)
    elif best is not None:  # cv: every other grouped model against the best one, on the same rows
        others = [v for v in names if v != best and not v.endswith(LEAKY)]
        if others:
            result["comparison_bootstrap"] = {"reference": best, **pooled_bootstrap(
                run_dir, [(v, best) for v in others], oof, classes)}
    if result["gap"]:
        _add_gap_intervals(result, run_dir, oof, classes)
    write_tables(run_dir, result)
    write_cv_report(run_dir, plan, result, histories, preds)
    if progress:
        for v, f in result["missing"].items():
            console.print(f"[yellow]missing[/yellow] {v}: fold(s) {', '.join(map(str, f))} not finished")
        console.print(f"report: {run_dir / 'report.html'}")
    return result


def _pooled(names: list[str], oof: dict[str, pd.DataFrame], preds: dict, classes: list[str]) -> dict[str, dict | None]:
    """Per variant, the metrics of its pooled out-of-fold rows and its fold count (None: no fold finished)."""
    pooled: dict[str, dict | None] = {}
    for v in names:
        if v not in oof:
            pooled[v] = None
            continue
        pooled[v] = score_rows(oof[v], classes)
        pooled[v]["n_folds"] = len(preds[v])
    return pooled


def _ablation(run_dir: Path, per_fold: list[dict], ref: str, names: list[str], oof: dict[str, pd.DataFrame],
              classes: list[str]) -> dict[str, Any]:
    """Per-fold paired differences to the reference, with the pooled bootstraps of every
    variant minus the reference and of each input with metadata minus without."""
    ablation = paired_differences(per_fold, ref, METRICS, names)
    ablation["bootstrap"] = {"reference": ref, **pooled_bootstrap(
        run_dir, [(v, ref) for v in names if v != ref], oof, classes)}
    # the paper's "metadata helps": each input with the metadata branch minus without it
    without = {v: v.removesuffix("+meta") + "-only" for v in names if v.endswith("+meta")}
    ablation["metadata_bootstrap"] = pooled_bootstrap(
        run_dir, [(v, w) for v, w in without.items() if w in names], oof, classes)
    return ablation


def _add_gap_intervals(result: dict[str, Any], run_dir: Path, oof: dict[str, pd.DataFrame],
                       classes: list[str]) -> None:
    """The protocol gap's pooled bootstrap (leaky twin minus grouped), its intervals on each
    gap row, and the gap split by exposure."""
    twins = list(dict.fromkeys(r["variant"] for r in result["gap"]))
    result["gap_bootstrap"] = pooled_bootstrap(run_dir, [(v + LEAKY, v) for v in twins], oof, classes)
    boot = {r["reference"]: r for r in result["gap_bootstrap"]["rows"]}
    for r in result["gap"]:
        b = boot.get(r["variant"], {}).get(r["metric"], {})
        r["pooled_inflation_low"], r["pooled_inflation_high"] = b.get("low"), b.get("high")
    result["gap_exposure"] = gap_exposure(run_dir, twins, oof, classes)


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
        t.add_row(v["name"], str(s["accuracy"]["n"]), *(mean_std_text(s[m]) for m in shown))
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
        t.add_row(r["reference"], name, str(r["n_images"]), *(difference_text(r[m]) for m in shown))
    return t
