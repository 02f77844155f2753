"""The micro-batcher of the web service: one worker thread owns torch and runs every forward
pass; requests that arrive while it is busy form one batch (up to ``max_batch``) and go
through the inference engine together, so concurrent clients share forward passes and each
answer equals ``predict_one``'s. A batch that fails is retried one image at a time, so a
failure stays with the request that caused it."""

from __future__ import annotations

import base64
import io
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..constants import OVERLAY_ALPHA
from ..inference.bundle import Bundle
from ..inference.predictor import Predictor
from ..inference.trust import Trust

__all__ = ["Batcher", "infer_batch", "png_base64"]


@dataclass
class _Job:
    image: np.ndarray  # (S, S, 3) uint8
    meta: np.ndarray  # (D,) float32
    future: Future
    explain: int | None = None  # class index to explain (None: the answered class)
    operating_point: str = "argmax"


class Batcher:
    """One worker thread runs every forward pass; jobs waiting when it gets free form one batch.

    There is no waiting window: a lone request runs at once, and under load the batch is
    whatever queued up during the previous forward pass (at most ``max_batch``)."""

    def __init__(self, bundle: Bundle, max_batch: int = 8) -> None:
        self.bundle = bundle
        self.engine = Predictor.from_bundle(bundle)
        self.max_batch = max_batch
        self.batches = 0  # forward passes run
        self.items = 0  # images predicted
        self.largest_batch = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dermfuse-infer", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        self._thread = None

    def submit(self, image: np.ndarray, meta: np.ndarray, explain: int | None = None,
               operating_point: str = "argmax") -> Future:
        self.start()
        job = _Job(image, meta, Future(), explain, operating_point)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # stop after this batch
                    self._queue.put(None)
                    break
                jobs.append(nxt)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        try:
            results = infer_batch(self.engine, np.stack([j.image for j in jobs]), np.stack([j.meta for j in jobs]),
                                  [j.explain for j in jobs], [j.operating_point for j in jobs])
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) > 1:  # one at a time, so a failure stays with the request that caused it
                for j in jobs:
                    self._process([j])
                return
            jobs[0].future.set_exception(exc)
            return
        self.batches += 1
        self.items += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        for j, r in zip(jobs, results):
            j.future.set_result(r)


def infer_batch(engine: Predictor, images: np.ndarray, meta: np.ndarray, explain: list[int | None],
                points: list[str]) -> list[dict[str, Any]]:
    """One engine run for a batch (probabilities, features, maps), then the trust verdict.
    images: (B, S, S, 3) uint8; meta: (B, D); explain: class index per image or None (the
    answered class at that image's operating point)."""
    from ..explain.gradcam import colorize, overlay

    trust = engine.trust or Trust()

    def choose(proba: np.ndarray) -> np.ndarray:
        answered = {op: trust.decide(proba, engine.classes, op) for op in set(points)}
        return np.array([e if e is not None else answered[op][i] for i, (e, op) in enumerate(zip(explain, points))])

    out = engine.run(images, meta, features=engine.needs_features, explain=engine.can_explain,
                     decide=choose, batch_size=len(images))
    results = []
    for i, op in enumerate(points):
        verdict = trust.assess(out.proba[i:i + 1], None if out.features is None else out.features[i:i + 1],
                               engine.classes, op)[0]
        r = {"proba": out.proba[i], "verdict": verdict, "heatmap_png": None, "map_png": None,
             "explained_class": None, "image_png": png_base64(images[i])}
        if out.maps is not None:
            r["heatmap_png"] = png_base64(overlay(images[i:i + 1], out.maps[i:i + 1], alpha=OVERLAY_ALPHA)[0])
            r["map_png"] = png_base64(colorize(out.maps[i:i + 1])[0])
            r["explained_class"] = engine.classes[int(out.explained[i])]
        results.append(r)
    return results


def png_base64(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a base64 PNG string."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")
