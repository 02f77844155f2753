"""Inference with a bundle: the same preprocessing as training (decode → resize → /255),
heatmap inputs computed by the bundle's CAM backbone where the model needs them, and an
explanation (Grad-CAM overlay) with every prediction.

`predict_arrays` is the one inference path: ``dermfuse evaluate``, ``dermfuse predict`` and
the web service all call it, so they give the same probabilities for the same input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from .bundle import Bundle
from .data.cache import load_image, resize_image
from .errors import InputError
from .models.ensemble import Ensemble
from .train import tta_views
from .transforms import to_input

__all__ = ["Prediction", "prepare_image", "predict_arrays", "explain_arrays", "predict_one"]


@dataclass
class Prediction:
    probabilities: dict[str, float]
    top_class: str
    image: np.ndarray  # (H, W, 3) uint8, the preprocessed input image
    heatmap: np.ndarray | None  # (H, W) float in [0, 1]
    overlay: np.ndarray | None  # (H, W, 3) uint8

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "top_class": self.top_class}


def prepare_image(bundle: Bundle, source: str | Path | bytes) -> np.ndarray:
    """Decode and resize one image exactly as the training cache did → (S, S, 3) uint8.
    Raises InputError for a file that is missing, not an image, corrupt or too large."""
    return resize_image(load_image(source), bundle.image_size, bundle.resize_method)


def _batches(n: int, batch_size: int, progress: bool, what: str):
    starts = range(0, n, batch_size)
    return track(starts, description=what, transient=True, console=Console(stderr=True)) if progress and n > batch_size else starts


def predict_arrays(bundle: Bundle, images: np.ndarray, meta: np.ndarray, batch_size: int = 64,
                   progress: bool = False, calibrated: bool = True) -> np.ndarray:
    """Class probabilities for preprocessed images.

    images: (N, S, S, 3) uint8 at ``bundle.image_size``; meta: (N, D) float32 from
    ``bundle.encoder``. Returns (N, C) float32, rows summing to 1: the mean over the
    test-time views where the bundle asks for them, then the bundle's calibration (prior
    shift and temperature, see ``dermfuse.calibrate``); ``calibrated=False`` skips it."""
    model = bundle.model.eval()
    device = next(model.parameters()).device
    out = []
    for s in _batches(len(images), batch_size, progress, "predicting"):
        x = np.ascontiguousarray(images[s:s + batch_size])
        x = _model_view(bundle, x, batch_size)
        m = torch.as_tensor(np.asarray(meta[s:s + batch_size], np.float32), device=device)
        xs = to_input(x).to(device)  # (B, 3, S, S)
        views = tta_views(xs) if bundle.tta else [xs]
        with torch.inference_mode():
            proba = torch.stack([torch.softmax(model(v, m).float(), dim=1) for v in views]).mean(0)
        out.append(proba.cpu().numpy())
    if not out:
        return np.zeros((0, len(bundle.classes)), np.float32)
    proba = np.concatenate(out).astype(np.float32)
    return bundle.calibration.apply(proba) if calibrated else proba


def _model_view(bundle: Bundle, images: np.ndarray, batch_size: int) -> np.ndarray:
    """What the classifier's image branch sees: the image itself, or its heatmap rendering."""
    if bundle.input_mode == "image":
        return images
    from .heatmaps import compute_maps, render_input

    maps = compute_maps(bundle.cam_model, images, method=bundle.cam_method, batch_size=batch_size)
    return render_input(bundle.input_mode, images, maps)


def explain_arrays(bundle: Bundle, images: np.ndarray, meta: np.ndarray,
                   targets: list[int] | None = None) -> np.ndarray:
    """Heatmaps (N, S, S) float in [0, 1] that explain the bundle's prediction.

    Heatmap-input bundles return the CAM backbone's map (what the classifier saw); image-input
    bundles return Grad-CAM of the classifier itself for ``targets`` (default: predicted),
    averaged over the members of an ensemble."""
    if bundle.input_mode != "image":
        from .heatmaps import compute_maps

        return compute_maps(bundle.cam_model, images, method=bundle.cam_method)
    if getattr(bundle.model, "cam_layer", None) is None:
        raise InputError(f"model {bundle.info['model']['name']!r} has no image branch to explain")
    device = next(bundle.model.parameters()).device
    m = torch.as_tensor(np.asarray(meta, np.float32), device=device)
    x = to_input(images).to(device)
    if not isinstance(bundle.model, Ensemble):
        return _gradcam(bundle.model, x, m, targets)
    # A seed ensemble: every member's map for one class (default: the ensemble's), averaged.
    if targets is None:
        with torch.inference_mode():
            targets = [int(i) for i in bundle.model(x, m).argmax(1)]
    return np.mean([_gradcam(member, x, m, targets) for member in bundle.model.members], axis=0)


def _gradcam(model: torch.nn.Module, x: torch.Tensor, meta: torch.Tensor, targets: list[int] | None) -> np.ndarray:
    from .cam import GradCAM

    with GradCAM(model) as cam:
        maps = cam(x, meta, targets=targets)
    return np.asarray(maps.cpu() if hasattr(maps, "cpu") else maps, np.float32)


def predict_one(bundle: Bundle, image: str | Path | bytes, age: Any = None, sex: Any = None,
                site: Any = None, explain: bool = True, alpha: float = 0.4) -> Prediction:
    """Classify one image with its metadata; validates every input (InputError on bad ones)."""
    from .cam import overlay

    meta = bundle.encoder.encode_one(age, sex, site)[None, :]  # (1, D)
    if bundle.model_meta_dim == 0:
        meta = meta[:, :0]
    img = prepare_image(bundle, image)[None]  # (1, S, S, 3)
    proba = predict_arrays(bundle, img, meta)[0]
    probs = {c: float(p) for c, p in zip(bundle.classes, proba)}
    top = bundle.classes[int(proba.argmax())]
    heat = over = None
    if explain and (bundle.input_mode != "image" or getattr(bundle.model, "cam_layer", None) is not None):
        heat = explain_arrays(bundle, img, meta, targets=[int(proba.argmax())])  # the class reported
        over = overlay(img, heat, alpha=alpha)[0]
        heat = heat[0]
    return Prediction(probs, top, img[0], heat, over)
