"""Training throughput per model and the share of step time spent waiting for data.

Runs the same loop as ``dermfuse.training.loop.train_one_epoch`` (augmentation on, Adam, cross
entropy) over images from the uint8 cache and times, per step, the wait for the next
batch and the whole step. One line per model:

    MODEL@SIZE images/s=A data_wait=B% step_ms=C workers=W

Data: ``--data PATH`` or $DERMFUSE_HAM10000, else a synthetic set written to a temp folder.

    python benchmarks/bench_train.py --models cnn,ft_multicnn,efficientnet_lite0 --steps 15

``--compare`` instead times a bare forward+backward (no data loader, no augmentation) of
one model, the FT-MultiCNN with a Lite0 image branch at 128 px by default, under every
combination of memory format (contiguous NCHW vs channels_last), torch thread count and
batch size, interleaved round by round so that a change in machine load hits every
configuration alike, then an eval forward (no_grad) at batch 1 and 32 in both formats.
It prints images/s per configuration and the ratios:

    python benchmarks/bench_train.py --compare --threads-list 1,2 --batches 32,64 --rounds 4
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


META_DIM = 20  # about what the metadata encoder gives HAM10000 (age, sex, site one-hot); negligible cost


def _compare_model(backbone: str, size: int, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("ft_multicnn", num_classes=7, meta_dim=META_DIM, pretrained=False, input_size=size,
                         image_backbone=backbone)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _batch(batch: int, size: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 3, size, size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    return x, torch.randn(batch, META_DIM, generator=g), torch.randint(0, 7, (batch,), generator=g)


def compare(args: argparse.Namespace) -> None:
    """Side by side: memory format x threads x batch for a training step, then inference."""
    threads = [int(t) for t in args.threads_list.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    fmts = {"contiguous": False, "channels_last": True}
    print(f"torch {torch.__version__}; ft_multicnn + {args.backbone} @ {args.size} px; {args.rounds} rounds x "
          f"{args.steps} steps per configuration; load average {os.getloadavg()[0]:.2f}")
    setups = {}
    for fmt, cl in fmts.items():
        model = _compare_model(args.backbone, args.size, cl).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        setups[fmt] = (model, opt)
    times: dict[tuple[str, int, int], list[float]] = {}
    for r in range(args.rounds):
        for t in threads:
            torch.set_num_threads(t)
            for b in batches:
                for fmt, cl in fmts.items():
                    model, opt = setups[fmt]
                    x, m, y = _batch(b, args.size, cl)
                    for step in range(args.steps + (args.warmup if r == 0 else 0)):
                        t0 = time.perf_counter()
                        loss = F.cross_entropy(model(x, m), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        dt = time.perf_counter() - t0
                        if r > 0 or step >= args.warmup:
                            times.setdefault((fmt, t, b), []).append(dt)
        print(f"  round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    ips = {k: k[2] / statistics.median(v) for k, v in times.items()}  # images/s from the median step
    print("train step (forward+backward+Adam), images/s from the median step:")
    for t in threads:
        for b in batches:
            c, l = ips[("contiguous", t, b)], ips[("channels_last", t, b)]
            print(f"  threads={t} batch={b}: contiguous {c:.1f}  channels_last {l:.1f}  "
                  f"ratio channels_last/contiguous {l / c:.2f}")
    for fmt in fmts:
        for b in batches:
            if len(threads) > 1:
                print(f"  {fmt} batch={b}: threads {threads[-1]}/{threads[0]} = "
                      f"{ips[(fmt, threads[-1], b)] / ips[(fmt, threads[0], b)]:.2f}")
        for t in threads:
            if len(batches) > 1:
                print(f"  {fmt} threads={t}: batch {batches[-1]}/{batches[0]} = "
                      f"{ips[(fmt, t, batches[-1])] / ips[(fmt, t, batches[0])]:.2f}")

    torch.set_num_threads(max(threads))
    print(f"eval forward (no_grad), {max(threads)} threads, images/s from the median call:")
    inf: dict[tuple[str, int], list[float]] = {}
    evals = {fmt: _compare_model(args.backbone, args.size, cl).eval() for fmt, cl in fmts.items()}
    for r in range(args.rounds):
        for b in (1, 32):
            n = args.steps * (8 if b == 1 else 1)
            for fmt, cl in fmts.items():
                x, m, _ = _batch(b, args.size, cl)
                with torch.no_grad():
                    for step in range(n + (args.warmup if r == 0 else 0)):
                        t0 = time.perf_counter()
                        evals[fmt](x, m)
                        if r > 0 or step >= args.warmup:
                            inf.setdefault((fmt, b), []).append(time.perf_counter() - t0)
    for b in (1, 32):
        c = b / statistics.median(inf[("contiguous", b)])
        l = b / statistics.median(inf[("channels_last", b)])
        print(f"  batch={b}: contiguous {c:.1f} ({1000 * b / c:.1f} ms/call)  channels_last {l:.1f} "
              f"({1000 * b / l:.1f} ms/call)  ratio {l / c:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


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
    ap.add_argument("--compare", action="store_true",
                    help="memory format x threads x batch side by side for one model (see the module docstring)")
    ap.add_argument("--backbone", default="efficientnet_lite0", help="--compare: the FT-MultiCNN's image branch")
    ap.add_argument("--threads-list", default="1,2", help="--compare: thread counts")
    ap.add_argument("--batches", default="32,64", help="--compare: batch sizes")
    ap.add_argument("--rounds", type=int, default=4, help="--compare: interleaved rounds")
    args = ap.parse_args()
    if args.compare:
        if args.steps == ap.get_default("steps"):
            args.steps = 3
        compare(args)
        return
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
