"""What int8 costs: accuracy and balanced accuracy of a bundle in PyTorch, ONNX fp32 and ONNX
int8 on held-out lesions (a holdout run's split.csv, test rows), plus the file sizes.

    nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python -m dermfuse export RUN/bundle --format onnx \
        --out RUN/onnx --int8
    nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/int8_accuracy.py RUN/bundle RUN/onnx DATA \
        --split-file RUN/split.csv [--part test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dermfuse.export.score import score_export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("export_dir")
    ap.add_argument("data")
    ap.add_argument("--split-file")
    ap.add_argument("--part", default="test")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = score_export(args.bundle, args.export_dir, args.data, args.split_file, args.part, progress=True)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
