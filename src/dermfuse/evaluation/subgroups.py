"""Metrics by subgroup (sex, age band, body site), with lesion-bootstrap intervals.

`subgroup_metrics(table, proba, classes, by=[...])` scores every subgroup of the rows with
the headline metrics of `dermfuse.evaluation.metrics` and puts each next to the overall figure:

- one bootstrap for everything: whole lesions (patients where every row has a patient id)
  are drawn with replacement from *all* rows, and in each resample the overall figure and
  every subgroup's figure are computed from the same draw. So each subgroup's interval and
  each gap (subgroup − overall) interval come from one paired resampling; images of one
  lesion are never treated as independent.
- a subgroup is flagged ``too_small`` when it has fewer than ``min_images`` images (30) or
  fewer than ``min_classes`` classes among its labels (2): its numbers are still reported,
  but they are not a basis for a judgement.

Age bands are defined once, in `AGE_BANDS`; `age_band` maps an age to its band.
Everything here is a pure function of its arguments (the bootstrap is seeded).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .metrics import jsonable, accuracy, auc_macro, balanced_accuracy, confusion_metrics, macro_f1, melanoma_sensitivity

__all__ = ["AGE_BANDS", "SUBGROUP_KEYS", "SUBGROUP_METRICS", "MIN_IMAGES", "MIN_CLASSES", "age_band",
           "subgroup_columns", "subgroup_metrics", "subgroup_frame", "parse_by", "render_subgroups"]

AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, math.inf, "75+"))
"""Age bands as [lo, hi) years with their labels; a missing age is band 'unknown'. Five bands,
not decades: HAM10000 has few images under 30 or over 80, and decades would leave most
bands too small to judge."""

SUBGROUP_KEYS = ("sex", "age_band", "site")
"""What ``by`` may name: the table's ``sex`` and ``site`` columns, and ``age_band`` (from ``age``)."""

SUBGROUP_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_sensitivity", "auc_macro")
"""The headline metrics scored per subgroup (definitions of `dermfuse.evaluation.metrics`)."""

MIN_IMAGES = 30
MIN_CLASSES = 2
UNKNOWN = "unknown"


def age_band(age: Any) -> str:
    """The `AGE_BANDS` label of one age in years ('unknown' for missing or non-numeric)."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(a) or a < 0:
        return UNKNOWN
    return next(label for lo, hi, label in AGE_BANDS if lo <= a < hi)


def parse_by(text: str | Sequence[str]) -> list[str]:
    """'sex,age_band,site' (or a list) -> the subgroup keys; ValueError names an unknown one."""
    keys = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    bad = [k for k in keys if k not in SUBGROUP_KEYS]
    if bad or not keys:
        raise ValueError(f"subgroups {bad or text!r}: expected a comma-separated list of {', '.join(SUBGROUP_KEYS)}")
    return keys


def subgroup_columns(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One text column per key of ``by``: the subgroup of every row ('unknown' where missing)."""
    out = {}
    for key in parse_by(by):
        if key == "age_band":
            ages = table["age"] if "age" in table.columns else pd.Series([None] * len(table), index=table.index)
            out[key] = [age_band(a) for a in pd.to_numeric(ages, errors="coerce")]
        else:
            col = table[key] if key in table.columns else pd.Series([None] * len(table), index=table.index)
            out[key] = [UNKNOWN if v is None or (isinstance(v, float) and math.isnan(v)) or
                        str(v).strip().lower() in ("", "nan", UNKNOWN) else str(v).strip() for v in col]
    return pd.DataFrame(out, index=table.index)


def _groups(table: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Resampling unit of every row (patient > lesion > image) and its name."""
    for col in ("patient_id", "lesion_id"):
        if col in table.columns and table[col].notna().all() and (table[col].astype(str).str.strip() != "").all():
            return table[col].astype(str).to_numpy(), col.removesuffix("_id")
    return np.arange(len(table)).astype(str), "image"


def _weighted_auc_macro(y: np.ndarray, proba: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC for each row of weights w (B, N) (integer weights = a bootstrap
    resample): per class, the Mann-Whitney statistic with ties counted half, averaged over the
    classes that have positive and negative weight. Returns (B,), NaN where no class qualifies."""
    aucs = []
    for k in range(proba.shape[1]):
        pos = (y == k).astype(np.float64)
        order = np.argsort(proba[:, k], kind="mergesort")
        s, p = proba[order, k], pos[order]
        ws = w[:, order]
        wpos, wneg = ws * p, ws * (1.0 - p)
        cneg = np.cumsum(wneg, axis=1)
        first = np.r_[True, s[1:] != s[:-1]]  # tie runs of equal scores
        run = np.cumsum(first) - 1
        starts = np.flatnonzero(first)
        start, last = starts[run], np.r_[starts[1:] - 1, len(s) - 1][run]
        below = cneg[:, start] - wneg[:, start]  # negative weight strictly below the run
        within = cneg[:, last] - below  # negative weight in the run
        num = np.sum(wpos * (below + 0.5 * within), axis=1)
        den = wpos.sum(1) * wneg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where(den > 0, num / den, np.nan))
    a = np.stack(aucs, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no qualifying class: NaN
        return np.nanmean(a, axis=1)


def _resampled(y: np.ndarray, proba: np.ndarray, w: np.ndarray, c: int, mel: int | None) -> dict[str, np.ndarray]:
    """SUBGROUP_METRICS under each weight row of w (B, N)."""
    onehot = np.zeros((len(y), c * c))
    onehot[np.arange(len(y)), y * c + proba.argmax(1)] = 1.0
    cm = (w @ onehot).reshape(-1, c, c)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample that drew none of the group: NaN
        out = confusion_metrics(cm, mel)
    out["auc_macro"] = _weighted_auc_macro(y, proba, w)
    return out


def _point(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    if len(y) == 0:
        return {m: math.nan for m in SUBGROUP_METRICS}
    mel = melanoma_sensitivity(y, proba, classes)
    return {"accuracy": accuracy(y, proba), "balanced_accuracy": balanced_accuracy(y, proba),
            "macro_f1": macro_f1(y, proba), "melanoma_sensitivity": math.nan if mel is None else mel,
            "auc_macro": auc_macro(y, proba)}


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[~np.isnan(samples)]
    if not len(s):
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))


def subgroup_metrics(table: pd.DataFrame, proba: Any, classes: Sequence[str],
                     by: Sequence[str] | str = SUBGROUP_KEYS, *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0, min_images: int = MIN_IMAGES, min_classes: int = MIN_CLASSES) -> dict[str, Any]:
    """Headline metrics overall and per subgroup, with bootstrap intervals and gaps.

    table: one row per scored image, with ``label`` (class name) and the columns ``by``
    needs (``sex``, ``site``, ``age``), plus ``lesion_id`` / ``patient_id`` for the
    resampling unit. proba: (N, C) probabilities in the order of ``classes``.

    Returns a JSON-serialisable dict (NaN -> None)::

        {"by": [...], "metrics": [...], "level": 0.95, "n_boot": 1000, "resampled_by": "lesion",
         "rules": {"min_images": 30, "min_classes": 2, "age_bands": [...]},
         "overall": {"n_images", "n_lesions", "n_classes", metric: {"value", "low", "high"}},
         "subgroups": [{"by": "sex", "group": "male", "n_images", "n_lesions", "n_classes",
                        "too_small": bool, "why": str | None,
                        metric: {"value", "low", "high", "gap", "gap_low", "gap_high"}}, ...]}

    Within each key the groups partition the rows, so their n_images add up to the overall
    n_images. ``gap`` = subgroup value − overall value, its interval from the same resamples.
    """
    keys = parse_by(by)
    p = np.asarray(proba, dtype=np.float64)
    classes = list(classes)
    index = _check_inputs(table, p, classes, n_boot, level)
    y = table["label"].astype(str).map(index).to_numpy(np.int64)
    cols = subgroup_columns(table, keys)
    groups, unit = _groups(table)
    _, gidx = np.unique(groups, return_inverse=True)
    members = [(key, g, (cols[key] == g).to_numpy()) for key in keys for g in sorted(cols[key].unique())]
    masks = [np.ones(len(y), bool)] + [m for _, _, m in members]
    samples = _bootstrap(y, p, gidx, masks, len(classes), index.get("mel"), n_boot, seed)

    overall_point = _point(y, p, classes)
    overall = _describe(masks[0], y, gidx)
    for m in SUBGROUP_METRICS:
        lo, hi = _interval(samples[m][0], level)
        overall[m] = {"value": overall_point[m], "low": lo, "high": hi}
    rows = []
    for j, (key, g, mask) in enumerate(members, start=1):
        row: dict[str, Any] = {"by": key, "group": g, **_describe(mask, y, gidx)}
        why = _why_too_small(row["n_images"], row["n_classes"], min_images, min_classes)
        row["too_small"], row["why"] = bool(why), "; ".join(why) or None
        point = _point(y[mask], p[mask], classes)
        for m in SUBGROUP_METRICS:
            lo, hi = _interval(samples[m][j], level)
            glo, ghi = _interval(samples[m][j] - samples[m][0], level)
            row[m] = {"value": point[m], "low": lo, "high": hi, "gap": point[m] - overall_point[m],
                      "gap_low": glo, "gap_high": ghi}
        rows.append(row)
    return jsonable({
        "by": keys, "metrics": list(SUBGROUP_METRICS), "level": level, "n_boot": n_boot, "resampled_by": unit,
        "rules": {"min_images": min_images, "min_classes": min_classes,
                  "too_small": f"fewer than {min_images} images or fewer than {min_classes} classes present",
                  "age_bands": [label for _, _, label in AGE_BANDS] + [UNKNOWN]},
        "overall": overall, "subgroups": rows})


def _check_inputs(table: pd.DataFrame, p: np.ndarray, classes: list[str], n_boot: int, level: float) -> dict[str, int]:
    """Refuse probabilities of the wrong shape, missing or unknown labels, no rows, or a bad
    n_boot / level; the index of every class."""
    if p.ndim != 2 or p.shape != (len(table), len(classes)):
        raise ValueError(f"proba of shape {p.shape}; expected ({len(table)}, {len(classes)}) for the table's rows")
    if "label" not in table.columns:
        raise ValueError("table has no 'label' column (class names of the scored rows)")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    if len(table) == 0:
        raise ValueError("no rows to score")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1); got {n_boot}, {level}")
    return index


def _bootstrap(y: np.ndarray, p: np.ndarray, gidx: np.ndarray, masks: list[np.ndarray], c: int, mel: int | None,
               n_boot: int, seed: int) -> dict[str, list[np.ndarray]]:
    """metric -> per mask, its (n_boot,) values over the same lesion resamples: whole units
    (gidx (N,) in 0..U-1) drawn with replacement, as multiplicity weights of the rows."""
    n_units = int(gidx.max()) + 1
    boot: dict[str, list[list[np.ndarray]]] = {m: [[] for _ in masks] for m in SUBGROUP_METRICS}
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, 200):  # chunks keep the (resamples x rows) weights small
        counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=min(200, n_boot - start))
        w = counts[:, gidx].astype(np.float64)
        for j, mask in enumerate(masks):
            r = _resampled(y[mask], p[mask], w[:, mask], c, mel)
            for m in SUBGROUP_METRICS:
                boot[m][j].append(r[m])
    return {m: [np.concatenate(parts) for parts in boot[m]] for m in SUBGROUP_METRICS}


def _describe(mask: np.ndarray, y: np.ndarray, gidx: np.ndarray) -> dict[str, Any]:
    return {"n_images": int(mask.sum()), "n_lesions": int(len(np.unique(gidx[mask]))),
            "n_classes": int(len(np.unique(y[mask])))}


def _why_too_small(n_images: int, n_classes: int, min_images: int, min_classes: int) -> list[str]:
    """Why a subgroup is too small to judge by (empty: it is not)."""
    why = []
    if n_images < min_images:
        why.append(f"{n_images} images < {min_images}")
    if n_classes < min_classes:
        why.append(f"{n_classes} class{'es' if n_classes != 1 else ''} present < {min_classes}")
    return why


def subgroup_frame(result: dict[str, Any]) -> pd.DataFrame:
    """The `subgroup_metrics` result as one flat table: a row per subgroup (overall first),
    columns by, group, n_images, n_lesions, n_classes, too_small, then per metric
    ``<m>``, ``<m>_low``, ``<m>_high``, ``<m>_gap``."""
    rows = []
    for r in [{"by": "all", "group": "overall", "too_small": False, **result["overall"]}] + result["subgroups"]:
        flat = {k: r.get(k) for k in ("by", "group", "n_images", "n_lesions", "n_classes", "too_small")}
        for m in result["metrics"]:
            v = r.get(m) or {}
            flat.update({m: v.get("value"), f"{m}_low": v.get("low"), f"{m}_high": v.get("high"),
                         f"{m}_gap": v.get("gap", 0.0 if r["by"] == "all" else None)})
        rows.append(flat)
    return pd.DataFrame(rows)


def render_subgroups(result: dict[str, Any], metrics: Sequence[str] = ("balanced_accuracy", "accuracy",
                                                                      "melanoma_sensitivity")) -> str:
    """Plain-text table of a `subgroup_metrics` result: value [interval] and gap per metric."""

    def cell(v: dict[str, Any] | None, gap: bool) -> str:
        if not v or v.get("value") is None:
            return "–"
        text = f"{v['value']:.3f}"
        if v.get("low") is not None:
            text += f" [{v['low']:.2f}, {v['high']:.2f}]"
        if gap and v.get("gap") is not None:
            text += f" {v['gap']:+.3f}"
        return text

    head = ["subgroup", "images", "lesions"] + [f"{m} [{int(round(100 * result['level']))}% CI] gap" for m in metrics]
    lines = [head]
    lines.append(["overall", str(result["overall"]["n_images"]), str(result["overall"]["n_lesions"])]
                 + [cell(result["overall"].get(m), False) for m in metrics])
    for r in result["subgroups"]:
        lines.append([f"{r['by']}={r['group']}" + (" (too small)" if r["too_small"] else ""), str(r["n_images"]),
                      str(r["n_lesions"])] + [cell(r.get(m), True) for m in metrics])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.append(f"too small to judge: {result['rules']['too_small']}; intervals: {result['n_boot']} "
               f"{result['resampled_by']}-bootstrap resamples; gap = subgroup - overall")
    return "\n".join(out)
