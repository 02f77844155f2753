"""Two runs scored on the same test rows, paired: the difference (A − B) in accuracy, balanced
accuracy, macro F1, melanoma sensitivity (argmax), macro AUC, melanoma AUC and melanoma
sensitivity at specificity 0.90, with 95 % intervals from resampling whole lesions
(`dermfuse.evaluation.metrics.paired_bootstrap` for the decisions). The last is a point of
the test rows' own ROC curve (its threshold is fitted on the rows it scores): it reads the
ranking at the goal's operating point, not a shipped threshold.

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

from dermfuse.evaluation.metrics import (  # noqa: E402
    auc_macro, balanced_accuracy, group_resamples, melanoma_sensitivity, paired_bootstrap, sensitivity_at_specificity)
from sklearn.metrics import roc_auc_score  # noqa: E402
from dermfuse.runs.cohort import load_cohort  # noqa: E402
from dermfuse.runs.predictions_csv import (  # noqa: E402
    align_predictions, classes_of, label_indices, probabilities, read_predictions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("data")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    a = read_predictions(args.a)
    try:
        b = align_predictions(a, read_predictions(args.b), args.b, args.a)
    except ValueError as e:
        sys.exit(str(e))
    classes = classes_of(a)
    y = label_indices(a, classes)
    lesions = load_cohort(args.data, None, True, False).table.set_index("image_id")["lesion_id"]
    groups = lesions.loc[a["image_id"]].to_numpy()
    pa, pb = probabilities(a, classes), probabilities(b, classes)
    diff = paired_bootstrap(y, pa.argmax(1), pb.argmax(1), groups, classes, n_boot=args.n_boot)
    mel = classes.index("mel") if "mel" in classes else None

    def ranking(yy: np.ndarray, p: np.ndarray) -> dict[str, float]:
        out = {"macro_auc": auc_macro(yy, p)}
        if mel is not None:  # NaN where a resample holds no melanoma (or only melanomas)
            pos = yy == mel
            out["melanoma_auc"] = float(roc_auc_score(pos, p[:, mel])) if 0 < pos.sum() < len(pos) else float("nan")
            out["melanoma_sensitivity_at_specificity_0.90"] = sensitivity_at_specificity(pos, p[:, mel], 0.90)
        return out

    ra, rb = ranking(y, pa), ranking(y, pb)
    boots = [(ranking(y[idx], pa[idx]), ranking(y[idx], pb[idx]))  # slower: a quarter of n_boot
             for idx in group_resamples(groups, args.n_boot // 4)]
    for key in ra:
        d = [x[key] - z[key] for x, z in boots]
        diff[key] = {"diff": ra[key] - rb[key], "low": float(np.nanpercentile(d, 2.5)),
                     "high": float(np.nanpercentile(d, 97.5))}

    def alone(p: np.ndarray, r: dict[str, float]) -> dict[str, float]:
        return {"accuracy": float((p.argmax(1) == y).mean()), "balanced_accuracy": balanced_accuracy(y, p),
                "melanoma_sensitivity": melanoma_sensitivity(y, p, classes), **r}

    res = {"run_a": args.a, "run_b": args.b, "n_images": int(len(y)), "n_lesions": int(len(set(groups))),
           "a_minus_b": diff, "a": alone(pa, ra), "b": alone(pb, rb)}
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
