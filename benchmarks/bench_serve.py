"""Latency and throughput of ``POST /predict`` over loopback (127.0.0.1 only).

Starts the server (``create_app`` under uvicorn, as ``dermfuse serve`` does) in a child
process, sends a bounded number of requests from 1 and from 8 concurrent clients (threads,
one HTTP connection each), and prints one line per server batch limit and concurrency:

    max_batch=M clients=K requests=N p50_ms=A p95_ms=B req_per_s=R mean_batch=G

(mean_batch: requests per forward pass, read from ``/health``.)

Every request carries a 600x450 JPEG (HAM10000's size) and age/sex/site; answers are
checked (status 200, probabilities summing to 1). Without ``--bundle`` a randomly
initialised bundle (``--model``, ``--size``) is written to a temporary folder: timings do
not depend on the weights.

    PYTHONPATH=src python benchmarks/bench_serve.py --requests 128 --clients 1 8 --max-batch 1 8

With several ``--max-batch`` values the servers run side by side and take turns in
``--rounds`` slices, so a change in load from other processes hits each of them alike.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HOST = "127.0.0.1"  # loopback only


def _random_bundle(out: Path, model: str, size: int) -> Path:
    import pandas as pd
    import torch

    from dermfuse import HAM10000_CLASSES
    from dermfuse.inference.bundle import save_bundle
    from dermfuse.data.encode import MetadataEncoder
    from dermfuse.models import create_model

    torch.manual_seed(0)
    table = pd.DataFrame({"age": [30, 45, 60, 75], "sex": ["male", "female", "male", "female"],
                          "site": ["back", "face", "trunk", "lower extremity"]})
    encoder = MetadataEncoder().fit(table)
    kwargs = {"num_classes": len(HAM10000_CLASSES), "input_size": size,
              "meta_dim": encoder.n_features if model == "ft_multicnn" else 0}
    net = create_model(model, pretrained=False, **kwargs).eval()
    return save_bundle(out, model=net, model_name=model, model_kwargs=kwargs,
                       classes=list(HAM10000_CLASSES), encoder=encoder, image_size=size,
                       training_data={"name": "random weights (benchmark)"})


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(np.clip(rng.normal(200, 12, (450, 600, 3)), 0, 255).astype(np.uint8))
    ImageDraw.Draw(img).ellipse([180, 110, 420, 340], fill=(110, 70, 45))
    buf = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(2)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_SERVER = """
import sys, uvicorn
from dermfuse.serve.app import create_app
bundle, port, max_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
uvicorn.run(create_app(bundle, max_batch=max_batch), host="127.0.0.1", port=port, log_level="warning")
"""  # what `dermfuse serve` runs, with the batch size as a knob


def _start_server(bundle: Path, port: int, threads: int | None, max_batch: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                      env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(bundle), str(port), str(max_batch)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 120 s")


def _run(url: str, images: list[bytes], clients: int, n: int) -> tuple[list[float], float]:
    """n requests spread over `clients` threads → (latencies in ms, wall seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post(url, files={"image": ("x.jpg", images[i % len(images)], "image/jpeg")},
                           data={"age": str(30 + i % 50), "sex": "female", "site": "back"})
                dt = (time.perf_counter() - t0) * 1000
                r.raise_for_status()
                assert abs(sum(r.json()["probabilities"].values()) - 1) < 1e-4
                with lock:
                    latencies.append(dt)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    assert len(latencies) == n, f"{n - len(latencies)} requests failed"
    return latencies, wall


def _inference_counts(url: str) -> tuple[int, int]:
    info = httpx.get(url + "/health").json()["inference"]
    return info["requests"], info["batches"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: random-weights bundle)")
    ap.add_argument("--model", default="ft_multicnn", help="model of the random bundle")
    ap.add_argument("--size", type=int, default=128, help="input size of the random bundle")
    ap.add_argument("--requests", type=int, default=64, help="requests per server and concurrency (max 1000)")
    ap.add_argument("--rounds", type=int, default=4, help="servers take turns this many times (fair under load drift)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8],
                    help="server micro-batch limits to compare (1 = no batching)")
    args = ap.parse_args()
    n = max(1, min(args.requests, 1000))
    rounds = max(1, min(args.rounds, n))

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or _random_bundle(Path(tmp) / "bundle", args.model, args.size)
        images = [_jpeg(s) for s in range(8)]
        print(f"# bundle={bundle.name if args.bundle else f'random {args.model}@{args.size}'} "
              f"cpus={os.cpu_count()} server_threads={args.threads or 'default'} rounds={rounds}")
        servers: dict[int, tuple[subprocess.Popen, str]] = {}
        try:
            for mb in args.max_batch:
                port = _free_port()
                servers[mb] = (_start_server(bundle, port, args.threads, mb), f"http://{HOST}:{port}")
                _run(servers[mb][1] + "/predict", images, clients=2, n=8)  # warm-up
            rates: dict[tuple[int, int], float] = {}
            for k in args.clients:
                lat: dict[int, list[float]] = {mb: [] for mb in servers}
                wall = dict.fromkeys(servers, 0.0)
                start = {mb: _inference_counts(url) for mb, (_, url) in servers.items()}
                for r in range(rounds):  # servers take turns, so load from elsewhere hits all alike
                    share = n // rounds + (r < n % rounds)
                    for mb, (_, url) in servers.items():
                        got, seconds = _run(url + "/predict", images, clients=k, n=share)
                        lat[mb] += got
                        wall[mb] += seconds
                for mb, (_, url) in servers.items():
                    req, bat = (a - b for a, b in zip(_inference_counts(url), start[mb]))
                    rates[mb, k] = n / wall[mb]
                    p95 = statistics.quantiles(lat[mb], n=20)[18] if n > 1 else lat[mb][0]
                    print(f"max_batch={mb} clients={k} requests={n} p50_ms={statistics.median(lat[mb]):.1f} "
                          f"p95_ms={p95:.1f} req_per_s={rates[mb, k]:.1f} mean_batch={req / max(1, bat):.1f}",
                          flush=True)
            if 1 in servers and len(servers) > 1:
                for k in args.clients:
                    ratios = " ".join(f"max_batch={mb}/1={rates[mb, k] / rates[1, k]:.2f}"
                                      for mb in servers if mb != 1)
                    print(f"throughput ratio clients={k}: {ratios}")
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)

if __name__ == "__main__":
    main()
