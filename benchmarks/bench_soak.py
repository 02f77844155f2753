"""Soak test of ``dermfuse serve`` on 127.0.0.1 (not CI): a few thousand requests from 8
clients, good and bad inputs mixed; no 5xx, no lost request, memory growth reported.

Starts ``python -m dermfuse serve BUNDLE`` (the real command) in a child process, waits for
``/health``, then 8 client threads (one HTTP connection each) send ``--requests`` requests
in all, cycling through: a valid JPEG, a 16-bit PNG, an RGBA PNG, random bytes, a tiny image,
a bad age, an unknown site, a JSON body. Each answer must have its expected status (200,
422 or 415); a 5xx, a timeout or a dropped connection counts as lost. The server's RSS is
read (psutil) after a warm-up and at the end.

    PYTHONPATH=src python benchmarks/bench_soak.py --requests 3000 --clients 8

Without ``--bundle`` a randomly initialised 64 px FT-MultiCNN bundle is written to a
temporary folder (answers do not depend on the weights). Prints one summary line and, with
``--json``, the same as JSON on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"


def _png16(h: int = 80, w: int = 96) -> bytes:
    samples = np.random.default_rng(0).integers(0, 65536, (h, w), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in samples)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _cases() -> list[tuple[str, dict, int]]:
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (120, 160, 4), dtype=np.uint8), "RGBA")
    form = {"age": "45", "sex": "M", "site": "posterior torso"}

    def multipart(data: bytes, name: str, **fields) -> dict:
        return {"files": {"image": (name, data, "application/octet-stream")}, "data": {**form, **fields}}
    return [
        ("jpeg", multipart(_encode(photo, "JPEG"), "a.jpg"), 200),
        ("png16", multipart(_png16(), "b.png"), 200),
        ("rgba", multipart(_encode(rgba, "PNG"), "c.png"), 200),
        ("random bytes", multipart(rng.bytes(2048), "d.jpg"), 422),
        ("tiny", multipart(_encode(Image.new("RGB", (16, 16)), "PNG"), "e.png"), 422),
        ("bad age", multipart(_encode(photo, "JPEG"), "f.jpg", age="inf"), 422),
        ("unknown site", multipart(_encode(photo, "JPEG"), "g.jpg", site="moon"), 422),
        ("json body", {"json": {"age": 40}}, 415),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="bundle directory (default: a random 64 px FT-MultiCNN)")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import psutil

    tmp = tempfile.TemporaryDirectory()
    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _bundles import make_bundle

        bundle = str(make_bundle(Path(tmp.name) / "bundle", image_size=64))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen([sys.executable, "-m", "dermfuse", "serve", bundle, "--host", HOST,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://{HOST}:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not come up")
        proc = psutil.Process(server.pid)
        cases = _cases()
        with httpx.Client(timeout=args.timeout) as c:  # warm-up: every case once
            for _, kw, _ in cases:
                c.post(f"{url}/predict", **kw)
        rss_start = proc.memory_info().rss
        statuses: Counter = Counter()
        wrong: list[str] = []
        lost = 0
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def client() -> None:
            nonlocal lost
            with httpx.Client(timeout=args.timeout) as c:
                for i in counter:
                    name, kw, expected = cases[i % len(cases)]
                    try:
                        r = c.post(f"{url}/predict", **kw)
                        ok = r.status_code == expected and "detail" in r.json() or r.status_code == 200
                        with lock:
                            statuses[r.status_code] += 1
                            if r.status_code != expected or not ok:
                                wrong.append(f"{name}: {r.status_code}")
                    except (httpx.HTTPError, ValueError) as exc:
                        with lock:
                            lost += 1
                            wrong.append(f"{name}: {type(exc).__name__}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        rss_end = proc.memory_info().rss
        answered = sum(statuses.values())
        result = {
            "requests": args.requests, "clients": args.clients, "answered": answered, "lost": lost,
            "server_errors": sum(n for s, n in statuses.items() if s >= 500),
            "unexpected": len(wrong), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "seconds": round(seconds, 1), "req_per_s": round(answered / seconds, 1),
            "rss_start_mb": round(rss_start / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
            "rss_growth_mb": round((rss_end - rss_start) / 2**20, 1),
        }
        print(" ".join(f"{k}={v}" for k, v in result.items() if k != "statuses")
              + f" statuses={result['statuses']}", file=sys.stderr)
        if wrong:
            print("unexpected answers (first 10): " + "; ".join(wrong[:10]), file=sys.stderr)
        if args.json:
            print(json.dumps(result, indent=2))
        return 0 if lost == 0 and result["server_errors"] == 0 and not wrong else 1
    finally:
        server.terminate()
        server.wait(30)
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
