"""The paper's augmentation: per image (what each data-loader worker does with
`train.augment_on: workers`) against per batch (`BatchAugmentation`, `augment_on: device`).

Prints one line per image size, in images per second, median of repeats:

    SIZE per_image=A per_batch[cpu]=B per_batch[cuda]=C per_batch/per_image=R

per_image runs in one thread, as one loader worker does; multiply by the number of workers
for a loader's ceiling. per_batch[cpu] uses ``--threads`` threads. per_batch[cuda] only
where a GPU is present (synchronised before the clock stops).

    PYTHONPATH=src python benchmarks/bench_augment.py --sizes 128 224 --batch 32 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dermfuse.preprocess import BatchAugmentation, train_augmentation


def _rate(fn: Callable[[], object], n: int, repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    for size in args.sizes:
        images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=g)
        per_image = train_augmentation((size, size))
        batch_aug = BatchAugmentation()
        torch.set_num_threads(1)
        r_img = _rate(lambda: [per_image(im) for im in images], args.batch, args.repeats)
        torch.set_num_threads(args.threads)
        r_cpu = _rate(lambda: batch_aug(images, g), args.batch, args.repeats)
        line = f"{size} per_image={r_img:.0f} per_batch[cpu]={r_cpu:.0f}"
        if torch.cuda.is_available():
            on_gpu = images.cuda()
            r_gpu = _rate(lambda: batch_aug(on_gpu, g), args.batch, args.repeats, torch.cuda.synchronize)
            line += f" per_batch[cuda]={r_gpu:.0f}"
        print(f"{line} per_batch/per_image={r_cpu / r_img:.2f}", flush=True)


if __name__ == "__main__":
    main()
