"""``dermfuse cam``: original | heatmap | overlay figures (the paper's Fig. 6) for any images,
made with the bundle's own preprocessing and its CAM backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from .bundle import load_bundle
from .cam import plot_triptych
from .constants import OVERLAY_ALPHA
from .errors import BundleError, InputError
from .plots import save_figure
from .predict import explain_arrays, predict_arrays, prepare_image

__all__ = ["cam_figures"]


def cam_figures(bundle_path: str | Path, images: Sequence[str | Path], out: str | Path,
                alpha: float = OVERLAY_ALPHA) -> list[Path]:
    """Write one triptych PNG per image into ``out``; returns their paths.

    Uses the bundle's CAM backbone where it has one; an image-input bundle is explained by
    Grad-CAM of its own classifier. Metadata is unknown here, so it is encoded as missing.
    Raises BundleError for a bundle that has nothing to explain with, InputError for an
    unreadable image (named)."""
    bundle = load_bundle(bundle_path)
    if bundle.cam_model is None and getattr(bundle.model, "cam_layer", None) is None:
        raise BundleError(
            f"{bundle_path}: the bundle has no CAM backbone and its model "
            f"{bundle.info['model']['name']!r} has no convolutional layer to explain; "
            "train with --input heatmap (or an image model) to get heatmaps")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = bundle.encoder.encode_one(None, "unknown", "unknown")[None, : bundle.model_meta_dim]
    written = []
    stems = [Path(str(s)).stem for s in images]
    for i, src in enumerate(images):
        try:
            img = prepare_image(bundle, src)[None]  # (1, S, S, 3)
        except InputError as e:
            raise InputError(f"{src}: {e}") from None
        proba = predict_arrays(bundle, img, meta)[0]
        maps = explain_arrays(bundle, img, meta, targets=[int(proba.argmax())])  # the class in the title
        top = bundle.classes[int(proba.argmax())]
        title = f"{Path(str(src)).name}: {top} ({proba.max():.2f})"
        stem = stems[i] if stems.count(stems[i]) == 1 else f"{i:03d}_{stems[i]}"
        path = out / f"{stem}_cam.png"
        save_figure(plot_triptych(img, maps, titles=[title], alpha=alpha), path)
        written.append(path)
    return written
