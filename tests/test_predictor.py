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
from dermfuse.inference.predictor import Predictor, feature_taps
from dermfuse.inference.predict import explain_arrays, predict_arrays
from dermfuse.preprocess import to_input, tta_views

CASES = {
    "image": dict(),
    "image+tta+prior": dict(tta=True, prior_shift=True, temperature=0.5),
    "heatmap+tta": dict(input_mode="heatmap", tta=True),
    "ensemble+tta": dict(members=2, tta=True),
    "cnn": dict(model="cnn", tta=True),
}


def _reference_proba(bundle, images, meta):
    """The computation before the engine existed (predict.predict_arrays of the old code)."""
    x = images
    if bundle.input_mode != "image":
        x = render_input(bundle.input_mode, images, compute_maps(bundle.cam_model, images, method=bundle.cam_method))
    xs = to_input(np.ascontiguousarray(x))
    m = torch.as_tensor(meta)
    views = tta_views(xs) if bundle.tta else [xs]
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
