"""The trust part: thresholds chosen on validation rows, the OOD score, statuses, and the
trust part travelling in (and checked with) the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _bundles import make_bundle
from dermfuse.inference.bundle import load_bundle, update_bundle_info
from dermfuse.errors import BundleError, InputError
from dermfuse.inference.ood_images import synthetic_ood
from dermfuse.inference.predictor import Predictor
from dermfuse.inference.trust import (Trust, auroc, fit_melanoma, fit_ood, fit_selective, risk_coverage,
                                      save_trust_arrays, selective_report)

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _proba(n, seed=0):
    g = np.random.default_rng(seed)
    z = g.normal(0, 2, (n, 7))
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def test_selective_threshold_answers_the_stated_coverage():
    p = _proba(1000)
    s = fit_selective(p, 0.9)
    assert s.achieved >= 0.9 and s.achieved < 0.9 + 2 / 1000
    assert ((p.max(1) >= s.threshold).mean()) == pytest.approx(s.achieved)


def test_melanoma_threshold_reaches_the_target_sensitivity():
    p = _proba(800, 1)
    y = np.random.default_rng(2).integers(0, 7, 800)
    m = fit_melanoma(p, y, CLASSES, 0.85)
    mel = p[y == 4, 4]
    assert m.sensitivity >= 0.85 and (mel >= m.threshold).mean() == pytest.approx(m.sensitivity)
    assert (mel > m.threshold).mean() < 0.85 + 1 / len(mel) + 1e-9  # the highest threshold that does
    t = Trust(melanoma=m)
    decided = t.decide(p, CLASSES, "melanoma")
    assert ((decided == 4) == (p[:, 4] >= m.threshold)).all()
    with pytest.raises(InputError, match="operating point"):
        t.decide(p, CLASSES, "sensitive")
    with pytest.raises(InputError, match="no melanoma operating point"):
        Trust().decide(p, CLASSES, "melanoma")


def test_mahalanobis_flags_far_features_and_keeps_validation():
    g = np.random.default_rng(0)
    y = g.integers(0, 3, 600)
    centres = g.normal(0, 3, (3, 16))
    train = centres[y] + g.normal(0, 1, (600, 16))
    yv = g.integers(0, 3, 300)
    val = centres[yv] + g.normal(0, 1, (300, 16))
    far = g.normal(0, 1, (100, 16)) + 12.0
    pv, pf = _proba(300), _proba(100, 5)
    ood = fit_ood(train, y, pv, val, keep=0.95, ood_proba=pf, ood_features=far)
    assert ood.method in ("mahalanobis", "gaussian")
    assert ood.selection["auroc_val_vs_synthetic_ood"]["mahalanobis"] > 0.99
    assert (ood.score(pv, val) <= ood.threshold).mean() == pytest.approx(0.95, abs=0.01)
    assert (ood.score(pf, far) > ood.threshold).all()


def test_statuses_and_ood_answers_have_no_class():
    p = np.array([[0.9, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01], [0.3, 0.25, 0.2, 0.1, 0.05, 0.05, 0.05]] * 2)
    feats = np.array([[0.0], [0.0], [100.0], [100.0]])
    from dermfuse.inference.trust import OOD, Selective

    t = Trust(Selective(0.5, 0.9, 0.9, 10), OOD("gaussian", 3.0, 0.95, 10, 10, np.zeros((1, 1), np.float32),
                                                np.ones((1, 1), np.float32)))
    a = t.assess(p, feats, CLASSES)
    assert [x.status for x in a] == ["ok", "uncertain", "out_of_distribution", "out_of_distribution"]
    assert a[0].top_class == "akiec" and a[1].top_class == "akiec" and a[2].top_class is None
    assert not a[2].reliable and a[0].reliable


def test_risk_coverage_curve_ends_at_the_plain_error_rate():
    p = _proba(200)
    y = np.random.default_rng(1).integers(0, 7, 200)
    c = risk_coverage(y, p)
    assert c["coverage"][-1] == 1.0
    assert c["risk"][-1] == pytest.approx(1 - (p.argmax(1) == y).mean())
    assert c["threshold"] == sorted(c["threshold"], reverse=True)
    r = selective_report(y, p, CLASSES, Trust(fit_selective(p, 0.5)))
    assert r["selective"]["coverage"] >= 0.5


def test_auroc_is_one_for_separated_and_half_for_equal_scores():
    assert auroc(np.zeros(5), np.ones(5)) == 1.0
    assert auroc(np.zeros(5), np.zeros(5)) == 0.5


@pytest.fixture(scope="module")
def trusted_bundle(tmp_path_factory):
    """A synthetic bundle with a trust part fitted on random 'lesion' images vs. flat ones."""
    from _bundles import lesion_image

    path = make_bundle(tmp_path_factory.mktemp("t") / "b", image_size=32, temperature=0.2)
    engine = Predictor.from_bundle(load_bundle(path))
    imgs = np.stack([engine.prepare_image(_png(lesion_image(i))) for i in range(40)])
    meta = np.repeat(engine.encode_meta(age=50, sex="male", site="back"), 40, 0)
    out = engine.run(imgs, meta, features=True)
    y = out.proba.argmax(1)
    ood_imgs = np.concatenate(list(synthetic_ood(32, 5, seed=0).values()))
    oo = engine.run(ood_imgs, np.repeat(meta[:1], len(ood_imgs), 0), features=True)
    trust = Trust(fit_selective(out.proba[20:], 0.9),
                  fit_ood(out.features[:20], y[:20], out.proba[20:], out.features[20:], 0.95, oo.proba, oo.features,
                          method="mahalanobis"),
                  None, {"note": "test"})
    digest = save_trust_arrays(path, trust)
    update_bundle_info(path, trust=trust.to_dict(digest))
    return path


def _png(img):
    from _bundles import png_bytes

    return png_bytes(img)


def test_trust_travels_in_the_bundle_and_is_checksummed(trusted_bundle, tmp_path):
    b = load_bundle(trusted_bundle)
    assert b.trust is not None and b.trust.ood.means.shape[0] >= 1
    info = json.loads((trusted_bundle / "bundle.json").read_text())
    assert info["trust"]["ood"]["file"] == "trust.safetensors"
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trusted_bundle, bad)
    data = bytearray((bad / "trust.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "trust.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(bad)
    (bad / "trust.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bad)


def test_old_bundle_without_trust_answers_ok(tmp_path):
    from _bundles import lesion_image
    from dermfuse.inference.predict import predict_one

    b = load_bundle(make_bundle(tmp_path / "old", image_size=32))
    assert b.trust is None
    p = predict_one(b, _png(lesion_image(1)), 40, "male", "back")
    assert p.status == "ok" and p.top_class == max(p.probabilities, key=p.probabilities.get)


def test_predict_one_applies_the_bundles_trust(trusted_bundle):
    from _bundles import lesion_image
    from dermfuse.inference.predict import predict_one

    b = load_bundle(trusted_bundle)
    flat = np.full((150, 200, 3), 128, np.uint8)
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(flat).save(buf, format="PNG")
    p = predict_one(b, buf.getvalue(), None, None, None)
    assert p.status == "out_of_distribution" and p.top_class is None
    assert sum(p.probabilities.values()) == pytest.approx(1, abs=1e-5)
    d = p.to_dict()
    assert d["probabilities_reliable"] is False and d["model_id"] == b.model_id
    q = predict_one(b, _png(lesion_image(3)), 40, "male", "back", explain_class="bcc")
    assert q.explained_class == "bcc"


def test_one_pixel_image_is_refused(trusted_bundle):
    from dermfuse.inference.predict import predict_one

    with pytest.raises(InputError, match="32"):
        predict_one(load_bundle(trusted_bundle), _png(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (1, 1))),
                    None, None, None)
