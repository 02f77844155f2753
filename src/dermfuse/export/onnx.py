"""``dermfuse export BUNDLE --format onnx``: a bundle as ONNX graphs plus ``export.json``,
everything a runtime without PyTorch needs.

Graphs (one view per call, dynamic batch size, float32):

* ``classifier.onnx``: ``image`` (B, 3, S, S) in [0, 1] (RGB, NCHW; what the bundle's image
  branch sees) and ``meta`` (B, D) (only where the model takes metadata) ->
  ``probabilities`` (B, C), the softmax of this one view, before calibration; and, where
  the model allows it in closed form, ``heatmaps`` (B, C, S, S): Grad-CAM of every class, each
  in [0, 1]. Closed form: when the head is affine after global average pooling (a timm
  backbone, or FT-MultiCNN on one, whose BatchNorm1d in eval is affine too), the class score
  is ``sum_k W_ck mean(A_k) + b_c``, so Grad-CAM's channel weights are ``W_ck / (h w)`` and the
  map needs no backward pass. FT-MultiCNN's MetaBlock gate (``model.fusion=metablock``) acts
  on the pooled features too, so the gradient is still the same at every position: per image,
  ``W_ck`` times the gate's derivative (`_Parts.weight`). A seed ensemble averages its
  members' maps of each class.
* ``cam.onnx`` (heatmap / overlay / masked bundles only): the bundle's CAM backbone,
  ``image`` (B, 3, S, S) in [0, 1] -> ``heatmap`` (B, S, S) of the backbone's predicted class
  (what the classifier's input is rendered from) and ``cam_probabilities`` (B, C).

``export.json`` says how to go from a picture to the bundle's answer: decoding and resizing,
the render step of heatmap inputs (quantisation, jet colour table), the test-time views the
bundle averages, the metadata encoder (feature order, levels, statistics), the calibration
formula and parameters, and the bundle's thresholds (its ``trust`` key is copied verbatim).
`dermfuse.export.runtime.OnnxPredictor` follows that file with onnxruntime and numpy alone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..image_size import size_hw
from ..io import atomic_write_text
from ..inference.bundle import load_bundle
from ..explain.render import jet_lut
from ..errors import BundleError, ConfigError
from ..constants import OVERLAY_ALPHA
from ..models.backbones import TimmBackbone
from ..models.ensemble import Ensemble
from ..models.fusion import FTMultiCNN

__all__ = ["EXPORT_FORMAT", "ClassifierGraph", "CamGraph", "closed_form_parts", "export_onnx", "quantize_int8"]

EXPORT_FORMAT = "dermfuse-onnx/1"
EXPORT_FILE = "export.json"
_EPS_SCALE = 1e-7  # as dermfuse.explain.gradcam (pytorch-grad-cam's scale_cam_image)


def _onnx_modules():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("dermfuse export needs onnx and onnxruntime: pip install 'dermfuse[export]'") from None


# --- the closed-form heatmap --------------------------------------------------------------


class _Parts(nn.Module):
    """A model split at its Grad-CAM layer: ``features(image) -> A (B, K, h, w)``,
    ``head(A, meta) -> logits (B, C)`` and ``weight(A, meta) -> (1 or B, C, K)``, the
    gradient of each class score with respect to the pooled features. With a head affine
    after global average pooling that is one matrix for every image; FT-MultiCNN's MetaBlock
    gate makes it per image, but still the same at every position of A (it acts after the
    pooling), so Grad-CAM keeps its closed form."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if isinstance(model, TimmBackbone):
            self.timm, self.fusion = model, None
        else:
            self.timm, self.fusion = model.image_branch, model

    def features(self, image: torch.Tensor) -> torch.Tensor:
        x = image if self.fusion is None else self.fusion.normalize(image)
        return self.timm.net.forward_features(self.timm.normalize(x))  # (B, K, h, w)

    def _gated(self) -> bool:
        return self.fusion is not None and self.fusion.meta_branch is not None and self.fusion.fusion == "metablock"

    def head(self, feats: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        pooled = self.timm.net.forward_head(feats)  # (B, K) features, or (B, C) logits of a plain backbone
        if self.fusion is None:
            return pooled
        f = self.fusion
        if self._gated():
            pooled = f.meta_branch(pooled, meta)  # (B, K)
        elif f.meta_branch is not None:
            pooled = torch.cat([pooled, f.meta_branch(meta)], dim=1)
        return f.head(f.dropout(f.fused_norm(pooled)))  # (B, C)

    def weight(self, feats: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        if self.fusion is None:
            return self.timm.net.get_classifier().weight[None]  # (1, C, K)
        f, k = self.fusion, self.timm.num_features
        w = f.head.weight[:, :k]
        if isinstance(f.fused_norm, nn.BatchNorm1d):  # eval: y = x * g / sqrt(var + eps) + ...
            bn = f.fused_norm
            w = w * (bn.weight[:k] / torch.sqrt(bn.running_var[:k] + bn.eps))[None, :]
        if not self._gated():
            return w[None]  # (1, C, K)
        # d sigmoid(tanh(a x) + b) / dx = s (1 - s) (1 - t^2) a, with a = scale(meta), b = shift(meta)
        gate = f.meta_branch
        a, b = gate.scale(meta), gate.shift(meta)  # (B, K)
        t = torch.tanh(a * self.timm.net.forward_head(feats))
        s = torch.sigmoid(t + b)
        return w[None] * (s * (1 - s) * (1 - t * t) * a)[:, None, :]  # (B, C, K)


def closed_form_parts(model: nn.Module) -> list[_Parts] | None:
    """The `_Parts` of a model (one per ensemble member) whose Grad-CAM has a closed form, or
    None: a timm backbone with a linear classifier after average pooling, or FT-MultiCNN on one."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    parts = []
    for m in members:
        timm_part = m if isinstance(m, TimmBackbone) else getattr(m, "image_branch", None)
        if not isinstance(timm_part, TimmBackbone) or not isinstance(m, (TimmBackbone, FTMultiCNN)):
            return None
        net = timm_part.net
        pool = getattr(net, "global_pool", None)
        if getattr(pool, "pool_type", None) != "avg" or not hasattr(net, "forward_head"):
            return None
        if isinstance(m, TimmBackbone) and not isinstance(net.get_classifier(), nn.Linear):
            return None
        if isinstance(m, FTMultiCNN) and not isinstance(m.head, nn.Linear):
            return None
        parts.append(_Parts(m))
    return parts


def _scale(cam: torch.Tensor) -> torch.Tensor:
    """Min-max of every map over its last two axes, as dermfuse.explain.gradcam._scale."""
    low = cam.amin(dim=(-2, -1), keepdim=True)
    cam = cam - low
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + _EPS_SCALE)


def _maps(feats: torch.Tensor, weights: torch.Tensor, size: tuple[int, int], method: str = "gradcam") -> torch.Tensor:
    """Grad-CAM maps from features (B, K, h, w) and class weights (B or 1, M, K) of the pooled
    features: (B, M, H, W) in [0, 1], as dermfuse.explain.gradcam computes them with the gradient
    dScore/dA = W / (h w) at every position."""
    b, k, h, w = feats.shape
    g = weights / (h * w)  # (., M, K) the gradient, the same at every position
    if method in ("gradcam", "hirescam"):  # HiResCAM's per-position weights are all g here
        alpha = g
    elif method == "layercam":
        alpha = g.clamp_min(0)
    elif method == "gradcam++":
        g2, g3 = g * g, g * g * g
        sum_a = feats.sum(dim=(2, 3))[:, None, :]  # (B, 1, K)
        aij = torch.where(g != 0, g2 / (2 * g2 + sum_a * g3 + 1e-6), torch.zeros_like(g2))
        alpha = g.clamp_min(0) * aij * (h * w)  # the sum over positions of a constant
    else:
        raise ConfigError(f"CAM method {method!r} has no closed form here")
    cam = torch.matmul(alpha, feats.flatten(2)).view(b, -1, h, w)  # (., M, K) @ (B, K, hw) -> (B, M, h, w)
    cam = _scale(cam.clamp_min(0))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return _scale(cam)


class ClassifierGraph(nn.Module):
    """What classifier.onnx computes: (image, meta) -> probabilities (B, C) [, heatmaps (B, C, S, S)]."""

    def __init__(self, model: nn.Module, uses_meta: bool, heatmaps: bool) -> None:
        super().__init__()
        self.model, self.uses_meta = model.eval(), uses_meta
        self.parts = nn.ModuleList(closed_form_parts(model) or []) if heatmaps else nn.ModuleList()

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None):
        meta = meta if self.uses_meta else None
        if not len(self.parts):
            return self.model(image, meta).float().softmax(dim=1)
        probs, maps = [], []
        for p in self.parts:  # one per ensemble member
            feats = p.features(image)
            probs.append(p.head(feats, meta).float().softmax(dim=1))
            maps.append(_maps(feats, p.weight(feats, meta), tuple(image.shape[-2:])))
        # an ensemble: mean of the members' probabilities, and of their maps of each class
        return torch.stack(probs).mean(0), torch.stack(maps).mean(0)


class CamGraph(nn.Module):
    """What cam.onnx computes: image -> heatmap (B, S, S) of the predicted class, cam_probabilities (B, C)."""

    def __init__(self, cam_model: nn.Module, method: str) -> None:
        super().__init__()
        parts = closed_form_parts(cam_model)
        if parts is None or len(parts) != 1:
            raise BundleError(f"the CAM backbone {type(cam_model).__name__} has no closed-form Grad-CAM to export")
        self.part, self.method = parts[0], method

    def forward(self, image: torch.Tensor):
        feats = self.part.features(image)
        probs = self.part.head(feats, None).float().softmax(dim=1)  # (B, C)
        w = self.part.weight(feats, None)[0][probs.argmax(dim=1)][:, None, :]  # (B, 1, K) the predicted class's weights
        return _maps(feats, w, tuple(image.shape[-2:]), self.method)[:, 0], probs


# --- export -------------------------------------------------------------------------------


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {name: {0: batch} for name in inputs}
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():  # the exporter talks on stdout
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=opset,
                          dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime dynamic quantisation: 8-bit weights, activations quantised per call.
    Weights are unsigned (QUInt8): onnxruntime's CPU ConvInteger takes uint8 x uint8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QUInt8)
    finally:
        pre.unlink(missing_ok=True)
    return dst


def _views(bundle) -> list[dict[str, str]]:
    """The test-time views `dermfuse.preprocess.tta_views` takes: the transpose for a square
    input only (a (height, width) bundle has the four flips)."""
    views = [{"name": "identity", "numpy": "x"}]
    if bundle.tta:
        views += [{"name": "hflip", "numpy": "x[..., ::-1]"}, {"name": "vflip", "numpy": "x[..., ::-1, :]"},
                  {"name": "hvflip", "numpy": "x[..., ::-1, ::-1]"}]
        h, w = size_hw(bundle.image_size)
        if h == w:
            views.append({"name": "transpose", "numpy": "x.transpose(0, 1, 3, 2)", "only": "square inputs"})
        if bundle.tta_views:  # the bundle averages the first N
            views = views[:bundle.tta_views]
    return views


def _spec(bundle, files: dict[str, Any], uses_meta: bool, heatmaps: bool, int8: bool) -> dict[str, Any]:
    info, (h, w) = bundle.info, size_hw(bundle.image_size)
    cal = bundle.calibration
    graphs: dict[str, Any] = {"classifier": _classifier_graph(bundle, files, uses_meta, heatmaps)}
    if bundle.input_mode != "image":
        graphs["cam"] = _cam_graph(bundle, files)
    spec = {
        "format": EXPORT_FORMAT,
        "model_id": bundle.model_id,
        "source_bundle": {"model": info["model"], "weights_sha256": info["weights_sha256"],
                          "created": info.get("created"), "versions": info.get("versions")},
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "exporter": {"torch": torch.__version__, "onnx_opset": files["opset"]},
        "classes": list(bundle.classes),
        "graphs": graphs,
        "preprocessing": {
            "decode": ("any image file -> 8-bit RGB: EXIF orientation applied (PIL ImageOps.exif_transpose), "
                       "transparency composited onto black (each channel x alpha / 255), 16-bit grey scaled "
                       "to 8 bits (dermfuse.data.cache.load_image)"),
            "resize": {"size": [h, w], "order": "height, width", "method": bundle.resize_method,
                       "aspect": "squashed to this size, not kept" if h == w else
                                 "squashed to this size (height x width): kept for a picture of that aspect ratio",
                       "library": "PIL Image.resize (antialiased when shrinking), uint8 result"},
            "scale": "float32(uint8) / 255, no mean/std: the graph normalises inside",
            "layout": "NCHW, RGB",
        },
        "render": _render(bundle),
        "views": {"average": "mean of the per-view probabilities (softmax), then calibration",
                  "list": _views(bundle),
                  "heatmap": "image-input bundles explain the identity view; dermfuse reports the map of the "
                             "class it reports"},
        "metadata": _metadata(bundle) if uses_meta else None,
        "calibration": {
            "formula": "p = softmax((log(clip(p_mean, 1e-12, 1)) + prior_shift * log_prior) / temperature); "
                       "the identity when temperature = 1 and prior_shift = 0",
            "temperature": cal.temperature, "prior_shift": cal.prior_shift, "log_prior": cal.log_prior,
            "fitted_on": {k: v for k, v in (cal.fitted_on or {}).items() if k != "tau_scan"},
        },
        "answer": "top class = argmax of the calibrated probabilities",
        "int8": int8,
        "metrics": info.get("metrics", {}),
        "model_card": info.get("model_card", {}),
    }
    for key in ("trust", "thresholds", "operating_points"):  # the bundle's thresholds, verbatim
        if key in info:
            spec[key] = info[key]
    return spec


def _classifier_graph(bundle, files: dict[str, Any], uses_meta: bool, heatmaps: bool) -> dict[str, Any]:
    """export.json's entry for classifier.onnx: its file, int8 copy, inputs and outputs."""
    (h, w), c = size_hw(bundle.image_size), len(bundle.classes)
    inputs = [{"name": "image", "shape": ["batch", 3, h, w], "dtype": "float32",
               "meaning": "RGB, NCHW, uint8 / 255 in [0, 1]"
                          + ("" if bundle.input_mode == "image" else f"; the {bundle.input_mode} rendering, see render")}]
    if uses_meta:
        inputs.append({"name": "meta", "shape": ["batch", bundle.model_meta_dim], "dtype": "float32",
                       "meaning": "metadata features, see metadata"})
    outputs = [{"name": "probabilities", "shape": ["batch", c], "meaning": "softmax of this view, before calibration"}]
    if heatmaps:
        outputs.append({"name": "heatmaps", "shape": ["batch", c, h, w],
                        "meaning": "Grad-CAM of each class (closed form), each map in [0, 1]; take the reported class"})
    return {"file": files["classifier"], "int8": files.get("classifier_int8"), "inputs": inputs, "outputs": outputs}


def _cam_graph(bundle, files: dict[str, Any]) -> dict[str, Any]:
    """export.json's entry for cam.onnx (heatmap-input bundles)."""
    (h, w), c = size_hw(bundle.image_size), len(bundle.classes)
    return {"file": files["cam"], "int8": files.get("cam_int8"),
            "inputs": [{"name": "image", "shape": ["batch", 3, h, w], "dtype": "float32",
                        "meaning": "the resized picture, RGB, NCHW, uint8 / 255"}],
            "outputs": [{"name": "heatmap", "shape": ["batch", h, w],
                         "meaning": f"{bundle.cam_method} map of the CAM backbone's predicted class, in [0, 1]"},
                        {"name": "cam_probabilities", "shape": ["batch", c],
                         "meaning": "the CAM backbone's own softmax (not the answer)"}]}


def _render(bundle) -> dict[str, Any]:
    """How the classifier's input is made from the picture: the picture itself, or the steps
    of the heatmap / overlay / masked rendering with the jet colour table."""
    if bundle.input_mode == "image":
        return {"mode": "image", "how": "the resized image itself"}
    return {
        "mode": bundle.input_mode,
        "steps": [
            "m = cam.onnx(image)['heatmap']  # on the un-flipped picture, once per picture",
            "m = rint(m * 255) / 255  # the 256 levels the maps are cached at (round half to even)",
            "scaled = (m - m.min()) / (m.max() - m.min())  (0 where the map is constant), per picture",
            "colour = jet_lut[floor(255 * scaled) as uint8]  # (H, W, 3) uint8 RGB",
            {"heatmap": "input = colour",
             "overlay": f"input = uint8(clip(rint((1 - {OVERLAY_ALPHA}) * picture + {OVERLAY_ALPHA} * colour)))",
             "masked": "input = uint8(rint(picture * m[..., None]))"}[bundle.input_mode],
            "image = input / 255 as NCHW float32, then the views below; classifier.onnx per view",
        ],
        "jet_lut": jet_lut().tolist(),
    }


def _metadata(bundle) -> dict[str, Any]:
    """The metadata encoder as export.json states it: feature order, levels, statistics."""
    enc = bundle.encoder
    return {
        "features": enc.feature_names[: bundle.model_meta_dim],
        "age": {"mean": enc.age_mean, "std": enc.age_std, "median": enc.age_median, "range": [0.0, 120.0],
                "encode": "x[0] = (age - mean) / std, age := median where missing, x[1] = 1 where missing else 0; "
                          "missing: empty, not a number or outside the range"},
        "sex": {"levels": list(enc.sexes), "encode": "one-hot of lower-case stripped text; missing or an "
                                                     "unseen level -> 'unknown'"},
        "site": {"levels": list(enc.sites), "encode": "one-hot, as sex"},
        "order": "age, age_missing, sex=<levels...>, site=<levels...>",
        "encoder_state": enc.to_dict(),
    }


def export_onnx(bundle_path: str | Path, out: str | Path, int8: bool = False, opset: int = 18,
                progress: bool = True) -> dict[str, Any]:
    """Write classifier.onnx (and cam.onnx for heatmap-input bundles), their int8 copies with
    ``int8``, and export.json into ``out``. Returns export.json's content plus ``files``."""
    _onnx_modules()
    bundle = load_bundle(bundle_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size_hw(bundle.image_size)
    uses_meta = bundle.model_meta_dim > 0
    heatmaps = closed_form_parts(bundle.model) is not None
    graph = ClassifierGraph(bundle.model, uses_meta, heatmaps).eval()
    image = torch.rand(2, 3, h, w)
    meta = torch.zeros(2, bundle.model_meta_dim)
    args = (image, meta) if uses_meta else (image,)
    inputs = ["image", "meta"] if uses_meta else ["image"]
    files: dict[str, Any] = {"classifier": "classifier.onnx", "opset": opset}
    _export(graph, args, out / files["classifier"], inputs, ["probabilities", "heatmaps"] if heatmaps
            else ["probabilities"], opset)
    if bundle.input_mode != "image":
        files["cam"] = "cam.onnx"
        _export(CamGraph(bundle.cam_model, bundle.cam_method).eval(), (image,), out / files["cam"], ["image"],
                ["heatmap", "cam_probabilities"], opset)
    if int8:
        for key in [k for k in ("classifier", "cam") if k in files]:
            files[f"{key}_int8"] = files[key].replace(".onnx", ".int8.onnx")
            quantize_int8(out / files[key], out / files[f"{key}_int8"])
    spec = _spec(bundle, files, uses_meta, heatmaps, int8)
    atomic_write_text(out / EXPORT_FILE, json.dumps(spec, indent=2))
    written = [files[k] for k in ("classifier", "classifier_int8", "cam", "cam_int8") if k in files] + [EXPORT_FILE]
    return {**{k: spec[k] for k in ("format", "model_id", "classes", "int8")}, "files": written,
            "sizes_bytes": {f: (out / f).stat().st_size for f in written}}
