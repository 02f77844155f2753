"""Two runs scored on the same test rows, paired: the difference (A − B) in accuracy, balanced
accuracy, macro F1, melanoma sensitivity and macro AUC, with 95 % intervals from resampling
whole lesions (`dermfuse.evaluation.metrics.paired_bootstrap` for the decisions).

    python benchmarks/paired_runs.py RUN_A/predictions.csv RUN_B/predictions.csv ../shared/data/ham10000 \
        [--json out.json]

Both files must hold the same image ids (a run's predictions.csv is its test part); the data
set gives each image's lesion.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dermfuse.evaluation.metrics import auc_macro, group_resamples, paired_bootstrap  # noqa: E402
from dermfuse.runs.cohort import load_cohort  # noqa: E402
from dermfuse.runs.predictions_csv import classes_of, label_indices, probabilities, read_predictions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("data")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    a, b = read_predictions(args.a), read_predictions(args.b)
    classes = classes_of(a)
    if classes_of(b) != classes:
        sys.exit(f"the two runs have different classes: {classes} vs {classes_of(b)}")
    if set(a["image_id"]) != set(b["image_id"]):
        sys.exit(f"the two files score different images ({len(a)} vs {len(b)} rows)")
    b = b.set_index("image_id").loc[a["image_id"]].reset_index()
    y = label_indices(a, classes)
    if not np.array_equal(y, label_indices(b, classes)):
        sys.exit("the two files disagree on labels")
    lesions = load_cohort(args.data, None, True, False).table.set_index("image_id")["lesion_id"]
    groups = lesions.loc[a["image_id"]].to_numpy()
    pa, pb = probabilities(a, classes), probabilities(b, classes)
    diff = paired_bootstrap(y, pa.argmax(1), pb.argmax(1), groups, classes, n_boot=args.n_boot)
    boots = [auc_macro(y[idx], pa[idx]) - auc_macro(y[idx], pb[idx])  # AUC is slower: a quarter of n_boot
             for idx in group_resamples(groups, args.n_boot // 4)]
    diff["macro_auc"] = {"diff": auc_macro(y, pa) - auc_macro(y, pb), "low": float(np.percentile(boots, 2.5)),
                         "high": float(np.percentile(boots, 97.5))}
    res = {"run_a": args.a, "run_b": args.b, "n_images": int(len(y)), "n_lesions": int(len(set(groups))),
           "a_minus_b": diff,
           "a": {"accuracy": float((pa.argmax(1) == y).mean()), "macro_auc": auc_macro(y, pa)},
           "b": {"accuracy": float((pb.argmax(1) == y).mean()), "macro_auc": auc_macro(y, pb)}}
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
