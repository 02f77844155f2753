"""Training throughput per model and the share of step time spent waiting for data.

Runs the same loop as ``dermfuse.training.loop.train_one_epoch`` (augmentation on, Adam, cross
entropy) over images from the uint8 cache and times, per step, the wait for the next
batch and the whole step. One line per model:

    MODEL@SIZE images/s=A data_wait=B% step_ms=C workers=W

Data: ``--data PATH`` or $DERMFUSE_HAM10000, else a synthetic set written to a temp folder.

    python benchmarks/bench_train.py --models cnn,ft_multicnn,efficientnet_lite0 --steps 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dermfuse.data.cache import build_cache
from dermfuse.data.encode import MetadataEncoder
from dermfuse.runs.holdout import load_cohort
from dermfuse.models import create_model, model_spec
from dermfuse.training.loop import ArrayDataset
from dermfuse.preprocess import to_input, train_augmentation


def bench_model(name: str, images: np.ndarray, meta: np.ndarray, labels: np.ndarray, size: int,
                batch: int, steps: int, warmup: int, workers: int) -> dict[str, float]:
    spec = model_spec(name)
    kw = {"input_size": size} if name in ("cnn", "ft_multicnn") else {}
    m = meta if spec.uses_meta else meta[:, :0]
    model = create_model(name, num_classes=7, meta_dim=m.shape[1], pretrained=False, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ds = ArrayDataset(images, m, labels, transform=train_augmentation())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    model.train()
    waits, totals = [], []
    it = iter(loader)
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            x, mm, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, mm, y = next(it)
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(to_input(x), mm), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if step >= warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    return {"images_per_s": batch * len(totals) / sum(totals),
            "data_wait": sum(waits) / sum(totals),
            "step_ms": 1000 * statistics.median(totals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("DERMFUSE_HAM10000"))
    ap.add_argument("--models", default="cnn,ft_multicnn,efficientnet_lite0,resnet50,inception_v3")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = args.data
    if not data:
        from dermfuse.data.synth import make_synthetic

        data = make_synthetic(Path(tempfile.mkdtemp()) / "synthetic", n=400, seed=0)
        print(f"data: SYNTHETIC ({data})")
    else:
        print(f"data: {data}")
    cohort = load_cohort(data, progress=False)
    meta = MetadataEncoder().fit(cohort.table).transform(cohort.table)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.steps} timed steps, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in args.models.split(","):
        size = args.size if name != "inception_v3" else max(args.size, 75)
        cache = build_cache(cohort.table, size=size, progress=False)
        r = bench_model(name, cache.images, meta, cohort.labels, size, args.batch, args.steps, args.warmup, args.workers)
        print(f"{name}@{size} images/s={r['images_per_s']:.1f} data_wait={100 * r['data_wait']:.1f}% "
              f"step_ms={r['step_ms']:.0f} workers={args.workers}", flush=True)


if __name__ == "__main__":
    main()
