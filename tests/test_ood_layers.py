"""The layer-statistics OOD score: the layer is chosen on design images only, the engine taps
the same statistics at inference that `dermfuse release` fitted, and the choice travels in
the bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _bundles import lesion_image, make_bundle
from dermfuse.inference.bundle import load_bundle, update_bundle_info
from dermfuse.inference.ood_images import design_photos, synthetic_ood
from dermfuse.inference.predictor import Predictor, channel_stats, ood_layers
from dermfuse.inference.trust import Trust, fit_ood_layers, save_trust_arrays
from dermfuse.runs.release import layer_features


def test_channel_stats_are_mean_then_std():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 1.5
    s = channel_stats(t).numpy()
    ref = t.numpy().reshape(2, 3, -1)
    np.testing.assert_allclose(s[:, :3], ref.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(s[:, 3:], ref.std(-1, ddof=1), rtol=1e-5)


def test_fit_ood_layers_picks_the_separating_layer():
    g = np.random.default_rng(0)
    train = {"a": g.normal(0, 1, (300, 8)), "b": g.normal(0, 1, (300, 8))}
    val = {"a": g.normal(0, 1, (100, 8)), "b": g.normal(0, 1, (100, 8))}
    design = {"a": g.normal(0, 1, (50, 8)), "b": g.normal(4, 1, (50, 8))}  # only 'b' tells them apart
    ood = fit_ood_layers(train, val, design, keep=0.95)
    assert ood.layer == "b" and ood.selection["chosen"] == "b"
    assert ood.selection["design_auroc_by_layer"]["b"]["auroc"] > 0.99
    assert 0.45 < ood.selection["design_auroc_by_layer"]["a"]["auroc"] < 0.75
    s = ood.score(None, val["b"])
    assert (s > ood.threshold).mean() == pytest.approx(0.05, abs=0.011)
    pooled = fit_ood_layers({"pooled": train["b"]}, {"pooled": val["b"]}, {"pooled": design["b"]})
    assert pooled.layer is None  # 'pooled' means the pooled features, as older bundles had


def test_design_photos_are_offline_pictures():
    imgs = design_photos(32, crops=2)
    assert imgs.dtype == np.uint8 and imgs.shape[1:] == (32, 32, 3)
    assert len(imgs) >= 3 * 2  # scikit-learn's two sample pictures at least, whole + 2 crops
    assert len({im.tobytes() for im in imgs}) == len(imgs)


@pytest.mark.parametrize("tta", [False, True])
def test_engine_taps_the_fitted_layer(tmp_path, tta):
    path = make_bundle(tmp_path / "b", image_size=32, tta=tta)
    bundle = load_bundle(path)
    engine = Predictor.from_bundle(bundle)
    layers = ood_layers(engine.model)
    assert layers, "a FT-MultiCNN has conv stages to tap"
    imgs = np.stack([engine.prepare_image(_png(lesion_image(i))) for i in range(24)])
    meta = np.repeat(engine.encode_meta(age=50, sex="male", site="back"), 24, 0)
    feats = layer_features(engine, imgs, meta, layers, False)
    design = np.concatenate(list(synthetic_ood(32, 4, seed=0).values()))
    dfe = layer_features(engine, design, meta[:1], layers, False)
    chosen = fit_ood_layers({k: v[:16] for k, v in feats.items()}, {k: v[16:] for k, v in feats.items()}, dfe)
    assert chosen.selection["chosen"] in [*layers, "pooled"]
    key = layers[-1]  # random weights: force one layer so the check is the same every run
    trust = Trust(ood=fit_ood_layers({key: feats[key][:16]}, {key: feats[key][16:]}, {key: dfe[key]}))
    assert trust.ood.layer == key
    digest = save_trust_arrays(path, trust)
    update_bundle_info(path, trust=trust.to_dict(digest))
    again = Predictor.from_bundle(load_bundle(path))
    assert again.feature_layer == key
    out = again.run(imgs, meta, features=True)
    np.testing.assert_allclose(out.features, feats[key], rtol=1e-4, atol=1e-5)
    explained = again.run(imgs, meta, features=True, explain=True)  # the Grad-CAM pass taps it too
    np.testing.assert_allclose(explained.features, feats[key], rtol=1e-4, atol=1e-5)


def _png(img):
    from _bundles import png_bytes

    return png_bytes(img)
