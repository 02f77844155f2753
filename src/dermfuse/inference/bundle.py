"""Model bundles: a directory with ``model.safetensors`` (the weights of every network the
bundle needs, the CAM backbone included) and ``bundle.json`` (architecture, classes,
metadata encoder, preprocessing, input mode, metrics, model card, versions).

Loading never unpickles: weights come from safetensors, everything else from JSON. The
JSON records the SHA-256 of the weights file, so a truncated or edited file is caught
before any tensor is used. ``seen_images.txt`` (optional) lists the image ids the model
trained or chose its epoch on, so that `evaluate` can say when it is scoring them."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..evaluation.calibrate import Calibration
from ..data.encode import MetadataEncoder
from ..errors import BundleError
from ..image_size import Size, canonical_size, size_hw, size_json, size_text
from .trust import load_trust
from ..io import atomic_write, atomic_write_text
from ..models import create_model
from ..models.ensemble import ENSEMBLE, build_ensemble

__all__ = ["Bundle", "save_bundle", "load_bundle", "update_bundle_info", "round_weights", "write_seen_images",
           "BUNDLE_FORMAT", "MODEL_CARD", "WEIGHTS_DTYPES", "SEEN_FILE"]

BUNDLE_FORMAT = "dermfuse-bundle/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "bundle.json"
SEEN_FILE = "seen_images.txt"  # one image id a line: the training and validation rows
# how model.safetensors stores the classifier's floating-point tensors; the model is rebuilt and
# computes in float32 either way (bundle.json says "weights_dtype" only when it is not float32)
WEIGHTS_DTYPES = {"float32": torch.float32, "float16": torch.float16}

MODEL_CARD = {
    "intended_use": (
        "Research on skin-lesion classification from dermoscopic images and patient "
        "metadata. Not a medical device; not for diagnosis or treatment decisions."
    ),
    "limitations": (
        "Trained on the data named in 'training_data'; performance on other populations, "
        "devices and skin types is unknown. Scores are not calibrated probabilities of "
        "disease unless 'calibration' says so."
    ),
}


@dataclass
class Bundle:
    """A loaded bundle: the classifier, its optional CAM backbone and everything needed to
    preprocess inputs exactly as in training."""

    model: nn.Module
    classes: list[str]
    encoder: MetadataEncoder
    image_size: Size  # an int side (square) or (height, width); see dermfuse.image_size
    resize_method: str = "bilinear"
    input_mode: str = "image"  # image | heatmap | overlay | masked
    cam_model: nn.Module | None = None  # sees the classifier's input (image_size)
    cam_method: str = "gradcam"
    calibration: Calibration = field(default_factory=Calibration)  # fitted on validation rows
    tta: bool = False  # average predictions over flips (and the transpose for square inputs)
    tta_views: int = 0  # with tta: the first N views of `dermfuse.preprocess.tta_views`; 0 = every one
    info: dict[str, Any] = field(default_factory=dict)  # the whole bundle.json
    trust: Any = None  # dermfuse.inference.trust.Trust, or None for a bundle made before trust
    path: Path | None = None  # the directory it was loaded from

    @property
    def model_id(self) -> str:
        return self.info.get("model_id", "unknown")

    @property
    def model_meta_dim(self) -> int:
        """Metadata features the classifier takes (0 for image-only models)."""
        return int(self.info["model"]["kwargs"].get("meta_dim", 0))

    def seen_images(self) -> frozenset[str] | None:
        """The image ids this model trained on or chose its epoch and calibration on
        (training and validation rows), or None for a bundle that does not record them.
        BundleError if the list is missing or differs from its checksum."""
        entry = self.info.get("training_data", {}).get("seen_images")
        if not entry or self.path is None:
            return None
        file = self.path / entry["file"]
        if not file.is_file():
            raise BundleError(f"{file}: missing; bundle.json lists it (training_data.seen_images)")
        if _sha256(file) != entry["sha256"]:
            raise BundleError(f"{file}: SHA-256 differs from bundle.json's; the file was changed or truncated")
        return frozenset(file.read_text(encoding="utf-8").splitlines())  # ids may hold spaces

    def encode_table(self, table) -> "np.ndarray":
        """Metadata features for a cleaned table, (N, model_meta_dim) float32."""
        from .predictor import encode_metadata

        return encode_metadata(self.encoder, self.model_meta_dim, table)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(
    out: str | Path,
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    classes: list[str],
    encoder: MetadataEncoder,
    image_size: Size,
    resize_method: str = "bilinear",
    input_mode: str = "image",
    cam_model: nn.Module | None = None,
    cam_name: str | None = None,
    cam_kwargs: dict[str, Any] | None = None,
    cam_method: str = "gradcam",
    calibration: Calibration | None = None,
    tta: bool = False,
    tta_views: int = 0,
    metrics: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    weights_dtype: str = "float32",
    seen_images: Sequence[str] | None = None,
) -> Path:
    """Write a bundle directory and return its path.

    ``model_kwargs`` must be the keyword arguments that rebuild the architecture with
    ``create_model(model_name, **model_kwargs)`` (weights excluded). ``weights_dtype``
    float16 stores the classifier's floating-point tensors at half precision (half the file;
    a CAM backbone stays float32); score ``round_weights(model, "float16")`` to measure
    what the bundle will compute. ``seen_images``: the ids of the training and validation
    rows, written to ``seen_images.txt`` (see `Bundle.seen_images`)."""
    if input_mode != "image" and cam_model is None:
        raise ValueError(f"input mode {input_mode!r} needs a CAM backbone in the bundle")
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype {weights_dtype!r}: expected one of {sorted(WEIGHTS_DTYPES)}")
    if isinstance(tta_views, bool) or not isinstance(tta_views, int) or not 0 <= tta_views <= (
            5 if len(set(size_hw(image_size))) == 1 else 4):
        raise ValueError(f"tta_views {tta_views!r}: expected 0 (every view) or at most the views a "
                         f"{size_text(image_size)} input has")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digest = _write_weights(out / WEIGHTS_FILE, model, cam_model, WEIGHTS_DTYPES[weights_dtype])
    info = {
        "format": BUNDLE_FORMAT,
        "model_id": f"{model_name}-{digest[:12]}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_name, "kwargs": model_kwargs},
        "classes": list(classes),
        "encoder": encoder.to_dict(),
        "preprocessing": {
            "image_size": size_json(image_size),  # an int for a square, else [height, width]
            "resize_method": resize_method,
            "scale": "uint8 / 255; the model normalises internally",
            "input": input_mode,
            "tta": bool(tta),
            **({"tta_views": int(tta_views)} if tta and tta_views else {}),  # absent: every view
        },
        "cam": None if cam_model is None else {  # no image_size: it sees preprocessing.image_size
            "name": cam_name, "kwargs": cam_kwargs or {}, "method": cam_method},
        "calibration": (calibration or Calibration()).to_dict(),
        "metrics": metrics or {},
        "training_data": {**(training_data or {}),
                          **({} if seen_images is None else {"seen_images": write_seen_images(out, seen_images)})},
        "model_card": MODEL_CARD,
        "versions": {"dermfuse": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "weights_sha256": digest,
        **({} if weights_dtype == "float32" else {"weights_dtype": weights_dtype}),
        **(extra or {}),
    }
    atomic_write_text(out / META_FILE, json.dumps(info, indent=2, default=_json_default))
    return out


def write_seen_images(out: str | Path, image_ids: Sequence[str]) -> dict[str, Any]:
    """Write ``out/seen_images.txt`` (sorted, unique ids); returns bundle.json's entry for it
    (``training_data.seen_images``)."""
    ids = sorted({str(i) for i in image_ids})
    bad = [i for i in ids if not i or "\n" in i or "\r" in i]
    if bad:
        raise ValueError(f"image ids must be non-empty and on one line: {bad[:3]}")
    file = Path(out) / SEEN_FILE
    atomic_write_text(file, "".join(f"{i}\n" for i in ids))
    return {"file": SEEN_FILE, "count": len(ids), "sha256": _sha256(file)}


def round_weights(model: nn.Module, weights_dtype: str) -> nn.Module:
    """Round every floating-point parameter and buffer of ``model`` to ``weights_dtype`` and
    back, in place: the float32 model then computes exactly what a bundle stored at that
    precision will. ValueError naming the tensor if one does not fit (overflow)."""
    dtype = WEIGHTS_DTYPES[weights_dtype]
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point() and t.dtype != dtype:
                t.copy_(_lower(name, t, dtype))
    return model


def _lower(name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype``; ValueError if a finite value overflows there."""
    low = t.detach().to(dtype)
    if not bool(torch.isfinite(low).all()) and bool(torch.isfinite(t).all()):
        raise ValueError(f"weights as {str(dtype).removeprefix('torch.')}: {name} has values beyond its range "
                         f"(max |x| {t.abs().max().item():.3g}); the checkpoints are kept: rerun with --resume "
                         "--set train.weights_dtype=float32")
    return low


def _write_weights(file: Path, model: nn.Module, cam_model: nn.Module | None,
                   dtype: torch.dtype = torch.float32) -> str:
    """Write the model's (``model.*``, floating-point tensors as ``dtype``) and the CAM
    backbone's (``cam.*``, as they are) tensors as one safetensors file; return its sha256."""
    tensors = {f"model.{k}": (_lower(k, v, dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in model.state_dict().items()}
    if cam_model is not None:
        tensors.update(
            {f"cam.{k}": v.detach().cpu().contiguous() for k, v in cam_model.state_dict().items()}
        )
    atomic_write(file, lambda tmp: save_file(tensors, str(tmp), metadata={"format": BUNDLE_FORMAT}))
    return _sha256(file)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def update_bundle_info(path: str | Path, **changes: Any) -> dict[str, Any]:
    """Replace top-level keys of a bundle's ``bundle.json`` (e.g. ``calibration``,
    ``metrics``) atomically; the weights and their checksum are untouched."""
    path = Path(path)
    info = read_bundle_info(path)
    info.update(changes)
    atomic_write_text(path / META_FILE, json.dumps(info, indent=2, default=_json_default))
    return info


def read_bundle_info(path: str | Path) -> dict[str, Any]:
    """Read and check ``bundle.json`` (no weights). Raises BundleError with the reason."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if path.is_file():
        raise BundleError(f"{path} is a file; a bundle is a directory holding {META_FILE} and {WEIGHTS_FILE}")
    meta = path / META_FILE
    if not meta.is_file():
        raise BundleError(f"{path} is not a dermfuse bundle: {META_FILE} is missing")
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise BundleError(f"{meta}: not a dermfuse bundle (format {found!r}, expected {BUNDLE_FORMAT!r})")
    for key in ("model", "classes", "encoder", "preprocessing", "weights_sha256"):
        if key not in info:
            raise BundleError(f"{meta}: required key {key!r} is missing")
    if info.get("weights_dtype", "float32") not in WEIGHTS_DTYPES:
        raise BundleError(f"{meta}: weights_dtype {info['weights_dtype']!r}, expected one of {sorted(WEIGHTS_DTYPES)}")
    return info


def _declared_size(where: Path, key: str, value: Any) -> Size:
    """A size bundle.json declares (an int, or [height, width]) as `canonical_size`; a
    BundleError names the key otherwise."""
    try:
        return canonical_size(value)
    except ValueError:
        raise BundleError(f"{where}: {key} is {value!r}; expected a side in px or [height, width]") from None


def _check_fits(path: Path, info: dict[str, Any], model: nn.Module, encoder: MetadataEncoder,
                cam: dict[str, Any] | None) -> None:
    """bundle.json against the weights it ships: input size, metadata width, classes vs the
    network's output (one forward pass of zeros). A mismatch is a BundleError naming both."""
    where = path / META_FILE
    kwargs = info["model"]["kwargs"]
    size = _declared_size(where, "preprocessing.image_size", info["preprocessing"]["image_size"])
    h, w = size_hw(size)
    declared = kwargs.get("input_size", kwargs.get("member_kwargs", {}).get("input_size"))
    if declared and _declared_size(where, "model.kwargs.input_size", declared) != size:
        raise BundleError(f"{where}: preprocessing.image_size is {size_text(size)} but the model was built for "
                          f"input_size {size_text(declared)}")
    if cam:  # the CAM backbone gets the classifier's input; older bundles say so in cam.image_size
        old_size, cam_declared = cam.get("image_size"), cam.get("kwargs", {}).get("input_size")
        if old_size is not None and _declared_size(where, "cam.image_size", old_size) != size:
            raise BundleError(f"{where}: cam.image_size is {size_text(old_size)} but preprocessing.image_size is "
                              f"{size_text(size)}; the CAM backbone is given the classifier's input, so they must agree")
        if cam_declared and _declared_size(where, "cam.kwargs.input_size", cam_declared) != size:
            raise BundleError(f"{where}: the CAM backbone was built for input_size {size_text(cam_declared)} but "
                              f"it is given the classifier's {h}x{w} input (preprocessing.image_size)")
    meta_dim = int(kwargs.get("meta_dim", kwargs.get("member_kwargs", {}).get("meta_dim", 0)) or 0)
    if meta_dim not in (0, encoder.n_features):
        raise BundleError(f"{where}: the model takes {meta_dim} metadata features but the encoder "
                          f"gives {encoder.n_features} ({', '.join(encoder.feature_names)})")
    n_classes = len(info["classes"])
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            logits = model(torch.zeros(1, 3, h, w, device=device),
                           torch.zeros(1, meta_dim, device=device))
    except (RuntimeError, ValueError) as e:
        raise BundleError(f"{where}: the model does not run on a {h}x{w} image with {meta_dim} "
                          f"metadata features ({str(e)[:200]})") from None
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise BundleError(f"{where}: lists {n_classes} classes ({', '.join(map(str, info['classes']))}) "
                          f"but the network outputs {tuple(logits.shape[1:])} logits per image")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle directory; never unpickles. Raises BundleError for a missing,
    truncated, edited or foreign bundle."""
    path = Path(path)
    info = read_bundle_info(path)
    tensors = _read_weights(path, info)
    try:
        model = _rebuild(path, tensors, "model.", info["model"]["name"], info["model"]["kwargs"], device)
        cam = info.get("cam")
        cam_model = _rebuild(path, tensors, "cam.", cam["name"], cam["kwargs"], device) if cam else None
        pre = info["preprocessing"]
        encoder = MetadataEncoder.from_dict(info["encoder"])
        _check_fits(path, info, model, encoder, cam)
        n_views = pre.get("tta_views", 0)
        if isinstance(n_views, bool) or not isinstance(n_views, int) or not 0 <= n_views <= (5 if len(set(size_hw(pre["image_size"]))) == 1 else 4):
            raise BundleError(f"{path / META_FILE}: preprocessing.tta_views {n_views!r}; expected 0 (every view) "
                              f"or the number of test-time views the {size_text(pre['image_size'])} input has, at most")
        calibration = Calibration.from_dict(info.get("calibration"))
        if not calibration.temperature > 0 or (
                calibration.prior_shift and len(calibration.log_prior or []) != len(info["classes"])):
            raise BundleError(f"{path}: calibration needs temperature > 0 and one log_prior entry per class")
        return Bundle(
            model=model,
            classes=list(info["classes"]),
            encoder=encoder,
            image_size=canonical_size(pre["image_size"]),  # checked by _check_fits
            resize_method=pre.get("resize_method", "bilinear"),
            input_mode=pre.get("input", "image"),
            cam_model=cam_model,
            cam_method=cam["method"] if cam else "gradcam",
            calibration=calibration,
            tta=bool(pre.get("tta", False)),
            tta_views=int(pre.get("tta_views", 0)),
            info=info,
            trust=load_trust(path, info.get("trust")),
            path=path,
        )
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{path / META_FILE}: malformed bundle description ({type(e).__name__}: {e})") from None


def _read_weights(path: Path, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bundle's tensors, after checking the file's sha256 against bundle.json's."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{path}: {WEIGHTS_FILE} is missing")
    digest = _sha256(weights)
    if digest != info["weights_sha256"]:
        raise BundleError(
            f"{weights}: checksum mismatch (file is truncated or was changed after the bundle was written)"
        )
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{weights}: not a readable safetensors file ({e})") from None


def _rebuild(path: Path, tensors: dict[str, torch.Tensor], prefix: str, name: str, kwargs: dict[str, Any],
             device: str | torch.device) -> nn.Module:
    """Network ``name`` built from ``kwargs`` with the tensors under ``prefix``, in eval mode."""
    try:
        net = build_ensemble(**kwargs) if name == ENSEMBLE else create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: cannot rebuild model {name!r} ({e})") from None
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{path}: weights do not fit model {name!r}: {str(e)[:500]}") from None
    return net.to(device).eval()
