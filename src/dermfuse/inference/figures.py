"""``dermfuse cam``: original | heatmap | overlay figures (the paper's Fig. 6) for any images,
made with the bundle's own preprocessing and its CAM backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from .bundle import load_bundle
from ..explain.gradcam import plot_triptych
from ..constants import OVERLAY_ALPHA
from ..errors import BundleError, InputError
from ..evaluation.plots import save_figure
from .predictor import Predictor
from .predict import answer
from .device import resolve_device

__all__ = ["cam_figures"]


def cam_figures(bundle_path: str | Path | None, images: Sequence[str | Path], out: str | Path,
                alpha: float = OVERLAY_ALPHA, explain_class: str | None = None, device: str = "cpu") -> list[Path]:
    """Write one triptych PNG per image into ``out``; returns their paths.

    Uses the bundle's CAM backbone where it has one; an image-input bundle is explained by
    Grad-CAM of its own classifier. Metadata is unknown here, so it is encoded as missing.
    ``explain_class`` (e.g. 'mel'): the class to explain, default each image's answer.
    ``bundle_path`` None: the released model. Raises BundleError for a bundle that has
    nothing to explain with, InputError for an unreadable image (named)."""
    from ..released import resolve_bundle

    bundle = load_bundle(resolve_bundle(bundle_path), device=resolve_device(device))
    if bundle.cam_model is None and getattr(bundle.model, "cam_layer", None) is None:
        raise BundleError(
            f"{bundle_path}: the bundle has no CAM backbone and its model "
            f"{bundle.info['model']['name']!r} has no convolutional layer to explain; "
            "train with --input heatmap (or an image model) to get heatmaps")
    engine = Predictor.from_bundle(bundle)
    if explain_class is not None:
        engine.class_index(explain_class)  # refuse an unknown class before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = engine.encode_meta(age=None, sex="unknown", site="unknown")
    written = []
    stems = [Path(str(s)).stem for s in images]
    for i, src in enumerate(images):
        try:
            img = engine.prepare_image(src)[None]  # (1, S, S, 3)
        except InputError as e:
            raise InputError(f"{src}: {e}") from None
        p = answer(engine, img, meta, explain=True, explain_class=explain_class, alpha=alpha)[0]
        proba = max(p.probabilities.values())
        shown = p.top_class or "not a lesion image (out of distribution)"
        title = f"{Path(str(src)).name}: {shown} ({proba:.2f})"
        if p.explained_class and p.explained_class != p.top_class:
            title += f"; map: {p.explained_class}"
        stem = stems[i] if stems.count(stems[i]) == 1 else f"{i:03d}_{stems[i]}"
        path = out / f"{stem}_cam.png"
        save_figure(plot_triptych(img, p.heatmap[None], titles=[title], alpha=alpha), path)
        written.append(path)
    return written
