"""Average the probabilities of several runs' predictions.csv files scored on the same images:
an ensemble of finished runs with nothing fitted (each member keeps its own calibration; the
ensemble's class is the argmax of the mean), written as one predictions.csv for
`paired_runs.py`.

    python benchmarks/mean_predictions.py OUT.csv RUN_1/predictions.csv RUN_2/predictions.csv ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dermfuse.runs.predictions_csv import (  # noqa: E402
    align_predictions, classes_of, label_indices, probabilities, read_predictions, write_predictions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("members", nargs="+")
    args = ap.parse_args()
    if len(args.members) < 2:
        sys.exit("give at least two predictions.csv files")
    first = read_predictions(args.members[0])
    classes, ids = classes_of(first), first["image_id"]
    y = label_indices(first, classes)
    probas = []
    for path in args.members:
        try:
            df = align_predictions(first, read_predictions(path), path, args.members[0])
        except ValueError as e:
            sys.exit(str(e))
        probas.append(probabilities(df, classes, renormalise=True))
    write_predictions(args.out, ids, classes, y, np.mean(probas, axis=0))
    print(f"{args.out}: mean of {len(probas)} members on {len(ids)} images", file=sys.stderr)


if __name__ == "__main__":
    main()
