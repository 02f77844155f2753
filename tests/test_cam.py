"""dermfuse.explain.gradcam: parity with pytorch-grad-cam, hygiene (hooks, grads, modes), rendering."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM as RefGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as RefGradCAMPlusPlus
from pytorch_grad_cam import HiResCAM as RefHiResCAM
from pytorch_grad_cam import LayerCAM as RefLayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dermfuse.explain.gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, colorize, overlay, plot_triptych
from dermfuse.explain.render import jet_lut
from dermfuse.models import create_model

TOL = 6e-6  # the acceptance bound for Grad-CAM (max absolute difference per map)
# Grad-CAM++ weights carry squared and cubed gradients, whose float32 rounding varies with the
# CPU's kernels: CI measured 6.3e-6 on an EfficientNet map. The variants are held to 1e-5,
# the original parity bound.
VARIANT_TOL = 1e-5
NUM_CLASSES = 7
META_DIM = 8
TARGETS = [0, 3, 6, 2, 5]  # mixed classes, one per image


class FixedMeta(nn.Module):
    """pytorch-grad-cam calls model(x): hold meta fixed for the batch."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.meta)


_MODELS: dict[tuple[str, int], nn.Module] = {}


def get_model(name: str, size: int) -> nn.Module:
    """Registry model, random init from a fixed seed, built once per (name, size)."""
    if (name, size) not in _MODELS:
        torch.manual_seed(0)
        meta_dim = META_DIM if name == "ft_multicnn" else 0
        model = create_model(name, NUM_CLASSES, meta_dim=meta_dim, pretrained=False, input_size=size)
        _MODELS[name, size] = model.eval()
    return _MODELS[name, size]


def batch(size: int, n: int = len(TARGETS), seed: int = 1) -> torch.Tensor:
    """Lesion-like images (B, 3, S, S) in [0, 1]: a dark disc on skin tone, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * size * 0.6 + size * 0.2
    radius = torch.rand(n, generator=g) * size * 0.2 + size * 0.1
    dist = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2).sqrt()
    disc = (dist < radius[:, None, None]).float()[:, None]  # (B, 1, S, S)
    skin = torch.tensor([0.85, 0.65, 0.55])[None, :, None, None]
    lesion = torch.tensor([0.35, 0.20, 0.15])[None, :, None, None]
    noise = torch.rand(n, 3, size, size, generator=g) * 0.1
    return (skin * (1 - disc) + lesion * disc + noise).clamp(0, 1)


def reference(
    ref_cls: type, model: nn.Module, image: torch.Tensor, targets: list[int], meta: torch.Tensor | None = None
) -> np.ndarray:
    """pytorch-grad-cam's maps (B, H, W) for the same model, meta held fixed."""
    with ref_cls(model=FixedMeta(model, meta), target_layers=[model.cam_layer]) as ref:
        out = ref(image, [ClassifierOutputTarget(t) for t in targets])
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam leaves parameter grads behind
    return out


def assert_parity(ours: torch.Tensor, ref: np.ndarray, tol: float = TOL) -> None:
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert tuple(ours.shape) == ref.shape
    # Not vacuous: maps carry signal (a random-init model gives an all-zero map where no
    # position has positive evidence for the class; random EfficientNets often do).
    assert (ref.max(axis=(1, 2)) > 0.5).sum() >= 2, ref.max(axis=(1, 2))
    diff = float(np.abs(ours.numpy() - ref).max())
    assert diff <= tol, diff


@pytest.mark.parametrize("size", [64, 96, 128])
@pytest.mark.parametrize("name", ["cnn", "resnet50", "efficientnet_lite0"])
def test_gradcam_matches_pytorch_grad_cam(name: str, size: int) -> None:
    model = get_model(name, size)
    image = batch(size)
    with GradCAM(model) as cam:
        ours = cam(image, None, TARGETS)
    assert_parity(ours, reference(RefGradCAM, model, image, TARGETS))
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0


@pytest.mark.parametrize(
    ("ours_cls", "ref_cls", "name"),
    [
        (GradCAMPlusPlus, RefGradCAMPlusPlus, "efficientnet_lite0"),
        (GradCAMPlusPlus, RefGradCAMPlusPlus, "cnn"),
        (LayerCAM, RefLayerCAM, "cnn"),
        (HiResCAM, RefHiResCAM, "cnn"),
    ],
)
def test_variants_match_pytorch_grad_cam(ours_cls: type, ref_cls: type, name: str) -> None:
    model = get_model(name, 64)
    image = batch(64)
    with ours_cls(model) as cam:
        ours = cam(image, None, TARGETS)
    assert_parity(ours, reference(ref_cls, model, image, TARGETS), VARIANT_TOL)


def test_dual_input_model_matches_with_meta_held_fixed() -> None:
    model = get_model("ft_multicnn", 64)
    image = batch(64)
    meta = torch.randn(len(TARGETS), META_DIM, generator=torch.Generator().manual_seed(2))
    with GradCAM(model) as cam:
        ours = cam(image, meta, TARGETS)
        predicted = cam(image, meta)  # targets=None: each image's predicted class
        logits = cam.outputs
    assert tuple(ours.shape) == (len(TARGETS), 64, 64)
    assert_parity(ours, reference(RefGradCAM, model, image, TARGETS, meta))
    with torch.no_grad():
        expected = model(image, meta)
    torch.testing.assert_close(logits, expected)
    top = expected.argmax(1).tolist()
    assert_parity(predicted, reference(RefGradCAM, model, image, top, meta))


class InPlaceAfterTarget(nn.Module):
    """Toy model whose target layer's output is modified in place downstream."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cam_layer = nn.Conv2d(8, 16, 3, stride=4, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        x = self.act(self.cam_layer(torch.relu(self.conv(image))))  # (B, 16, S/4, S/4)
        return self.fc(x.mean(dim=(2, 3)))


def test_in_place_op_after_target_layer() -> None:
    torch.manual_seed(0)
    model = InPlaceAfterTarget().eval()
    image = batch(32)
    with GradCAM(model) as cam:
        ours = cam(image, None, TARGETS)
    # pytorch-grad-cam's stored activations share storage with the output and get the
    # in-place ReLU applied; compare with the same network computed out of place.
    model.act.inplace = False
    assert_parity(ours, reference(RefGradCAM, model, image, TARGETS))


def test_targets_accept_int_array_and_tensor() -> None:
    model = get_model("cnn", 64)
    image = batch(64)
    with GradCAM(model) as cam:
        as_list = cam(image, targets=TARGETS)
        as_tensor = cam(image, targets=torch.tensor(TARGETS))
        as_array = cam(image, targets=np.array(TARGETS))
        as_int = cam(image, targets=3)
        as_list_3 = cam(image, targets=[3] * len(TARGETS))
        for bad in ([0, 1], [0, 1, 2, 3, 7], [0.5] * 5):
            with pytest.raises(ValueError):
                cam(image, targets=bad)
    torch.testing.assert_close(as_list, as_tensor, rtol=0, atol=0)
    torch.testing.assert_close(as_list, as_array, rtol=0, atol=0)
    torch.testing.assert_close(as_int, as_list_3, rtol=0, atol=0)


def test_no_autograd_graph_before_target_layer() -> None:
    model = get_model("cnn", 64)
    seen: list[bool] = []
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    handle = first_conv.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    try:
        with GradCAM(model) as cam:
            cam(batch(64), targets=TARGETS)
    finally:
        handle.remove()
    assert seen == [False]


def test_hooks_released_after_block_and_after_exception() -> None:
    model = get_model("cnn", 64)
    layer = model.cam_layer
    with GradCAM(model) as cam:
        cam(batch(64), targets=TARGETS)
    assert len(layer._forward_hooks) == 0
    with pytest.raises(ValueError):
        with GradCAM(model) as cam:
            cam(batch(64), targets=[99] * 5)  # fails after the hooked forward
    assert len(layer._forward_hooks) == 0
    with pytest.raises(RuntimeError):
        with GradCAM(model) as cam:
            cam(torch.rand(2, 4, 64, 64))  # fails inside the forward, hook live
    assert len(layer._forward_hooks) == 0


def test_no_parameter_grads_and_state_restored() -> None:
    torch.manual_seed(0)
    model = create_model("ft_multicnn", NUM_CLASSES, meta_dim=META_DIM, pretrained=False, input_size=64)
    model.train()
    model.meta_branch.eval()  # a submodule deliberately in eval mode stays so
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a frozen parameter stays frozen
    flags = [p.requires_grad for p in params]
    modes = [m.training for m in model.modules()]
    meta = torch.randn(len(TARGETS), META_DIM)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with GradCAM(model) as cam:
        maps = cam(batch(64), meta)
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == flags
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():  # eval mode: BatchNorm statistics untouched
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert tuple(maps.shape) == (len(TARGETS), 64, 64)


def test_works_under_callers_inference_mode() -> None:
    model = get_model("cnn", 64)
    with GradCAM(model) as cam:
        expected = cam(batch(64), targets=TARGETS)
    with torch.inference_mode(), GradCAM(model) as cam:
        inside = cam(batch(64), targets=TARGETS)
    torch.testing.assert_close(inside, expected, rtol=0, atol=1e-6)


def test_meta_only_model_has_no_target_layer() -> None:
    model = create_model("meta_mlp", NUM_CLASSES, meta_dim=META_DIM, pretrained=False)
    with pytest.raises(ValueError, match="target layer"):
        GradCAM(model)


def test_jet_lut_equals_opencv() -> None:
    levels = np.arange(256, dtype=np.uint8)[:, None]
    expected = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[:, 0]
    np.testing.assert_array_equal(jet_lut(), expected)


def test_colorize_equals_opencv_jet_bgr2rgb() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 20, 24)).astype(np.float32) * 5 + 2
    maps[2] = 0.25  # constant map -> level 0
    out = colorize(torch.from_numpy(maps))
    assert out.dtype == np.uint8 and out.shape == (3, 20, 24, 3)
    for m, got in zip(maps, out):
        span = m.max() - m.min()
        scaled = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        bgr = cv2.applyColorMap(np.uint8(255 * scaled), cv2.COLORMAP_JET)
        np.testing.assert_array_equal(got, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    assert colorize(maps[0]).shape == (20, 24, 3)


def test_overlay_blends_and_accepts_model_input() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    maps = rng.random((2, 16, 16)).astype(np.float32)
    out = overlay(images, maps, alpha=0.4)
    assert out.dtype == np.uint8 and out.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(overlay(images, maps, alpha=0.0), images)
    np.testing.assert_array_equal(overlay(images, maps, alpha=1.0), colorize(maps))
    as_input = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in [0, 1]
    np.testing.assert_array_equal(overlay(as_input, maps), out)
    with pytest.raises(ValueError):
        overlay(images, maps[:, :8])


def test_plot_triptych_rows_and_columns() -> None:
    model = get_model("cnn", 64)
    image = batch(64, n=3)
    with GradCAM(model) as cam:
        maps = cam(image)
    fig = plot_triptych(image, maps, titles=["mel 0.91", "nv 0.60", "bcc 0.40"])
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes[:3]][1:] == ["Heatmap", "Overlay"]
    assert fig.axes[3].get_title() == "nv 0.60"
    assert fig.axes[5].get_images()[0].get_array().shape == (64, 64, 3)
