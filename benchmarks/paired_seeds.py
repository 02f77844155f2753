"""A lever over several init seeds, each paired with the baseline at the same seed, all
scored on the same test rows: the mean over seeds of (lever − baseline) in balanced accuracy,
accuracy, melanoma sensitivity (argmax) and macro AUC, with a 95 % interval from resampling
whole lesions (the same resample for every pair), and each seed's own difference. Averaging
over seeds is what lets a lever stand above the training noise a single seed has; the
interval covers the test rows' noise only, so read it beside the per-seed differences.

    python benchmarks/paired_seeds.py ../shared/data/ham10000 \\
        --pair LEVER_S0/predictions.csv BASE_S0/predictions.csv \\
        --pair LEVER_S1/predictions.csv BASE_S1/predictions.csv [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dermfuse.evaluation.metrics import auc_macro, balanced_accuracy, group_resamples  # noqa: E402
from dermfuse.runs.cohort import load_cohort  # noqa: E402
from dermfuse.runs.predictions_csv import (  # noqa: E402
    align_predictions, classes_of, label_indices, probabilities, read_predictions)


def argmax_metrics(y: np.ndarray, p: np.ndarray, mel: int | None) -> dict[str, float]:
    pred = p.argmax(1)
    out = {"balanced_accuracy": balanced_accuracy(y, p), "accuracy": float((pred == y).mean())}
    if mel is not None:
        pos = y == mel
        out["melanoma_sensitivity"] = float((pred[pos] == mel).mean()) if pos.any() else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("LEVER_CSV", "BASE_CSV"))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    first = read_predictions(args.pair[0][0])
    try:
        tables = [(align_predictions(first, read_predictions(a), a, args.pair[0][0]),
                   align_predictions(first, read_predictions(b), b, args.pair[0][0])) for a, b in args.pair]
    except ValueError as e:
        sys.exit(str(e))
    classes = classes_of(first)
    y = label_indices(first, classes)
    mel = classes.index("mel") if "mel" in classes else None
    probas = [(probabilities(a, classes), probabilities(b, classes)) for a, b in tables]
    lesions = load_cohort(args.data, None, True, False).table.set_index("image_id")["lesion_id"]
    groups = lesions.loc[first["image_id"]].to_numpy()

    def diffs(idx: np.ndarray, with_auc: bool) -> list[dict[str, float]]:
        rows = []
        for pa, pb in probas:
            ma, mb = argmax_metrics(y[idx], pa[idx], mel), argmax_metrics(y[idx], pb[idx], mel)
            if with_auc:
                ma["macro_auc"], mb["macro_auc"] = auc_macro(y[idx], pa[idx]), auc_macro(y[idx], pb[idx])
            rows.append({k: ma[k] - mb[k] for k in ma})
        return rows

    every = np.arange(len(y))
    per_seed = diffs(every, True)
    mean = {k: float(np.mean([d[k] for d in per_seed])) for k in per_seed[0]}
    boots = {k: [] for k in mean}
    for i, idx in enumerate(group_resamples(groups, args.n_boot)):
        rows = diffs(idx, with_auc=i % 4 == 0)  # AUCs are slower: a quarter of the resamples
        for k in mean:
            values = [d[k] for d in rows if k in d]
            if values and not np.isnan(values).any():  # NaN: a resample without a melanoma
                boots[k].append(float(np.mean(values)))
    res = {"n_images": int(len(y)), "n_lesions": int(len(set(groups))), "pairs": [list(p) for p in args.pair],
           "mean_lever_minus_base": {k: {"diff": mean[k], "low": float(np.percentile(boots[k], 2.5)),
                                         "high": float(np.percentile(boots[k], 97.5))} for k in mean},
           "per_seed": per_seed}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
