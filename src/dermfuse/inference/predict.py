"""Inference with a bundle, as functions: thin wrappers over the one engine,
`dermfuse.inference.predictor.Predictor` (same preprocessing as training, heatmap inputs
where the model needs them, calibration, test-time views, trust).

``predict_arrays``, ``explain_arrays`` and ``predict_one`` give the same numbers as the
engine because they are the engine; ``dermfuse evaluate``, ``predict``, ``cam`` and the web
service call it too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle import Bundle
from .predictor import Predictor
from .trust import Assessment, Trust

__all__ = ["Prediction", "prepare_image", "predict_arrays", "explain_arrays", "predict_one"]


@dataclass
class Prediction:
    probabilities: dict[str, float]
    top_class: str | None  # None when the input is out of distribution
    image: np.ndarray  # (H, W, 3) uint8, the preprocessed input image
    heatmap: np.ndarray | None  # (H, W) float in [0, 1]
    overlay: np.ndarray | None  # (H, W, 3) uint8
    assessment: Assessment = field(default_factory=lambda: Assessment("ok", None, 0.0))
    explained_class: str | None = None  # the class the heatmap explains
    model_id: str = "unknown"

    @property
    def status(self) -> str:
        return self.assessment.status

    def to_dict(self) -> dict[str, Any]:
        a = self.assessment
        return {"probabilities": self.probabilities, "top_class": self.top_class, "status": a.status,
                "probabilities_reliable": a.reliable, "confidence": a.confidence, "ood_score": a.ood_score,
                "operating_point": a.operating_point, "explained_class": self.explained_class,
                "model_id": self.model_id}


def prepare_image(bundle: Bundle, source: str | Path | bytes) -> np.ndarray:
    """Decode and resize one image exactly as the training cache did → (H, W, 3) uint8.
    Raises InputError for a file that is missing, not an image, corrupt or too large."""
    return Predictor.from_bundle(bundle).prepare_image(source)


def predict_arrays(bundle: Bundle, images: np.ndarray, meta: np.ndarray, batch_size: int = 64,
                   progress: bool = False, calibrated: bool = True) -> np.ndarray:
    """Class probabilities (N, C) float32 for preprocessed images (N, S, S, 3) uint8 and
    metadata (N, D) float32: `Predictor.run(...).proba`."""
    return Predictor.from_bundle(bundle).run(images, meta, batch_size=batch_size, progress=progress,
                                             calibrated=calibrated).proba


def explain_arrays(bundle: Bundle, images: np.ndarray, meta: np.ndarray,
                   targets: list[int] | None = None) -> np.ndarray:
    """Heatmaps (N, S, S) float in [0, 1] that explain ``targets`` (default: the predicted
    class). Heatmap-input bundles: the CAM backbone's map; image-input bundles: Grad-CAM of
    the classifier, averaged over the members of an ensemble."""
    return Predictor.from_bundle(bundle).run(images, meta, explain=True, targets=targets).maps


def _gradcam(model: torch.nn.Module, x: torch.Tensor, meta: torch.Tensor, targets: list[int] | None) -> np.ndarray:
    from ..explain.gradcam import GradCAM

    with GradCAM(model) as cam:
        maps = cam(x, meta, targets=targets)
    return np.asarray(maps.cpu() if hasattr(maps, "cpu") else maps, np.float32)


def predict_one(bundle: Bundle, image: str | Path | bytes, age: Any = None, sex: Any = None,
                site: Any = None, explain: bool = True, alpha: float = 0.4, explain_class: str | None = None,
                operating_point: str = "argmax") -> Prediction:
    """Classify one image with its metadata; validates every input (InputError on bad ones).
    ``explain_class``: the class whose heatmap to draw (default: the answered class)."""
    engine = Predictor.from_bundle(bundle)
    meta = engine.encode_meta(age=age, sex=sex, site=site)  # (1, D)
    img = engine.prepare_image(image)[None]  # (1, S, S, 3)
    return answer(engine, img, meta, explain=explain, explain_class=explain_class,
                  operating_point=operating_point, alpha=alpha)[0]


def answer(engine: Predictor, images: np.ndarray, meta: np.ndarray, explain: bool = True,
           explain_class: str | int | None = None, operating_point: str = "argmax",
           alpha: float = 0.4) -> list[Prediction]:
    """`Prediction`s for a batch of preprocessed images: one engine run (probabilities,
    features for the OOD score, maps), then the trust verdict per image. The map explains
    ``explain_class`` or else the answered class (the argmax where out of distribution)."""
    from ..explain.gradcam import overlay

    explain = explain and engine.can_explain
    decide = lambda p: p.argmax(1)  # noqa: E731  (the answered class, also for heatmap-input models)
    if operating_point != "argmax":
        trust = engine.trust or Trust()
        trust.decide(np.zeros((0, len(engine.classes))), engine.classes, operating_point)  # refuse early
        decide = lambda p: trust.decide(p, engine.classes, operating_point)  # noqa: E731
    out = engine.run(images, meta, features=engine.needs_features, explain=explain,
                     targets=explain_class if explain else None, decide=decide)
    verdicts = engine.assess(out, operating_point)
    preds = []
    for i, a in enumerate(verdicts):
        heat = over = None
        if out.maps is not None:
            heat = out.maps[i]
            over = overlay(images[i:i + 1], heat[None], alpha=alpha)[0]
        preds.append(Prediction({c: float(p) for c, p in zip(engine.classes, out.proba[i])}, a.top_class,
                                images[i], heat, over, a,
                                None if out.explained is None else engine.classes[int(out.explained[i])],
                                engine.model_id))
    return preds


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_inputs(source: str | Path) -> "pd.DataFrame":
    """The images to predict: a folder (every image file in it, sorted) or a CSV with a column
    ``image`` (or ``path``) and optional ``age``, ``sex``, ``site``; relative paths are read
    from the CSV's folder. Returns a table with path, age, sex, site (None where missing)."""
    import pandas as pd

    from ..errors import InputError

    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return pd.DataFrame({"path": [str(p) for p in files], "age": None, "sex": None, "site": None})
    try:
        table = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{source}: not a readable CSV ({e})") from None
    col = next((c for c in ("image", "path", "file") if c in table.columns), None)
    if col is None:
        raise InputError(f"{source}: expected a column image (or path) naming the image files; "
                         f"found {list(table.columns)}")
    if table.empty:
        raise InputError(f"{source}: no rows under the header; expected one row per image")
    paths = [str(p if Path(p).is_absolute() else source.parent / p) for p in table[col]]
    out = pd.DataFrame({"path": paths})
    for c in ("age", "sex", "site"):
        out[c] = [v if v.strip() else None for v in table[c]] if c in table.columns else None
    return out


def predict_table(engine: Predictor, items: "pd.DataFrame", operating_point: str = "argmax",
                  batch_size: int = 32, progress: bool = True) -> "pd.DataFrame":
    """Predictions for every row of `read_inputs`: path, status, top_class, confidence,
    ood_score, p_<class>, error. A bad row (unreadable image, bad metadata) does not stop the
    others: its status is ``error`` and ``error`` says what was wrong (the row counted from 1
    in the message); its other answers are empty."""
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress

    from ..errors import InputError

    items = items.reset_index(drop=True)  # rows by position: the message counts from 1
    rows: dict[int, dict[str, Any]] = {}
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("predicting", total=len(items))
        for s in range(0, len(items), batch_size):
            chunk = items.iloc[s:s + batch_size]
            imgs, metas, good = [], [], []
            for i, r in chunk.iterrows():
                try:
                    img = engine.prepare_image(r["path"])
                    meta = engine.encode_meta(age=r["age"], sex=r["sex"], site=r["site"])
                except InputError as e:
                    rows[i] = {"path": r["path"], "status": "error", "error": f"row {i + 1} ({r['path']}): {e}"}
                    continue
                imgs.append(img)
                metas.append(meta)
                good.append(i)
            if good:
                for p, i in zip(answer(engine, np.stack(imgs), np.concatenate(metas), explain=False,
                                       operating_point=operating_point), good):
                    rows[i] = {"path": items.loc[i, "path"], "status": p.status, "top_class": p.top_class,
                               "confidence": round(p.assessment.confidence, 6),
                               "ood_score": None if p.assessment.ood_score is None else round(p.assessment.ood_score, 4),
                               **{f"p_{c}": round(v, 6) for c, v in p.probabilities.items()}, "error": None}
            bar.advance(task, len(chunk))
    columns = ["path", "status", "top_class", "confidence", "ood_score", *(f"p_{c}" for c in engine.classes), "error"]
    return pd.DataFrame([rows[i] for i in range(len(items))], columns=columns)
