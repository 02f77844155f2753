"""Fast batched Grad-CAM and variants for dermfuse models.

Usage::

    with GradCAM(model) as cam:            # target layer: model.cam_layer
        maps = cam(image, meta)            # (B, H, W) float32 in [0, 1], on CPU
        probs = cam.outputs.softmax(-1)    # the logits of that same forward pass

Numerics follow pytorch-grad-cam (same weights, ReLU, per-image min-max, bilinear
upsampling to the input size, min-max again), to 6e-6 (tests/test_cam.py). Speed comes from where the
gradient is taken: a forward hook turns the target layer's output into a leaf tensor and
all parameters are made not to require grad for the call, so autograd records nothing
before the target layer, and the backward pass runs through the head only, straight to
the activations (no parameter gradients, no input gradient). A heatmap costs about one
forward pass.

Each method overrides one function, :meth:`BaseCAM.cam_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermfuse.explain.render import colorize, overlay, plot_triptych

__all__ = [
    "BaseCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "HiResCAM",
    "colorize",
    "overlay",
    "plot_triptych",
]

_EPS_SCALE = 1e-7  # pytorch-grad-cam's scale_cam_image: x / (1e-7 + max)


class BaseCAM:
    """Shared machinery: hook, forward, class-score gradient, map assembly.

    Args:
        model: a dermfuse model, ``forward(image (B,3,H,W), meta (B,D) or None) -> (B,C)``.
        target_layer: module whose 4-D output ``(B, K, h, w)`` is explained; default
            ``model.cam_layer``.

    The hook is registered for the duration of each call and removed in a ``finally``
    block, so the model is never left hooked; the model's train/eval modes and its
    parameters' ``requires_grad`` flags are restored after every call as well.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None) -> None:
        if target_layer is None:
            target_layer = getattr(model, "cam_layer", None)
        if not isinstance(target_layer, nn.Module):
            raise ValueError(
                f"no Grad-CAM target layer: got {target_layer!r}; pass target_layer= or use a "
                "model with an image branch (its cam_layer attribute is None for meta-only models)"
            )
        self.model = model
        self.target_layer = target_layer
        self.outputs: torch.Tensor | None = None  # logits (B, C) of the last call, detached
        self._activation: torch.Tensor | None = None
        self._hook_calls = 0
        self._clone = False  # set when the layer's output is modified in place downstream
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._logits: torch.Tensor | None = None  # graph kept between forward() and maps()
        self._saved: tuple | None = None  # modes and requires_grad flags to restore
        self._size: tuple[int, int] | None = None

    # -- the one function a method overrides -------------------------------------------
    def cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Weights for the activations, ``(B, K, 1, 1)`` or ``(B, K, h, w)``.

        The map is ``relu(sum_k weights_k * activations_k)``.
        """
        raise NotImplementedError

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the hook if one is still registered and drop stored tensors."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._restore()

    # -- hook ----------------------------------------------------------------------------
    def _hook(self, module: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ValueError(
                f"Grad-CAM target layer {type(module).__name__} must output a (B, K, h, w) "
                f"tensor, got {shape}"
            )
        self._hook_calls += 1
        act = output.detach().requires_grad_(True)  # leaf: the graph starts here
        self._activation = act
        return act.clone() if self._clone else act

    # -- main call -----------------------------------------------------------------------
    def __call__(
        self,
        image: torch.Tensor,
        meta: torch.Tensor | None = None,
        targets: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Heatmaps for a batch.

        Args:
            image: ``(B, 3, H, W)`` float in [0, 1] (the model's input).
            meta: ``(B, D)`` float metadata passed to the model unchanged, or None.
            targets: class index per image (int, sequence, array or tensor of length B);
                None explains each image's predicted class.

        Returns:
            ``(B, H, W)`` float32 CPU tensor in [0, 1]; an all-zero map where the class
            score has no positive evidence at the target layer.
        """
        self.forward(image, meta)
        return self.maps(targets)

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """First half of a call: one forward pass that keeps the graph from the target layer
        to the logits. Returns the detached logits ``(B, C)`` (also ``self.outputs``), so a
        caller can choose the class to explain from them before calling :meth:`maps`."""
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError(f"image must be a (B, 3, H, W) float tensor in [0, 1], got {got}")
        self._restore()  # a forward without maps() leaves nothing behind
        device = next(self.model.parameters(), image).device
        image = image.detach().to(device)
        if isinstance(meta, torch.Tensor):
            meta = meta.detach().to(device)
        params = list(self.model.parameters())
        self._saved = ([m.training for m in self.model.modules()], params, [p.requires_grad for p in params])
        self.model.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                self._logits = self._activations(image, meta)
        except BaseException:
            self._restore()
            raise
        self._size = image.shape[-2:]
        return self.outputs

    def maps(self, targets: int | Sequence[int] | np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """Second half: heatmaps ``(B, H, W)`` float32 CPU in [0, 1] for ``targets`` (None: the
        predicted class) from the forward pass of :meth:`forward`."""
        if self._logits is None:
            raise RuntimeError("maps() needs a forward() first")
        try:
            logits, act = self._logits, self._activation
            with torch.inference_mode(False), torch.enable_grad():
                idx = _target_indices(targets, logits)
                score = logits.gather(1, idx[:, None]).sum()  # images are independent in eval mode
                (grads,) = torch.autograd.grad(score, act)
            activations = act.detach()
            with torch.no_grad():
                cam = (self.cam_weights(activations, grads) * activations).sum(dim=1)  # (B, h, w)
                cam = _scale(cam.clamp_min(0))
                cam = F.interpolate(cam[:, None], size=self._size, mode="bilinear", align_corners=False)[:, 0]
                cam = _scale(cam)  # (B, H, W)
        finally:
            self._restore()
        return cam.float().cpu()

    def _restore(self) -> None:
        """Drop the graph and give the model back its modes and requires_grad flags."""
        self._activation = None
        self._logits = None
        if self._saved is not None:
            modes, params, flags = self._saved
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            for m, mode in zip(self.model.modules(), modes):
                m.training = mode
            self._saved = None

    def _forward(self, image: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        self._hook_calls = 0
        self._handle = self.target_layer.register_forward_hook(self._hook)
        try:
            return self.model(image, meta)
        finally:
            self._handle.remove()
            self._handle = None

    def _activations(self, image: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        """Forward with the hook; returns logits (with graph back to ``self._activation``)."""
        try:
            logits = self._forward(image, meta)
        except RuntimeError as err:  # an in-place op after the layer touched the leaf
            if self._clone or "in-place" not in str(err):
                raise
            self._clone = True
            logits = self._forward(image, meta)
        if self._activation is None or self._hook_calls != 1:
            raise ValueError(
                f"Grad-CAM target layer {type(self.target_layer).__name__} ran "
                f"{self._hook_calls} times in one forward pass; expected exactly once"
            )
        if logits.ndim != 2:
            raise ValueError(f"model must return logits (B, C), got {tuple(logits.shape)}")
        self.outputs = logits.detach()
        return logits


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of dScore/dA."""

    def cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), as pytorch-grad-cam computes it."""

    def cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        return (grads.clamp_min(0) * aij).sum(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): per-position weights relu(dScore/dA)."""

    def cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.clamp_min(0)  # (B, K, h, w)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): per-position weights dScore/dA."""

    def cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads  # (B, K, h, w)


def _scale(cam: torch.Tensor) -> torch.Tensor:
    """Per-image min-max of ``(B, h, w)`` to [0, 1]; a constant map becomes zeros."""
    flat = cam.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    cam = cam - low
    high = cam.flatten(1).max(dim=1).values[:, None, None]
    return cam / (high + _EPS_SCALE)


def _target_indices(
    targets: int | Sequence[int] | np.ndarray | torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor:
    """Class index per image as a ``(B,)`` long tensor on the logits' device."""
    batch, classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    idx = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
    if idx.ndim == 0:
        idx = idx.expand(batch)
    if idx.ndim != 1 or idx.shape[0] != batch:
        raise ValueError(
            f"targets must give one class index per image ({batch}), got shape {tuple(idx.shape)}"
        )
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {idx.dtype}")
    if bool(((idx < 0) | (idx >= classes)).any()):
        raise ValueError(f"targets must be class indices in 0..{classes - 1}, got {idx.tolist()}")
    return idx.to(device=logits.device, dtype=torch.long)
