"""train.tta_views: a bundle may average only the first N test-time views (fewer forward
passes per image, e.g. for an ensemble within a latency budget)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _bundles import make_bundle
from dermfuse.config import RunConfig, apply_overrides
from dermfuse.errors import BundleError, ConfigError
from dermfuse.inference.bundle import load_bundle
from dermfuse.inference.predictor import Predictor
from dermfuse.preprocess import to_input, tta_views
from dermfuse.runs.config_checks import check_config


def test_the_first_n_views_in_their_fixed_order():
    x = torch.rand(2, 3, 8, 8)
    two = tta_views(x, 2)
    assert len(two) == 2 and torch.equal(two[0], x) and torch.equal(two[1], x.flip(-1))
    assert len(tta_views(x)) == len(tta_views(x, 0)) == 5
    assert [torch.equal(a, b) for a, b in zip(tta_views(x, 4), tta_views(x))] == [True] * 4
    with pytest.raises(ValueError, match="which has 4"):
        tta_views(torch.rand(1, 3, 6, 8), 5)


@pytest.mark.parametrize("sets, needle", [
    ({"train.tta": True, "train.tta_views": 6}, "expected 0 .every view. or 1-5"),
    ({"train.tta": True, "train.tta_views": -1}, "expected 0 .every view. or 1-5"),
    ({"train.tta": True, "train.tta_views": 5, "data.image_size": [24, 32]}, "has four views"),
])
def test_bad_view_counts_are_refused_before_any_image_is_read(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        check_config(apply_overrides(RunConfig(), sets))


def test_a_two_view_bundle_averages_identity_and_h_flip_only(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    path = make_bundle(tmp_path / "b", image_size=32, tta=True, tta_views=2, members=2)
    assert json.loads((path / "bundle.json").read_text())["preprocessing"]["tta_views"] == 2
    every = make_bundle(tmp_path / "all", image_size=32, tta=True, members=2)
    assert "tta_views" not in json.loads((every / "bundle.json").read_text())["preprocessing"]
    bundle = load_bundle(path)
    meta = np.zeros((3, bundle.model_meta_dim), np.float32)
    got = Predictor.from_bundle(bundle).run(images, meta, calibrated=False).proba
    x = to_input(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    with torch.inference_mode():
        hand = np.mean([bundle.model(v, torch.as_tensor(meta)).softmax(1).numpy() for v in (x, x.flip(-1))], axis=0)
        five = np.mean([bundle.model(v, torch.as_tensor(meta)).softmax(1).numpy() for v in tta_views(x)], axis=0)
    np.testing.assert_allclose(got, hand, atol=1e-6)
    assert not np.allclose(got, five, atol=1e-4)
    explained = Predictor.from_bundle(bundle).run(images, meta, calibrated=False, explain=True).proba
    np.testing.assert_allclose(explained, hand, atol=1e-5)  # the Grad-CAM path averages the same views

    info = json.loads((path / "bundle.json").read_text())
    info["preprocessing"]["tta_views"] = 9
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="tta_views 9"):
        load_bundle(path)


def test_the_onnx_export_lists_the_bundles_views_only(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dermfuse.export.onnx import export_onnx

    path = make_bundle(tmp_path / "b", image_size=32, tta=True, tta_views=2)
    export_onnx(path, tmp_path / "onnx", progress=False)
    spec = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert [v["name"] for v in spec["views"]["list"]] == ["identity", "hflip"]


def test_views_without_test_time_augmentation_are_refused():
    with pytest.raises(ConfigError, match="needs train.tta: true"):
        check_config(apply_overrides(RunConfig(), {"train.tta_views": 2}))
    with pytest.raises(ConfigError, match="expected 0 .every view."):
        cfg = RunConfig()
        cfg.train.tta, cfg.train.tta_views = True, True
        check_config(cfg)
