"""Heatmap faithfulness and localisation: the metric functions, pytorch-grad-cam's
confidence-change metric as oracle, synthetic lesion masks, and a model whose evidence is
known (only the lesion carries the class)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from dermfuse.explain import faithfulness as fm
from dermfuse.explain.gradcam import GradCAM
from dermfuse.config import TrainConfig
from dermfuse.data.synth import make_synthetic
from dermfuse.models import create_model
from dermfuse.training.loop import ArrayDataset, fit

SIZE = 32


def disc_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (n, S, S, 3) uint8 of a disc on noise: the disc's colour is the class (red 0,
    blue 1), the background is class-free noise. Returns images, labels, masks (n, S, S)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = rng.integers(60, 200, (n, SIZE, SIZE, 3)).astype(np.uint8)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i, y in enumerate(labels):
        cy, cx = rng.uniform(8, SIZE - 8, 2)
        r = rng.uniform(4, 7)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        images[i][masks[i]] = (230, 30, 30) if y == 0 else (30, 30, 230)
    return images, labels, masks


@pytest.fixture(scope="module")
def known_model():
    """A plain CNN fitted (dermfuse's own loop) on discs whose colour alone is the class."""
    images, labels, _ = disc_set(240, seed=0)
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=2, input_size=SIZE)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=2e-3, augment=False, early_stopping="none", init_seed=0,
                      device="cpu", balance="none")
    fit(model, ArrayDataset(images, np.zeros((240, 0), np.float32), labels), None, cfg, ["red", "blue"],
        progress=False)
    return model.eval()


def _scorer(model, x):
    with torch.no_grad():
        targets = model(x, None).argmax(1)

    def score(images, rows):
        with torch.no_grad():
            return model(images, None).softmax(1)[torch.as_tensor(rows), targets[torch.as_tensor(rows)]]
    return score, targets


def test_energy_in_lesion_of_a_model_whose_evidence_is_known_beats_random(known_model):
    images, labels, masks = disc_set(64, seed=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acc = (known_model(x, None).argmax(1).numpy() == labels).mean()
    assert acc > 0.9, acc  # the model did learn the disc colour
    with GradCAM(known_model) as cam:
        maps = cam(x, None).numpy()
    grid = (SIZE // 4, SIZE // 4)  # the last conv block of a 32 px plain CNN
    rand = fm.random_maps(len(x), (SIZE, SIZE), grid, seed=0).numpy()
    groups = np.arange(len(x))
    cam_e = fm.lesion_bootstrap(fm.energy_in_mask(maps, masks), groups)
    rnd_e = fm.lesion_bootstrap(fm.energy_in_mask(rand, masks), groups)
    area = masks.mean()
    assert abs(rnd_e["mean"] - area) < 0.06  # a random map puts about the lesion's area share there
    assert cam_e["low"] > rnd_e["high"] and cam_e["mean"] > 2 * rnd_e["mean"], (cam_e, rnd_e)
    hits = np.nanmean(fm.pointing_game(maps, masks, tolerance=1))
    assert hits > np.nanmean(fm.pointing_game(rand, masks, tolerance=1)) + 0.3


def test_deletion_and_insertion_separate_a_faithful_map_from_its_inverse(known_model):
    images, _, masks = disc_set(32, seed=2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    score, _ = _scorer(known_model, x)
    good = torch.from_numpy(masks.astype(np.float32))  # the evidence itself
    bad = 1 - good
    d_good, i_good = fm.perturbation_curves(score, x, good, steps=8)
    d_bad, i_bad = fm.perturbation_curves(score, x, bad, steps=8)
    assert fm.curve_auc(d_good).mean() < fm.curve_auc(d_bad).mean() - 0.1
    assert fm.curve_auc(i_good).mean() > fm.curve_auc(i_bad).mean() + 0.1
    # both curves start and end at the same two inputs: the image and the fill
    np.testing.assert_allclose(d_good[:, 0], i_good[:, -1], atol=1e-6)
    np.testing.assert_allclose(d_good[:, -1], i_good[:, 0], atol=1e-6)


def test_confidence_change_matches_pytorch_grad_cam(known_model):
    images, _, _ = disc_set(8, seed=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    score, targets = _scorer(known_model, x)
    with GradCAM(known_model) as cam:
        maps = cam(x, None)
    y, o = fm.confidence_change(score, x, maps)
    ref = CamMultImageConfidenceChange()(x, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets],
                                         lambda t: known_model(t, None))
    np.testing.assert_allclose(o - y, ref, atol=1e-5)
    np.testing.assert_allclose(fm.average_drop(y, o), np.maximum(0, -ref) / y * 100, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fm.increase_in_confidence(y, o), np.where(ref > 0, 100.0, 0.0))


def test_curve_auc_and_scores_on_hand_made_cases():
    np.testing.assert_allclose(fm.curve_auc(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])), [1.0, 0.25])
    maps = np.zeros((3, 4, 4))
    maps[0, 1, 1] = 1.0  # all energy at one inside pixel
    maps[1] = 1.0  # uniform
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True
    e = fm.energy_in_mask(maps, masks)
    assert e[0] == 1.0 and e[1] == pytest.approx(0.25) and np.isnan(e[2])
    p = fm.pointing_game(maps, masks)
    assert p[0] == 1.0 and p[1] == 1.0 and np.isnan(p[2])  # uniform: the first pixel, inside
    far = np.zeros((1, 4, 4))
    far[0, 3, 3] = 1
    assert fm.pointing_game(far, masks[:1])[0] == 0.0
    assert fm.pointing_game(far, masks[:1], tolerance=2)[0] == 1.0
    band = fm.border_band((10, 10), 0.1)
    assert band.sum() == 100 - 64
    assert fm.border_energy(np.ones((1, 10, 10)), 0.1)[0] == pytest.approx(0.36)


def test_lesion_bootstrap_resamples_lesions_not_images():
    values = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    one = fm.lesion_bootstrap(values, np.array(["a", "a", "a", "a", "b", "c"]), n_boot=500)
    assert one["mean"] == pytest.approx(4 / 6) and one["n_groups"] == 3 and one["n"] == 6
    assert one["low"] == 0.0 and one["high"] == 1.0  # lesion a drawn 0 or 3 times
    each = fm.lesion_bootstrap(values, np.arange(6), n_boot=500)
    assert each["high"] - each["low"] < one["high"] - one["low"]
    assert fm.lesion_bootstrap(np.array([np.nan, 1.0]), np.array([0, 1]))["n"] == 1


def test_random_maps_are_seeded_and_scaled():
    a, b = fm.random_maps(3, (16, 16), (4, 4), seed=1), fm.random_maps(3, (16, 16), (4, 4), seed=1)
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    assert float(a.min()) == pytest.approx(0.0, abs=1e-6) and float(a.max()) == pytest.approx(1.0, abs=1e-5)
    assert not torch.equal(a, fm.random_maps(3, (16, 16), (4, 4), seed=2))


def test_synthetic_masks_cover_the_drawn_lesion_and_leave_images_unchanged(tmp_path):
    plain = make_synthetic(tmp_path / "plain", n=12, seed=4)
    with_masks = make_synthetic(tmp_path / "masks", n=12, seed=4, masks=True)
    ids = sorted(p.stem for p in (plain / "images").glob("*.jpg"))
    assert sorted(p.stem for p in (with_masks / "masks").glob("*.png")) == ids
    assert not (plain / "masks").exists()
    for image_id in ids:
        a = (plain / "images" / f"{image_id}.jpg").read_bytes()
        assert a == (with_masks / "images" / f"{image_id}.jpg").read_bytes()
        mask = np.asarray(Image.open(with_masks / "masks" / f"{image_id}.png"))
        img = np.asarray(Image.open(with_masks / "images" / f"{image_id}.jpg").convert("L"), np.float64)
        assert mask.dtype == np.uint8 and mask.shape == img.shape and set(np.unique(mask)) <= {0, 255}
        inside, outside = mask == 255, mask == 0
        assert 0.02 < inside.mean() < 0.9
        # the lesion is darker or redder than skin: its mean grey differs from the surround's
        centre_ring = outside.copy()
        centre_ring[:15], centre_ring[-15:], centre_ring[:, :15], centre_ring[:, -15:] = False, False, False, False
        assert img[inside].mean() < img[centre_ring].mean() - 5
    assert (plain / "metadata.csv").read_bytes() == (with_masks / "metadata.csv").read_bytes()


def test_explain_eval_end_to_end_on_a_tiny_bundle(tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _bundles import make_bundle

    from dermfuse.runs.explain_eval import explain_eval

    data = make_synthetic(tmp_path / "data", n=14, seed=2, masks=True)
    bundle = make_bundle(tmp_path / "bundle", model="ft_multicnn", image_size=32)
    res = explain_eval(bundle, data, methods=["gradcam", "layercam"], n_images=10, steps=4, n_boot=50,
                       batch_size=4, out=tmp_path / "out", progress=False)
    assert set(res["methods"]) == {"gradcam", "layercam", "random"}
    for m in res["methods"].values():
        assert m["deletion_auc"]["n"] == 10 and 0 <= m["deletion_auc"]["mean"] <= 1
        assert "energy_in_lesion" in m and "pointing_game" in m
    assert "vs_random" in res["methods"]["gradcam"]["insertion_auc"]
    assert len(res["curves"]["gradcam"]["deletion"]) == 5
    assert res["masks"] and res["synthetic"]
    assert {(r["layer"], r["pad"]) for r in res["border"] if r["method"] == "gradcam"} >= {("last", 0)}
    written = json.loads((tmp_path / "out" / "explain_eval.json").read_text())
    assert written["images"] == 10
    for name in ("deletion_insertion.png", "localisation.png", "examples.png"):
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 1000
