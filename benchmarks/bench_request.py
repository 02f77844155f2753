"""What one prediction costs at batch 1 on this CPU, with everything the shipped answer
includes: JPEG decode and resize, the test-time views, the features of the
out-of-distribution score, Grad-CAM of the answered class and the overlay image; beside it,
the same without the map and a bare single forward pass of the same model, measured in the
same run. Milliseconds per image, median and 95th percentile of the repeats.

    PYTHONPATH=src python benchmarks/bench_request.py [--bundle PATH [--bundle PATH ...]] \
        [--image FILE.jpg] [--repeats 50] [--threads 1]

Default bundle: the released model; several bundles take turns in slices, and each line
says its median against the first bundle's. Default image: the first of $DERMFUSE_HAM10000 when it
is set, else scikit-image's (offline) 'astronaut' photograph saved as JPEG.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

import torch


def _image_bytes(path: str | None) -> tuple[bytes, str]:
    if path:
        return Path(path).read_bytes(), path
    root = os.environ.get("DERMFUSE_HAM10000")
    if root:
        for f in sorted(Path(root).rglob("*.jpg")):
            return f.read_bytes(), str(f)
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((200, 150)).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "skimage.data.astronaut (200x150 JPEG)"


def _time(fn, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after 3 warm-ups."""
    for _ in range(3):  # warm-up
        fn()
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def _median_p95(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


def _calls(bundle_path: str | None, raw: bytes):
    """(bundle, {row name: function}) for one bundle: the full answer, without the map, bare."""
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predict import answer
    from dermfuse.inference.predictor import Predictor
    from dermfuse.preprocess import to_input
    from dermfuse.released import resolve_bundle

    bundle = load_bundle(resolve_bundle(bundle_path))
    engine = Predictor.from_bundle(bundle)
    meta = engine.encode_meta(age=55, sex="male", site="back")
    img = engine.prepare_image(raw)[None]
    x = to_input(torch.from_numpy(img.copy()).permute(0, 3, 1, 2).contiguous())  # (1, 3, H, W), as the engine feeds it
    m = torch.as_tensor(meta)

    @torch.inference_mode()
    def bare() -> None:
        engine.model(x, m)

    return bundle, {FULL: lambda: answer(engine, engine.prepare_image(raw)[None], meta, explain=True),
                    "without the map": lambda: answer(engine, engine.prepare_image(raw)[None], meta, explain=False),
                    "bare forward pass, one view": bare}


FULL = "full answer (views + OOD features + Grad-CAM + overlay)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", action="append", default=None,
                    help="a bundle directory (default: the released model); repeat to time several side by side")
    ap.add_argument("--image", default=None)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slices", type=int, default=5, help="with several bundles: take turns in this many slices")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    raw, source = _image_bytes(args.image)
    models = [_calls(path, raw) for path in (args.bundle or [None])]
    print(f"image {source}, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    times = {(i, name): [] for i, (_, calls) in enumerate(models) for name in calls}
    per_slice = max(1, args.repeats // args.slices)
    for _ in range(args.slices):  # the bundles take turns, so a change in load hits them alike
        for i, (_, calls) in enumerate(models):
            for name, fn in calls.items():
                times[i, name] += _time(fn, per_slice)
    first_full = None
    for i, (bundle, calls) in enumerate(models):
        members = len(getattr(bundle.model, "members", [None]))
        print(f"\nbundle {bundle.model_id}: {bundle.image_size} px, {members} network(s), "
              f"test-time views {(bundle.tta_views or 'all') if bundle.tta else 'off'}, weights {bundle.info.get('weights_dtype', 'float32')}")
        res = {name: _median_p95(times[i, name]) for name in calls}
        for name, (med, p95) in res.items():
            print(f"  {name:58s} median {med:7.1f} ms   p95 {p95:7.1f} ms")
        full, bare = res[FULL][0], res["bare forward pass, one view"][0]
        first_full = full if first_full is None else first_full
        print(f"  full / bare = {full / bare:.1f}x;  full / the first bundle's full = {full / first_full:.2f}x;  "
              f"goal: full under 100 ms -> {'met' if full < 100 else 'missed'} (median)")
    print(f"\nafter the last repeat: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
