"""The statistics of a cv / ablate run: mean ± std over folds, paired per-fold differences,
the protocol gap (image-level − grouped), pooled out-of-fold scores with lesion-bootstrap
intervals, and which test images the leaky split exposed. `mean_std_text` and
`difference_text` are how the tables (HTML and terminal) write these numbers.

`dermfuse.runs.cv_report.collect` computes them for a run directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..evaluation.metrics import accuracy, balanced_accuracy, compute_metrics, paired_bootstrap
from .predictions_csv import label_indices, probabilities, proba_columns

__all__ = ["LEAKY", "METRICS", "difference_text", "exposed_images", "gap_exposure", "mean_std", "mean_std_text",
           "paired_differences", "paired_pooled", "pooled_bootstrap", "protocol_gap", "score_rows"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_sensitivity", "auc_macro", "ece", "log_loss")
"""Metrics in the tables; ece and log_loss are lower-is-better."""
LEAKY = "@image"
"""The suffix of a variant's image-level (leaky split) twin."""


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
            out[v] = score_rows(df, classes) if len(df) else None
    return out


def score_rows(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """compute_metrics of out-of-fold prediction rows (label, p_<class> columns)."""
    return compute_metrics(label_indices(df, classes), probabilities(df, classes), classes)


def pooled_bootstrap(run_dir: Path, pairs: Sequence[tuple[str, str]], oof: dict[str, pd.DataFrame],
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


def gap_exposure(run_dir: Path, twins: Sequence[str], oof: dict[str, pd.DataFrame],
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
        out["subsets"][subset] = pooled_bootstrap(run_dir, [(v + LEAKY, v) for v in twins], oof, classes,
                                                  keep=ids)
    return out


# --- how the numbers read in the tables -------------------------------------------------


def mean_std_text(s: dict[str, Any] | None, signed: bool = False) -> str:
    """A mean_std dict as '0.8123 ± 0.0100' (signed: '+0.0123 ± …'); '–' when there is no mean."""
    if not s or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:+.4f}" if signed else f"{s['mean']:.4f}"
    return text + (f" ± {s['std']:.4f}" if s.get("std") is not None else "")


def difference_text(d: dict) -> str:
    """A paired difference with its bootstrap interval: '+0.050 [+0.028, +0.072]'."""
    if d["diff"] is None:
        return "–"
    return f"{d['diff']:+.3f}" + ("" if d["low"] is None else f" [{d['low']:+.3f}, {d['high']:+.3f}]")
