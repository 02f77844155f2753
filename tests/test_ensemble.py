"""Seed ensembles (train.members): the averaging module, the run, its bundle and its members."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from _bundles import rescore_run
from dermfuse.inference.bundle import load_bundle
from dermfuse.config import RunConfig
from dermfuse.errors import ConfigError
from dermfuse.runs.holdout import train_run
from dermfuse.models import create_model
from dermfuse.models.ensemble import Ensemble
from dermfuse.inference.predict import explain_arrays, predict_one


def test_ensemble_output_is_log_of_mean_member_probabilities():
    torch.manual_seed(0)
    members = [create_model("ft_multicnn", 7, meta_dim=4, pretrained=False, input_size=32) for _ in range(3)]
    ens = Ensemble(members).eval()
    x, m = torch.rand(5, 3, 32, 32), torch.randn(5, 4)
    with torch.no_grad():
        expected = torch.stack([net(x, m).softmax(1) for net in members]).mean(0)
        out = ens(x, m)
    assert torch.allclose(out.softmax(1), expected, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)  # already log-probabilities
    assert ens.cam_layer is members[0].cam_layer
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(members[:1])


def _cfg(data, out, members: int, seed: int = 0) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path = str(data)
    cfg.data.image_size = 32
    cfg.model.name = "ft_multicnn"
    cfg.model.pretrained = False
    cfg.train.epochs = 2
    cfg.train.tta = True
    cfg.train.calibration = "prior-temperature"
    cfg.train.members = members
    cfg.data.split_seed = 0
    cfg.train.init_seed = seed
    cfg.out = str(out)
    return cfg


@pytest.fixture(scope="module")
def ensemble_run(synth_small, tmp_path_factory):
    return train_run(_cfg(synth_small, tmp_path_factory.mktemp("ens") / "run", members=2), progress=False)


def test_ensemble_bundle_rebuilds_every_member(ensemble_run):
    info = json.loads((ensemble_run.bundle / "bundle.json").read_text())
    assert info["model"]["name"] == "ensemble"
    assert info["model"]["kwargs"]["member"] == "ft_multicnn" and info["model"]["kwargs"]["n_members"] == 2
    bundle = load_bundle(ensemble_run.bundle)
    assert isinstance(bundle.model, Ensemble) and len(bundle.model.members) == 2
    a, b = (dict(m.named_parameters()) for m in bundle.model.members)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two seeds, two different networks
    for k in range(2):
        assert (ensemble_run.run_dir / "members" / str(k) / "history.json").is_file()
    html = (ensemble_run.run_dir / "report.html").read_text()
    assert "Ensemble members" in html and "seed 1" in html


def test_member_is_the_single_run_with_its_seed(ensemble_run, synth_small, tmp_path):
    """Member k scored alone is exactly what `members: 1` with seed k reports (k = 1: the
    member whose seed differs from the run's)."""
    members = ensemble_run.metrics["members"]
    assert [m["seed"] for m in members] == [0, 1]
    single = train_run(_cfg(synth_small, tmp_path / "single", members=1, seed=1), progress=False)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss"):
        assert members[1][key] == pytest.approx(single.metrics[key], abs=1e-9), key
    assert members[0]["log_loss"] != pytest.approx(members[1]["log_loss"], abs=1e-6)
    # and its saved predictions are the single run's, row for row (paired comparisons use them)
    mine = pd.read_csv(ensemble_run.run_dir / "members" / "1" / "predictions.csv")
    theirs = pd.read_csv(single.run_dir / "predictions.csv")
    assert list(mine["image_id"]) == list(theirs["image_id"]) and list(mine["pred"]) == list(theirs["pred"])
    cols = [c for c in mine.columns if c.startswith("p_")]
    assert np.allclose(mine[cols].to_numpy(), theirs[cols].to_numpy(), atol=1e-6)


def test_ensemble_predictions_are_calibrated_mean_of_members(ensemble_run, synth_small, tmp_path):
    """The run averages the members' saved-epoch probabilities; the bundle's Ensemble module
    (TTA and calibration included) gives the same test predictions."""
    ours, again, _ = rescore_run(ensemble_run, synth_small, tmp_path)
    assert np.allclose(ours, again, atol=1e-5)
    m = ensemble_run.metrics
    assert "calibration" in m and "uncalibrated" in m


def test_calibration_is_fitted_on_the_ensembles_validation_predictions(ensemble_run, synth_small):
    """Not on one member's: refitting on the bundle's uncalibrated validation predictions
    gives the stored parameters."""
    from dermfuse.evaluation.calibrate import fit_calibration
    from dermfuse.data.cache import build_cache
    from dermfuse.runs.holdout import load_cohort
    from dermfuse.inference.predict import predict_arrays

    bundle = load_bundle(ensemble_run.bundle)
    cohort = load_cohort(synth_small, progress=False)
    part = pd.read_csv(ensemble_run.run_dir / "split.csv").set_index("image_id")["part"]
    where = cohort.table["image_id"].map(part).to_numpy()
    val, train = np.flatnonzero(where == "val"), np.flatnonzero(where == "train")
    images = build_cache(cohort.table, size=bundle.image_size, progress=False).images
    raw = predict_arrays(bundle, np.ascontiguousarray(images[val]), bundle.encode_table(cohort.table.iloc[val]),
                         calibrated=False)
    refit = fit_calibration(raw, cohort.labels[val], cohort.labels[train], "prior-temperature")
    assert refit.prior_shift == pytest.approx(bundle.calibration.prior_shift, abs=1e-6)
    assert refit.temperature == pytest.approx(bundle.calibration.temperature, rel=1e-3)


def test_resume_reuses_the_members_and_refuses_another_seed(ensemble_run, synth_small):
    cfg = _cfg(synth_small, ensemble_run.run_dir, members=2)
    again = train_run(cfg, progress=False, resume=True)  # every member's checkpoint is finished
    for key in ("accuracy", "balanced_accuracy", "log_loss"):
        assert again.metrics[key] == pytest.approx(ensemble_run.metrics[key], abs=1e-9)
    with pytest.raises(ConfigError, match="seed"):
        train_run(_cfg(synth_small, ensemble_run.run_dir, members=2, seed=5), progress=False, resume=True)


def test_members_trained_one_by_one_build_the_same_ensemble(ensemble_run, synth_small, tmp_path):
    """`member=k` jobs (which could run at once) leave checkpoints from which a resumed run
    builds exactly the ensemble that one run trains member after member (CPU: deterministic)."""
    cfg = _cfg(synth_small, tmp_path / "run", members=2)
    for k in (1, 0):  # in any order
        res = train_run(cfg, progress=False, member=k)
        assert res.bundle is None and res.metrics["member"] == k and res.metrics["seed"] == k
        assert res.metrics["epochs_run"] == cfg.train.epochs
        assert (tmp_path / "run" / "members" / str(k) / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "bundle").exists()
    built = train_run(cfg, progress=False, resume=True)
    for key in ("accuracy", "balanced_accuracy", "log_loss", "ece"):
        assert built.metrics[key] == pytest.approx(ensemble_run.metrics[key], abs=1e-9), key
    assert [m["seed"] for m in built.metrics["members"]] == [0, 1]
    assert built.bundle is not None and (built.bundle / "bundle.json").is_file()


@pytest.mark.parametrize("members, member", [(2, 2), (2, -1), (1, 0)])
def test_member_outside_the_ensemble_is_refused(synth_small, tmp_path, members, member):
    with pytest.raises(ConfigError, match="member"):
        train_run(_cfg(synth_small, tmp_path / "run", members=members), progress=False, member=member)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_calibrate_keeps_the_members(ensemble_run, tmp_path):
    import shutil

    from dermfuse.runs.holdout import calibrate_run

    run = tmp_path / "run"
    shutil.copytree(ensemble_run.run_dir, run, ignore=shutil.ignore_patterns("*.pt"))
    metrics = calibrate_run(run, mode="temperature", progress=False)
    assert [m["seed"] for m in metrics["members"]] == [0, 1]
    assert "Ensemble members" in (run / "report.html").read_text()


class _FixedMeta(torch.nn.Module):
    """pytorch-grad-cam calls model(x): hold the metadata fixed for the batch."""

    def __init__(self, model: torch.nn.Module, meta: torch.Tensor) -> None:
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.meta)


def _reference_gradcam(net: torch.nn.Module, x: torch.Tensor, meta: torch.Tensor, targets: list[int]) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM (B, H, W) of one member, independent of dermfuse's."""
    from pytorch_grad_cam import GradCAM as RefGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with RefGradCAM(model=_FixedMeta(net, meta), target_layers=[net.cam_layer]) as ref:
        out = ref(x, [ClassifierOutputTarget(t) for t in targets])
    net.zero_grad(set_to_none=True)
    return out


def test_ensemble_explanation_is_the_mean_member_map(ensemble_run):
    """An ensemble's map is the unweighted mean of its members' Grad-CAM maps (as
    `Ensemble` documents), each member's map computed here by pytorch-grad-cam."""
    bundle = load_bundle(ensemble_run.bundle)
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    meta = bundle.encoder.encode_one(50, "male", "back")[None].repeat(3, 0)[:, : bundle.model_meta_dim]
    maps = explain_arrays(bundle, images, meta, targets=[0, 1, 2])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S) in [0, 1]
    per_member = [_reference_gradcam(net, x, torch.as_tensor(meta), [0, 1, 2]) for net in bundle.model.members]
    # not vacuous: the maps carry signal, and the members disagree (so member 0 alone, or a
    # weighted mean, would not pass)
    assert all((m.max(axis=(1, 2)) > 0.5).sum() >= 2 for m in per_member)
    assert np.abs(per_member[0] - per_member[1]).max() > 0.1
    expected = np.mean(per_member, axis=0)
    assert maps.shape == (3, 32, 32) and np.abs(maps - expected).max() <= 1e-5
    assert 0 <= maps.min() and maps.max() <= 1
    # without targets: the class the ensemble answers (test-time views and calibration included)
    from dermfuse.inference.predict import predict_arrays

    own = [int(i) for i in predict_arrays(bundle, images, meta).argmax(1)]
    assert np.allclose(explain_arrays(bundle, images, meta), explain_arrays(bundle, images, meta, targets=own))
    other = [(t + 1) % len(bundle.classes) for t in own]
    assert not np.allclose(explain_arrays(bundle, images, meta), explain_arrays(bundle, images, meta, targets=other))


def test_predict_one_with_an_ensemble_bundle(ensemble_run, synth_small):
    bundle = load_bundle(ensemble_run.bundle)
    image = next((synth_small / "images").glob("*.jpg"))
    p = predict_one(bundle, image, 40, "female", "face", explain=True)
    assert sum(p.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert p.heatmap is not None and p.overlay.shape == (32, 32, 3)


def test_members_must_be_positive_and_cv_refuses_ensembles(synth_small, tmp_path):
    from dermfuse.runs.cv import run_cv

    with pytest.raises(ConfigError, match="members"):
        train_run(_cfg(synth_small, tmp_path / "zero", members=0), progress=False)
    with pytest.raises(ConfigError, match="single models"):
        run_cv(_cfg(synth_small, tmp_path / "cv", members=2), models="cnn", folds=2, progress=False)
