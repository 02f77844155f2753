"""An exported bundle run with onnxruntime and numpy alone, following export.json step by step:
the reference for anyone porting dermfuse to another runtime, and what the parity tests and
the int8 measurement use. No torch, no bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OnnxPredictor"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxPredictor:
    """``OnnxPredictor(export_dir, int8=False)``; ``predict(images, meta)`` -> calibrated (N, C).

    images: uint8 (N, S, S, 3), already decoded and resized as export.json's preprocessing
    says; meta: float32 (N, D) encoded as its metadata section says (ignored by image-only
    graphs)."""

    def __init__(self, export_dir: str | Path, int8: bool = False, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.dir = Path(export_dir)
        self.spec: dict[str, Any] = json.loads((self.dir / "export.json").read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1

        def session(graph: str) -> Any:
            g = self.spec["graphs"][graph]
            name = g["int8"] if int8 else g["file"]
            if name is None:
                raise ValueError(f"{self.dir}: no int8 graph for {graph} (export with --int8)")
            return ort.InferenceSession(str(self.dir / name), opts, providers=["CPUExecutionProvider"])

        self.classifier = session("classifier")
        self.cam = session("cam") if "cam" in self.spec["graphs"] else None
        self.input_names = {i.name for i in self.classifier.get_inputs()}
        self.output_names = [o.name for o in self.classifier.get_outputs()]
        self.lut = np.asarray(self.spec["render"]["jet_lut"], np.uint8) if self.cam is not None else None

    # -- the steps of export.json ----------------------------------------------------------

    @staticmethod
    def to_input(images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in [0, 1]."""
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)

    def cam_maps(self, images: np.ndarray) -> np.ndarray:
        """The CAM backbone's map (N, S, S) in [0, 1], before quantisation."""
        return self.cam.run(["heatmap"], {"image": self.to_input(images)})[0]

    def render(self, images: np.ndarray) -> np.ndarray:
        """What the classifier sees (N, S, S, 3) uint8: the picture, or its heatmap rendering."""
        mode = self.spec["render"]["mode"]
        if mode == "image":
            return images
        m = np.rint(self.cam_maps(images) * 255).astype(np.float32) / 255.0
        low = m.min(axis=(1, 2), keepdims=True)
        span = m.max(axis=(1, 2), keepdims=True) - low
        scaled = np.where(span > 0, (m - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
        colour = self.lut[(255 * scaled).astype(np.uint8)]
        if mode == "heatmap":
            return colour
        if mode == "overlay":
            a = 0.4
            return np.clip(np.rint((1 - a) * images.astype(np.float32) + a * colour.astype(np.float32)), 0,
                           255).astype(np.uint8)
        if mode == "masked":
            return np.rint(images.astype(np.float32) * m[..., None]).astype(np.uint8)
        raise ValueError(f"unknown render mode {mode!r}")

    @staticmethod
    def views(x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        table = {"identity": lambda v: v, "hflip": lambda v: v[..., ::-1], "vflip": lambda v: v[..., ::-1, :],
                 "hvflip": lambda v: v[..., ::-1, ::-1], "transpose": lambda v: v.transpose(0, 1, 3, 2)}
        return [np.ascontiguousarray(table[n](x)) for n in names]

    def run_view(self, x: np.ndarray, meta: np.ndarray | None) -> dict[str, np.ndarray]:
        """One call of classifier.onnx on float (N, 3, S, S): {output name: array}."""
        feed = {"image": x}
        if "meta" in self.input_names:
            feed["meta"] = np.asarray(meta, np.float32)
        return dict(zip(self.output_names, self.classifier.run(None, feed)))

    def calibrate(self, proba: np.ndarray) -> np.ndarray:
        c = self.spec["calibration"]
        if c["temperature"] == 1.0 and c["prior_shift"] == 0.0:
            return proba.astype(np.float32)
        z = np.log(np.clip(proba.astype(np.float64), 1e-12, 1.0))
        if c["prior_shift"]:
            z = z + c["prior_shift"] * np.asarray(c["log_prior"])
        return _softmax(z / c["temperature"]).astype(np.float32)

    def predict(self, images: np.ndarray, meta: np.ndarray | None = None, batch_size: int = 32,
                calibrated: bool = True) -> np.ndarray:
        """Probabilities (N, C): the mean over export.json's views, then its calibration."""
        names = [v["name"] for v in self.spec["views"]["list"]]
        out = []
        for s in range(0, len(images), batch_size):
            x = self.to_input(self.render(np.ascontiguousarray(images[s:s + batch_size])))
            m = None if meta is None else meta[s:s + batch_size]
            out.append(np.mean([self.run_view(v, m)["probabilities"] for v in self.views(x, names)], axis=0))
        proba = np.concatenate(out) if out else np.zeros((0, len(self.spec["classes"])), np.float32)
        return self.calibrate(proba) if calibrated else proba.astype(np.float32)
