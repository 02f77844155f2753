"""The one inference engine: a `Predictor` turns preprocessed images and metadata into
class probabilities, image features, explanation maps and (with a bundle's trust part) a
status per image, each computed once per batch.

What one call of :meth:`Predictor.run` does for a batch::

    image input:    [Grad-CAM forward of the identity view, features tapped] + the other
                    test-time views (inference mode) -> mean softmax -> calibration
                    -> class to explain -> Grad-CAM backward (head only) -> maps
    heatmap input:  CAM backbone's Grad-CAM on the raw image (maps, features tapped)
                    -> rendered input -> classifier over the test-time views -> calibration;
                    the maps are the explanation (what the classifier saw)

So an explained image-input prediction costs one forward per view plus a backward through
the head, and a heatmap-input prediction computes its maps once. ``dermfuse evaluate``,
``predict``, ``cam`` and ``serve`` all call this class; `dermfuse.inference.predict` keeps thin
function wrappers for older callers."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..evaluation.calibrate import Calibration
from ..data.cache import load_image, resize_image
from ..data.encode import MetadataEncoder
from ..errors import InputError
from ..image_size import Size, canonical_size
from ..models.ensemble import Ensemble
from ..preprocess import to_input, tta_views
from .trust import Assessment, Trust

__all__ = ["Predictor", "Output", "encode_metadata", "feature_taps", "ood_layers", "stat_taps", "channel_stats"]


def encode_metadata(encoder: MetadataEncoder, meta_dim: int, table: Any = None, age: Any = None,
                    sex: Any = None, site: Any = None) -> np.ndarray:
    """The classifier's metadata features: (N, meta_dim) float32 for a cleaned table, or
    (1, meta_dim) for one strict (age, sex, site) input (InputError on a bad value)."""
    if table is not None:
        meta = encoder.transform(table)
    else:
        meta = encoder.encode_one(age, sex, site)[None, :]
    return np.ascontiguousarray(meta[:, :meta_dim], dtype=np.float32)


def feature_taps(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Where a model's pooled image features can be read: (module, 'output' | 'input') per
    network (one per ensemble member). Empty for a model without an image branch."""
    if isinstance(model, Ensemble):
        return [t for m in model.members for t in feature_taps(m)]
    if getattr(model, "cam_layer", None) is None:
        return []
    if hasattr(model, "image_branch"):  # FT-MultiCNN: the image branch's pooled features
        return [(model.image_branch, "output")]
    if isinstance(getattr(model, "head", None), nn.Linear):  # plain CNN: what the head reads
        return [(model.head, "input")]
    net = getattr(model, "net", None)
    if net is not None and hasattr(net, "get_classifier"):  # a timm network
        head = net.get_classifier()
        return [(head, "input")] if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) else [(net, "output")]
    return []


def stat_taps(model: nn.Module, layer: str) -> list[nn.Module]:
    """The module at ``layer`` (a path from `ood_layers`) in each network of ``model`` (one
    per ensemble member); its output's per-channel mean and standard deviation are the
    out-of-distribution features. BundleError-free: a path the model lacks is a ValueError."""
    nets = list(model.members) if isinstance(model, Ensemble) else [model]
    try:
        return [net.get_submodule(layer) for net in nets]
    except AttributeError:
        raise ValueError(f"out-of-distribution layer {layer!r} is not a module of this model") from None


def ood_layers(model: nn.Module) -> list[str]:
    """Candidate layers for the out-of-distribution features, shallow to deep: the stages of
    the image network (EfficientNet ``blocks.N``, ResNet ``layerN``, the plain CNN's
    ``blocks.N``), as paths inside one network (an ensemble's first member)."""
    net = model.members[0] if isinstance(model, Ensemble) else model
    pattern = re.compile(r"(^|\.)(blocks\.\d+|layer\d+)$")
    return [name for name, _ in net.named_modules() if pattern.search(name)]


def channel_stats(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) activations -> (B, 2C): per-channel spatial mean, then standard deviation."""
    t = t.detach().float()
    return torch.cat([t.mean(dim=(2, 3)), t.std(dim=(2, 3))], dim=1).cpu()


@contextmanager
def _tapped(model: nn.Module | None, sink: list[list[torch.Tensor]], layer: str | None = None) -> Iterator[None]:
    """Collect the image features of every forward pass of ``model`` into ``sink`` (one list
    of (B, F_k) tensors per pass, concatenated by the caller): the pooled features, or with
    ``layer`` the channel statistics of that layer's output."""
    if model is None:
        taps = []
    elif layer is not None:
        taps = [(m, "stats") for m in stat_taps(model, layer)]
    else:
        taps = feature_taps(model)
    handles, current = [], []

    def grab(kind: str):
        def hook(module, inputs, output):
            if kind == "stats":
                current.append(channel_stats(output))
            else:
                t = inputs[0] if kind == "input" else output
                current.append(t.detach().flatten(1).float().cpu())
            if len(current) == len(taps):
                sink.append(list(current))
                current.clear()
        return hook

    try:
        for module, kind in taps:
            handles.append(module.register_forward_hook(grab(kind)))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Output:
    """What `Predictor.run` returns for N images."""

    proba: np.ndarray  # (N, C) float32, rows sum to 1 (calibrated unless asked otherwise)
    features: np.ndarray | None = None  # (N, F) float32 pooled image features of the identity view
    maps: np.ndarray | None = None  # (N, S, S) float32 in [0, 1], explanation of `explained`
    explained: np.ndarray | None = None  # (N,) int, the class each map explains


class Predictor:
    """Inference for one model with its preprocessing; build it with :meth:`from_bundle`
    or from in-memory parts (tests, training code)."""

    def __init__(self, model: nn.Module, classes: Sequence[str], encoder: MetadataEncoder, image_size: Size,
                 *, meta_dim: int | None = None, resize_method: str = "bilinear", input_mode: str = "image",
                 cam_model: nn.Module | None = None, cam_method: str = "gradcam",
                 calibration: Calibration | None = None, tta: bool = False, tta_views: int = 0,
                 trust: Trust | None = None,
                 model_id: str = "unknown", info: dict[str, Any] | None = None) -> None:
        if input_mode != "image" and cam_model is None:
            raise ValueError(f"input mode {input_mode!r} needs a CAM backbone")
        self.model = model.eval()
        self.classes = list(classes)
        self.encoder = encoder
        self.image_size = canonical_size(image_size)  # an int side, or (height, width)
        self.meta_dim = int(getattr(model, "meta_dim", 0) if meta_dim is None else meta_dim)
        self.resize_method = resize_method
        self.input_mode = input_mode
        self.cam_model = cam_model.eval() if cam_model is not None else None
        self.cam_method = cam_method
        self.calibration = calibration or Calibration()
        self.tta = bool(tta)
        self.tta_views = int(tta_views)  # with tta: the first N views; 0 = every one
        self.trust = trust
        self.model_id = model_id
        self.info = info or {}

    @classmethod
    def from_bundle(cls, bundle: Any) -> Predictor:
        """The engine for a loaded `dermfuse.inference.bundle.Bundle` (it holds references only: building
        one per call is free, and it always sees the bundle's current parts)."""
        return cls(bundle.model, bundle.classes, bundle.encoder, bundle.image_size, meta_dim=bundle.model_meta_dim,
                resize_method=bundle.resize_method, input_mode=bundle.input_mode, cam_model=bundle.cam_model,
                cam_method=bundle.cam_method, calibration=bundle.calibration, tta=bundle.tta,
                tta_views=bundle.tta_views,
                trust=getattr(bundle, "trust", None), model_id=bundle.model_id, info=bundle.info)

    # -- inputs --------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def can_explain(self) -> bool:
        return self.input_mode != "image" or getattr(self.model, "cam_layer", None) is not None

    def prepare_image(self, source: str | Path | bytes) -> np.ndarray:
        """Decode and resize one image exactly as the training cache did -> (H, W, 3) uint8.
        Raises InputError for a file that is missing, not an image, corrupt or too small/large."""
        return resize_image(load_image(source), self.image_size, self.resize_method)

    def encode_meta(self, table: Any = None, age: Any = None, sex: Any = None, site: Any = None) -> np.ndarray:
        """`encode_metadata` with this model's encoder and width."""
        return encode_metadata(self.encoder, self.meta_dim, table, age, sex, site)

    def class_index(self, name_or_index: str | int) -> int:
        """Index of a class given by name (e.g. 'mel') or index; InputError if unknown."""
        if isinstance(name_or_index, (int, np.integer)) and 0 <= int(name_or_index) < len(self.classes):
            return int(name_or_index)
        if isinstance(name_or_index, str) and name_or_index.strip().lower() in self.classes:
            return self.classes.index(name_or_index.strip().lower())
        raise InputError(f"class to explain {name_or_index!r} is not one of this model's classes {self.classes}")

    # -- the engine ----------------------------------------------------------------------

    def run(self, images: np.ndarray, meta: np.ndarray, *, explain: bool = False,
            targets: Sequence[int] | int | str | None = None, features: bool = False,
            calibrated: bool = True, batch_size: int = 64, progress: bool = False,
            decide: Callable[[np.ndarray], np.ndarray] | None = None) -> Output:
        """Probabilities (and on request features, explanation maps) for N images.

        images: (N, H, W, 3) uint8 at ``image_size``; meta: (N, meta_dim) float32 from
        :meth:`encode_meta`. ``targets``: the class to explain (one name/index for all, or
        one index per image; None: each image's predicted class). Features are needed by
        the trust part's out-of-distribution score and are tapped from the same passes.
        ``decide``: with ``explain`` and no ``targets``, maps calibrated probabilities (B, C)
        to the class index to explain (e.g. an operating point); default the argmax."""
        n = len(images)
        if isinstance(targets, (str, int, np.integer)):
            targets = [self.class_index(targets)] * n
        elif targets is not None:
            targets = [self.class_index(int(t)) for t in targets]
            if len(targets) != n:
                raise ValueError(f"targets: {len(targets)} class indices for {n} images")
        explain = explain or targets is not None
        if explain and not self.can_explain:
            raise InputError(f"model {self.info.get('model', {}).get('name', '?')!r} has no image branch to explain")
        out_p, out_f, out_m, out_t = [], [], [], []
        with Progress(console=Console(stderr=True), transient=True, disable=not (progress and n > batch_size)) as bar:
            task = bar.add_task("predicting", total=n)
            for s in range(0, n, batch_size):
                x = np.ascontiguousarray(images[s:s + batch_size])
                m = torch.as_tensor(np.asarray(meta[s:s + batch_size], np.float32), device=self.device)
                t = None if targets is None else targets[s:s + batch_size]
                p, f, mp, tt = self._batch(x, m, explain, t, features, calibrated, decide)
                out_p.append(p)
                out_f.append(f)
                out_m.append(mp)
                out_t.append(tt)
                bar.advance(task, len(x))
        if not out_p:
            return Output(np.zeros((0, len(self.classes)), np.float32))
        cat = (lambda xs: np.concatenate(xs) if xs and xs[0] is not None else None)
        return Output(np.concatenate(out_p).astype(np.float32), cat(out_f), cat(out_m), cat(out_t))

    def _batch(self, x: np.ndarray, m: torch.Tensor, explain: bool, targets: list[int] | None,
               want_features: bool, calibrated: bool, decide=None):
        sink: list[list[torch.Tensor]] = []
        maps = explained = None
        if self.input_mode != "image":
            from ..explain.heatmap_input import CAM_METHODS, quantize_maps, render_input

            raw_x = to_input(x).to(self.device)
            with _tapped(self.cam_model if want_features else None, sink, self.feature_layer), \
                    CAM_METHODS[self.cam_method](self.cam_model) as cam:
                own = cam.forward(raw_x, None).argmax(1)  # the CAM backbone's class, as in training
                maps = quantize_maps(cam.maps(own).numpy())  # (B, S, S), what the classifier sees
            xs = to_input(render_input(self.input_mode, x, maps)).to(self.device)
            raw = self._mean_softmax(self._views(xs), m)
            if explain:
                own = own.cpu().numpy()
                explained = np.asarray(targets) if targets is not None else (
                    own if decide is None else decide(self.calibration.apply(raw) if calibrated else raw))
                if (explained != own).any():  # another class than the one whose map it saw
                    maps = compute_maps_for(self.cam_model, x, self.cam_method, explained)
        elif explain:
            from ..explain.gradcam import GradCAM

            xs = to_input(x).to(self.device)
            members = list(self.model.members) if isinstance(self.model, Ensemble) else [self.model]
            cams = [GradCAM(net) for net in members]
            try:
                with _tapped(self.model if want_features else None, sink, self.feature_layer):
                    first = torch.stack([c.forward(xs, m).float().softmax(1) for c in cams]).mean(0)  # (B, C)
                raw = self._mean_softmax(self._views(xs)[1:], m, first)
                proba = self.calibration.apply(raw) if calibrated else raw
                explained = np.asarray(targets) if targets is not None else (
                    proba.argmax(1) if decide is None else decide(proba))
                maps = np.mean([c.maps(explained.tolist()).numpy() for c in cams], axis=0).astype(np.float32)
            finally:
                for c in cams:
                    c.release()
        else:
            xs = to_input(x).to(self.device)
            views = self._views(xs)
            with _tapped(self.model if want_features else None, sink, self.feature_layer):
                raw = self._mean_softmax(views[:1], m)
            raw = self._mean_softmax(views[1:], m, torch.as_tensor(raw)) if len(views) > 1 else raw
        proba = self.calibration.apply(raw) if calibrated else raw
        feats = None
        if want_features:
            if not sink:
                raise InputError("this model has no image features: no out-of-distribution score")
            feats = torch.cat(sink[0], dim=1).numpy().astype(np.float32)  # the identity view's pass
        return proba.astype(np.float32), feats, maps, None if explained is None else np.asarray(explained, np.int64)

    def _views(self, xs: torch.Tensor) -> list[torch.Tensor]:
        """The test-time views the bundle averages (just ``xs`` without tta)."""
        return tta_views(xs, self.tta_views) if self.tta else [xs]

    def _mean_softmax(self, views: list[torch.Tensor], m: torch.Tensor,
                      first: torch.Tensor | None = None) -> np.ndarray:
        """Mean softmax over ``views`` (and an already computed first view) -> (B, C) numpy."""
        with torch.inference_mode():
            probs = ([first.to(self.device)] if first is not None else []) + [
                torch.softmax(self.model(v, m).float(), dim=1) for v in views]
            return torch.stack(probs).mean(0).cpu().numpy()

    # -- convenience ---------------------------------------------------------------------

    def predict(self, images: np.ndarray, meta: np.ndarray, **kw: Any) -> np.ndarray:
        """(N, C) probabilities: ``run(...).proba``."""
        return self.run(images, meta, **kw).proba

    def assess(self, out: Output, operating_point: str = "argmax") -> list[Assessment]:
        """Status, class and OOD score per image from the bundle's trust part (without one:
        every answer 'ok' with the argmax, as before trust existed)."""
        trust = self.trust or Trust()
        return trust.assess(out.proba, out.features, self.classes, operating_point)

    @property
    def feature_layer(self) -> str | None:
        """Where the trust part reads its out-of-distribution features (None: pooled)."""
        ood = self.trust.ood if self.trust is not None else None
        return getattr(ood, "layer", None)

    @property
    def needs_features(self) -> bool:
        return self.trust is not None and self.trust.ood is not None


def compute_maps_for(cam_model: nn.Module, images: np.ndarray, method: str, targets: np.ndarray) -> np.ndarray:
    """The CAM backbone's maps for chosen classes (not its own prediction), quantised like
    `dermfuse.explain.heatmap_input.compute_maps`. images: (N, S, S, 3) uint8 -> (N, S, S) float32."""
    from ..explain.heatmap_input import CAM_METHODS, quantize_maps

    x = to_input(images).to(next(cam_model.parameters()).device)
    with CAM_METHODS[method](cam_model) as cam:
        maps = cam(x, None, targets=[int(t) for t in targets])
    return quantize_maps(np.asarray(maps, np.float32))
