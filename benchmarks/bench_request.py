"""What one prediction costs at batch 1 on this CPU, with everything the shipped answer
includes: JPEG decode and resize, the test-time views, the features of the
out-of-distribution score, Grad-CAM of the answered class and the overlay image; beside it,
the same without the map and a bare single forward pass of the same model, measured in the
same run. Milliseconds per image, median and 95th percentile of the repeats.

    PYTHONPATH=src python benchmarks/bench_request.py [--bundle PATH] [--image FILE.jpg] \
        [--repeats 50] [--threads 1]

Default bundle: the released model. Default image: the first of $DERMFUSE_HAM10000 when it
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


def _time(fn, repeats: int) -> tuple[float, float]:
    for _ in range(3):  # warm-up
        fn()
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="a bundle directory (default: the released model)")
    ap.add_argument("--image", default=None)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predict import answer
    from dermfuse.inference.predictor import Predictor
    from dermfuse.preprocess import to_input
    from dermfuse.released import resolve_bundle

    bundle = load_bundle(resolve_bundle(args.bundle))
    engine = Predictor.from_bundle(bundle)
    raw, source = _image_bytes(args.image)
    meta = engine.encode_meta(age=55, sex="male", site="back")

    def full() -> None:
        answer(engine, engine.prepare_image(raw)[None], meta, explain=True)

    def no_map() -> None:
        answer(engine, engine.prepare_image(raw)[None], meta, explain=False)

    img = engine.prepare_image(raw)[None]
    x = to_input(torch.from_numpy(img).permute(0, 3, 1, 2).contiguous())  # (1, 3, S, S), as the engine feeds it
    m = torch.as_tensor(meta)

    @torch.inference_mode()
    def bare() -> None:
        engine.model(x, m)

    print(f"bundle {bundle.model_id}, {bundle.image_size} px, image {source}, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = [("full answer (views + OOD features + Grad-CAM + overlay)", full),
            ("without the map", no_map), ("bare forward pass, one view", bare)]
    res = {}
    for name, fn in rows:
        res[name] = _time(fn, args.repeats)
        print(f"{name:58s} median {res[name][0]:7.1f} ms   p95 {res[name][1]:7.1f} ms")
    print(f"full / bare = {res[rows[0][0]][0] / res[rows[2][0]][0]:.1f}x;  goal: full under 100 ms -> "
          f"{'met' if res[rows[0][0]][0] < 100 else 'missed'} (median)")
    print(f"after the last repeat: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
