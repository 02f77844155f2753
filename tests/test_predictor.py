"""The one inference engine: the same probabilities as the computation it replaced (plain
softmax over the test-time views, then calibration), maps equal to a direct Grad-CAM call,
each computed once per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _bundles import make_bundle
from dermfuse.inference.bundle import load_bundle
from dermfuse.explain.gradcam import GradCAM
from dermfuse.explain.heatmap_input import compute_maps, render_input
from dermfuse.evaluation.calibrate import Calibration
from dermfuse.inference.predictor import Predictor, feature_taps
from dermfuse.inference.predict import explain_arrays, predict_arrays
from dermfuse.preprocess import to_input

CASES = {
    "image": dict(),
    "image+tta+prior": dict(tta=True, prior_shift=True, temperature=0.5),
    "heatmap+tta": dict(input_mode="heatmap", tta=True),
    "ensemble+tta": dict(members=2, tta=True),
    "cnn": dict(model="cnn", tta=True),
}


def _views_by_hand(x: torch.Tensor) -> list[torch.Tensor]:
    """The test-time views of a square batch (B, 3, S, S): identity, h-, v-, hv-flip, transpose."""
    return [x, torch.flip(x, [3]), torch.flip(x, [2]), torch.flip(x, [2, 3]), x.transpose(2, 3)]


def _reference_proba(bundle, images, meta):
    """The computation before the engine existed (predict.predict_arrays of the old code)."""
    x = images
    if bundle.input_mode != "image":
        x = render_input(bundle.input_mode, images, compute_maps(bundle.cam_model, images, method=bundle.cam_method))
    xs = to_input(np.ascontiguousarray(x))
    m = torch.as_tensor(meta)
    views = _views_by_hand(xs) if bundle.tta else [xs]
    with torch.inference_mode():
        p = torch.stack([torch.softmax(bundle.model(v, m).float(), dim=1) for v in views]).mean(0).numpy()
    return bundle.calibration.apply(p)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    bundle = load_bundle(make_bundle(tmp_path_factory.mktemp("b") / "b", image_size=32, **CASES[request.param]))
    g = np.random.default_rng(3)
    images = g.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    meta = np.stack([bundle.encoder.encode_one(a, s, "back") for a, s in [(30, "male"), (None, "female"),
                     (70, None), (50, "male"), (12, "female")]])[:, : bundle.model_meta_dim]
    return request.param, bundle, images, meta.astype(np.float32)


def test_probabilities_equal_the_old_computation(case):
    name, bundle, images, meta = case
    want = _reference_proba(bundle, images, meta)
    assert np.abs(predict_arrays(bundle, images, meta) - want).max() <= 1e-6
    out = Predictor.from_bundle(bundle).run(images, meta, explain=True, features=True, batch_size=2)
    assert np.abs(out.proba - want).max() <= 1e-6, "explaining must not change the probabilities"
    assert out.features.shape[0] == 5 and np.isfinite(out.features).all()


def test_maps_explain_the_predicted_class_by_default(case):
    name, bundle, images, meta = case
    out = Predictor.from_bundle(bundle).run(images, meta, explain=True)
    if bundle.input_mode != "image":  # what the classifier saw: the CAM backbone's own map
        assert np.allclose(out.maps, compute_maps(bundle.cam_model, images, bundle.cam_method), atol=1e-6)
        return
    assert (out.explained == out.proba.argmax(1)).all()
    members = bundle.model.members if hasattr(bundle.model, "members") else [bundle.model]
    x, m = to_input(images), torch.as_tensor(meta)
    direct = []
    for net in members:
        with GradCAM(net) as cam:
            direct.append(cam(x, m, targets=out.explained.tolist()).numpy())
    assert np.allclose(out.maps, np.mean(direct, axis=0), atol=1e-6)


def test_a_chosen_class_is_explained(case):
    name, bundle, images, meta = case
    engine = Predictor.from_bundle(bundle)
    mel = engine.run(images, meta, targets="mel")
    assert (mel.explained == bundle.classes.index("mel")).all()
    assert np.allclose(mel.maps, explain_arrays(bundle, images, meta, targets=[mel.explained[0]] * 5), atol=1e-6)
    assert 0 <= mel.maps.min() and mel.maps.max() <= 1


def test_one_forward_per_view_when_explaining(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", image_size=32, tta=True))
    calls = []
    handle = bundle.model.register_forward_hook(lambda *a: calls.append(1))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    meta = np.stack([bundle.encoder.encode_one(40, "male", "back")] * 2)[:, : bundle.model_meta_dim]
    Predictor.from_bundle(bundle).run(images, meta, explain=True, features=True)
    handle.remove()
    assert len(calls) == 5  # identity (with Grad-CAM) + 4 other views; no extra pass to explain


def test_heatmap_input_computes_its_maps_once(tmp_path, monkeypatch):
    bundle = load_bundle(make_bundle(tmp_path / "b", image_size=32, input_mode="heatmap"))
    calls = []
    handle = bundle.cam_model.register_forward_hook(lambda *a: calls.append(1))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    meta = np.stack([bundle.encoder.encode_one(40, "male", "back")] * 2)[:, : bundle.model_meta_dim]
    Predictor.from_bundle(bundle).run(images, meta, explain=True, features=True)
    handle.remove()
    assert len(calls) == 1


def test_feature_taps_exist_for_every_image_model(tmp_path):
    for kw in ({}, {"model": "cnn"}, {"members": 2}):
        bundle = load_bundle(make_bundle(tmp_path / str(len(list(tmp_path.iterdir()))), image_size=32, **kw))
        assert feature_taps(bundle.model)


class OrientedNet(torch.nn.Module):
    """A 3x3 conv (the Grad-CAM layer) and a linear layer over every position of its output:
    flipping or transposing the image changes the logits, so the test-time average differs
    from the single view (a flip-invariant net would make it equal, and the test vacuous)."""

    def __init__(self, size: int, classes: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.head = torch.nn.Linear(2 * size * size, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.cam_layer = self.conv

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).flatten(1))  # (B, C)


@pytest.mark.parametrize("explain", [False, True])
def test_tta_is_the_mean_softmax_over_hand_made_views_then_calibration(explain):
    size, classes = 8, ["a", "b", "c", "d"]
    model = OrientedNet(size, len(classes)).eval()
    log_prior = np.log([0.1, 0.2, 0.3, 0.4])
    calibration = Calibration(temperature=0.5, prior_shift=0.7, log_prior=log_prior.tolist())
    images = np.random.default_rng(1).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    meta = np.zeros((6, 0), np.float32)
    engine = Predictor(model, classes, None, size, meta_dim=0, calibration=calibration, tta=True)

    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255  # (B, 3, S, S)
    with torch.no_grad():
        per_view = np.stack([model.double()(v, None).softmax(1).numpy() for v in _views_by_hand(x)])
    model.float()
    raw = per_view.mean(0)  # (B, C)
    assert np.abs(per_view - per_view[0]).max() > 0.05  # the views disagree: averaging them shows
    z = (np.log(raw) + 0.7 * log_prior) / 0.5  # softmax((log p + shift * log prior) / T), by hand
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert np.abs(want - raw).max() > 0.05  # and calibration moves them

    got = engine.run(images, meta, explain=explain, batch_size=4)
    np.testing.assert_allclose(got.proba, want, atol=1e-5)
    np.testing.assert_allclose(engine.run(images, meta, explain=explain, calibrated=False).proba, raw, atol=1e-5)
