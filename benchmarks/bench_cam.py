"""Grad-CAM throughput on CPU: dermfuse.explain.gradcam.GradCAM vs plain inference vs pytorch-grad-cam.

Prints one line per model, numbers in images (heatmaps) per second, median of repeats:

    MODEL@SIZE ours=A inference=B pytorch_grad_cam=C ours/inference=R1 ours/pytorch_grad_cam=R2

Goal: ours >= 0.8x plain inference and >= 2.5x pytorch-grad-cam.

    PYTHONPATH=src python benchmarks/bench_cam.py --models efficientnet_lite0 resnet50 \
        --size 128 --batch 32 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dermfuse.explain.gradcam import GradCAM


class _FixedMeta(nn.Module):
    """One-input view of a dermfuse model (pytorch-grad-cam calls ``model(x)``)."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, self.meta)


def _median_rates(
    fns: dict[str, Callable[[], object]], batch: int, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Images/s per function: warm-up calls, then repeats interleaved round-robin so
    that a change in machine load hits every method alike; median per method."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: batch / statistics.median(t) for key, t in times.items()}


def bench(name: str, size: int, batch: int, repeats: int) -> str:
    """Benchmark one registry model; returns the result line."""
    from dermfuse.models import create_model, model_spec

    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    meta_dim = 8 if model_spec(name).uses_meta else 0
    model = create_model(name, num_classes=7, meta_dim=meta_dim, pretrained=False).eval()
    image = torch.rand(batch, 3, size, size)
    meta = torch.randn(batch, meta_dim) if meta_dim else None
    targets = [i % 7 for i in range(batch)]

    def inference() -> None:
        with torch.inference_mode():
            model(image, meta)

    def ours() -> None:
        with GradCAM(model) as cam:
            cam(image, meta, targets)

    reference_targets = [ClassifierOutputTarget(t) for t in targets]

    def reference() -> None:
        with ReferenceGradCAM(model=_FixedMeta(model, meta), target_layers=[model.cam_layer]) as cam:
            cam(image, reference_targets)

    rates = _median_rates({"ours": ours, "inference": inference, "ref": reference}, batch, repeats)
    rate_ours, rate_inf, rate_ref = rates["ours"], rates["inference"], rates["ref"]
    model.zero_grad(set_to_none=True)
    return (
        f"{name}@{size} ours={rate_ours:.2f} inference={rate_inf:.2f} "
        f"pytorch_grad_cam={rate_ref:.2f} ours/inference={rate_ours / rate_inf:.2f} "
        f"ours/pytorch_grad_cam={rate_ours / rate_ref:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.models:
        print(bench(name, args.size, args.batch, args.repeats), flush=True)


if __name__ == "__main__":
    main()
