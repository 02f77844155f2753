"""Tiny bundles and test images, built in well under a second (CPU, random weights).

The weights are random (seeded), so predictions mean nothing; the bundle records
``training_data = {"name": "untrained test bundle"}`` to say so.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFilter

from dermfuse import HAM10000_CLASSES
from dermfuse.inference.bundle import save_bundle
from dermfuse.evaluation.calibrate import Calibration
from dermfuse.data.encode import MetadataEncoder
from dermfuse.models import create_model

__all__ = ["SITES", "make_bundle", "make_encoder", "lesion_image", "png_bytes", "jpeg_bytes", "rescore_run"]

SITES = ("back", "face", "lower extremity", "trunk", "upper extremity")


def make_encoder() -> MetadataEncoder:
    """A MetadataEncoder fitted on a small hand-made table with the canonical columns."""
    table = pd.DataFrame({
        "image_id": [f"img{i}" for i in range(10)],
        "label": list(HAM10000_CLASSES) + ["nv", "mel", "bkl"],
        "age": [35, 50, 62, 58, 71, 45, 28, 80, 55, 40],
        "sex": ["male", "female", "male", "female", None, "male", "female", "male", "female", "male"],
        "site": ["back", "face", "trunk", "lower extremity", "upper extremity", "back", None,
                 "face", "trunk", "back"],
    })
    return MetadataEncoder().fit(table)


def make_bundle(out: str | Path, model: str = "ft_multicnn", image_size: int = 64, seed: int = 0,
                temperature: float = 1.0, input_mode: str = "image", tta: bool = False, members: int = 1,
                prior_shift: bool = False, tta_views: int = 0) -> Path:
    """Write a bundle of a randomly initialised ``model`` ('cnn' or 'ft_multicnn') to ``out``.

    A temperature below 1 spreads the random model's near-uniform probabilities (screenshots).
    ``input_mode`` other than 'image' adds a random 'cnn' CAM backbone; ``members`` > 1 makes
    a seed ensemble; ``prior_shift`` adds a (made-up) prior-shift calibration."""
    from dermfuse.models.ensemble import ENSEMBLE, build_ensemble

    torch.manual_seed(seed)
    encoder = make_encoder()
    meta_dim = encoder.n_features if model == "ft_multicnn" else 0
    kwargs = {"num_classes": len(HAM10000_CLASSES), "meta_dim": meta_dim, "input_size": image_size}
    name = model
    if members > 1:
        net = build_ensemble(model, kwargs, members).eval()
        name, kwargs = ENSEMBLE, {"member": model, "member_kwargs": kwargs, "n_members": members,
                                  "num_classes": len(HAM10000_CLASSES), "meta_dim": meta_dim}
    else:
        net = create_model(model, pretrained=False, **kwargs).eval()
    cam = cam_kwargs = None
    if input_mode != "image":
        cam_kwargs = {"num_classes": len(HAM10000_CLASSES), "meta_dim": 0, "input_size": image_size}
        cam = create_model("cnn", pretrained=False, **cam_kwargs).eval()
    log_prior = np.log(np.linspace(1, 3, len(HAM10000_CLASSES)) / np.linspace(1, 3, len(HAM10000_CLASSES)).sum())
    calibration = Calibration(temperature=temperature, prior_shift=0.7 if prior_shift else 0.0,
                              log_prior=log_prior.tolist() if prior_shift else None)
    return save_bundle(
        out, model=net, model_name=name, model_kwargs=kwargs, classes=list(HAM10000_CLASSES),
        encoder=encoder, image_size=image_size, calibration=calibration, input_mode=input_mode,
        cam_model=cam, cam_name=None if cam is None else "cnn", cam_kwargs=cam_kwargs, tta=tta,
        tta_views=tta_views, metrics={"balanced_accuracy": 0.5, "auc_macro": 0.5, "n_images": 10},
        training_data={"name": "untrained test bundle"},
    )


def lesion_image(seed: int = 0, size: tuple[int, int] = (200, 150)) -> Image.Image:
    """A dermoscopy-like picture: a brown irregular blob on a skin-coloured background."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array([224, 180, 160]) + rng.normal(0, 6, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy = w / 2 + rng.uniform(-15, 15), h / 2 + rng.uniform(-10, 10)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = min(w, h) * (0.28 + 0.06 * rng.random(24))
    points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)]
    colour = tuple(int(c) for c in rng.integers((90, 50, 30), (140, 85, 60)))
    draw.polygon(points, fill=colour)
    draw.ellipse([cx - 12, cy - 9, cx + 10, cy + 11], fill=(60, 35, 25))
    return img.filter(ImageFilter.GaussianBlur(2))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def rescore_run(run, data: Path, out: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """`evaluate` a training run's bundle on the run's own test rows (its split.csv).
    Returns (the run's test probabilities, the bundle's, the run's predictions table), rows
    aligned by image id, columns p_<class>."""
    from dermfuse.runs.holdout import evaluate_bundle

    out.mkdir(parents=True, exist_ok=True)
    split = out / "split.csv"
    split.write_text((run.run_dir / "split.csv").read_text())
    evaluate_bundle(run.bundle, data, progress=False, out=out / "ev", split_file=split)
    ours = pd.read_csv(run.run_dir / "predictions.csv").set_index("image_id")
    again = pd.read_csv(out / "ev" / "predictions.csv").set_index("image_id").loc[ours.index]
    cols = [c for c in ours.columns if c.startswith("p_")]
    return ours[cols].to_numpy(), again[cols].to_numpy(), ours
