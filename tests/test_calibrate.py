"""Calibration: the fitted parameters are right on data with a known answer, they travel in
the bundle, and a run with calibration reports and reproduces calibrated predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermfuse.inference.bundle import load_bundle
from dermfuse.evaluation.calibrate import Calibration, fit_calibration, fit_prior_shift, fit_temperature
from dermfuse.config import RunConfig
from dermfuse.errors import BundleError, ConfigError
from dermfuse.runs.holdout import calibrate_run, evaluate_bundle, train_run
from dermfuse.inference.predict import predict_arrays

from _bundles import make_bundle


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sampled(n=20000, c=4, seed=0):
    """Labels drawn from softmax(z): z are calibrated logits by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2.0
    p = _softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


def test_temperature_recovers_a_known_overconfidence():
    z, y = _sampled()
    assert fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.05)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.05)


def test_prior_shift_undoes_a_balanced_decision():
    """Scores of a model that acts as if classes were equally common (true logits minus the
    log prior): the chosen shift is positive, is the scan's best, and buys accuracy at the
    price of balanced accuracy, as taking back the balancing should."""
    rng = np.random.default_rng(1)
    prior = np.array([0.7, 0.2, 0.07, 0.03])
    n = 30000
    y = rng.choice(4, size=n, p=prior)
    x = rng.normal(size=(n, 4))
    x[np.arange(n), y] += 1.2
    true_logits = x * 1.2 + np.log(prior)  # posterior under the prior, up to noise
    balanced = true_logits - np.log(prior)
    proba = _softmax(balanced)
    tau, scan = fit_prior_shift(proba, y, np.log(prior))
    by_tau = {r["tau"]: r for r in scan}
    assert 0.3 <= tau <= 1.2
    assert by_tau[tau]["objective"] >= max(r["objective"] for r in scan) - 1e-12
    assert by_tau[tau]["accuracy"] > by_tau[0.0]["accuracy"] + 0.05  # nevi no longer given away
    # accuracy keeps rising towards the prior decision, balanced accuracy falls: a trade-off
    assert by_tau[1.0]["accuracy"] > by_tau[0.0]["accuracy"]
    assert by_tau[1.0]["balanced_accuracy"] < by_tau[0.0]["balanced_accuracy"]


def _imbalanced(seed: int, n: int = 30000):
    rng = np.random.default_rng(seed)
    prior = np.array([0.7, 0.2, 0.07, 0.03])
    y = rng.choice(4, size=n, p=prior)
    x = rng.normal(size=(n, 4))
    x[np.arange(n), y] += 1.2
    return y, x * 1.2 + np.log(prior), prior  # labels, posterior logits under the prior, prior


def test_balanced_prior_shift_adjusts_an_unbalanced_decision():
    """Scores of a model trained without class balancing (posterior under the prior): for
    balanced accuracy alone the shift goes the other way, towards tau = -1 (logit adjustment,
    Menon et al. 2021), and buys balanced accuracy; the mean objective keeps more accuracy."""
    y, logits, prior = _imbalanced(3)
    proba = _softmax(logits)
    tau, scan = fit_prior_shift(proba, y, np.log(prior), objective="balanced_accuracy")
    by_tau = {r["tau"]: r for r in scan}
    assert -1.0 <= tau <= -0.5
    assert by_tau[tau]["balanced_accuracy"] == max(r["balanced_accuracy"] for r in scan)
    assert by_tau[tau]["balanced_accuracy"] > by_tau[0.0]["balanced_accuracy"] + 0.05
    tau_mean, _ = fit_prior_shift(proba, y, np.log(prior))  # grid 0..1.5
    assert tau_mean > tau

    # already balanced scores: little left to adjust
    tau_bal, _ = fit_prior_shift(_softmax(logits - np.log(prior)), y, np.log(prior), objective="balanced_accuracy")
    assert abs(tau_bal) <= 0.25

    cal = fit_calibration(proba, y, y, "balanced-temperature")
    assert cal.prior_shift == tau and "max balanced accuracy" in cal.fitted_on["objective"]
    adjusted = cal.apply(proba).argmax(1)
    want = np.argmax(np.log(proba) + tau * np.log(np.bincount(y) / len(y)), axis=1)
    assert (adjusted == want).mean() > 0.999  # temperature changes no decision
    with pytest.raises(ValueError, match="objective"):
        fit_prior_shift(proba, y, np.log(prior), objective="f1")


def test_fit_calibration_modes_and_round_trip():
    z, y = _sampled(n=4000, c=3, seed=2)
    proba = _softmax(2.0 * z)
    none = fit_calibration(proba, y, y, "none")
    assert none.is_identity and np.allclose(none.apply(proba), proba, atol=1e-6)
    temp = fit_calibration(proba, y, y, "temperature")
    assert temp.prior_shift == 0.0 and temp.temperature == pytest.approx(2.0, rel=0.1)
    assert (temp.apply(proba).argmax(1) == proba.argmax(1)).all()  # temperature never flips a decision
    assert temp.fitted_on["val_log_loss_after"] < temp.fitted_on["val_log_loss_before"]
    full = fit_calibration(proba, y, y, "prior-temperature")
    again = Calibration.from_dict(json.loads(json.dumps(full.to_dict())))
    assert np.allclose(again.apply(proba), full.apply(proba))
    assert np.allclose(full.apply(proba).sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="expected one of"):
        fit_calibration(proba, y, y, "isotonic")


def test_bundle_applies_its_calibration(tmp_path):
    prior = np.array([1, 1, 1, 1, 1, 3, 1]) / 9  # nv three times as common as each other class
    cal = Calibration(temperature=0.5, prior_shift=1.0, log_prior=np.log(prior).tolist())
    path = make_bundle(tmp_path / "b")
    info = json.loads((path / "bundle.json").read_text())
    info["calibration"] = cal.to_dict()
    (path / "bundle.json").write_text(json.dumps(info))
    bundle = load_bundle(path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    meta = np.zeros((5, bundle.model_meta_dim), np.float32)
    raw = predict_arrays(bundle, images, meta, calibrated=False)
    assert np.allclose(predict_arrays(bundle, images, meta), cal.apply(raw), atol=1e-6)
    info["calibration"]["log_prior"] = [0.0, 0.0]  # wrong length
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="one log_prior entry per class"):
        load_bundle(path)


def _cfg(data, out, calibration="prior-temperature", test_fraction=0.2) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size, cfg.data.test_fraction = str(data), 48, test_fraction
    cfg.data.val_fraction = 0.25
    cfg.model.name, cfg.model.pretrained = "cnn", False
    cfg.train.epochs, cfg.train.batch_size, cfg.train.calibration = 2, 32, calibration
    cfg.out = str(out)
    return cfg


@pytest.fixture(scope="module")
def calibrated_run(synth_small, tmp_path_factory):
    return train_run(_cfg(synth_small, tmp_path_factory.mktemp("run") / "cal"), progress=False)


def test_run_reports_calibrated_and_uncalibrated(calibrated_run, synth_small, tmp_path):
    d = calibrated_run.run_dir
    metrics = json.loads((d / "metrics.json").read_text())
    assert {"accuracy", "balanced_accuracy"} <= set(metrics["uncalibrated"])
    fitted = metrics["calibration"]["fitted_on"]
    split = pd.read_csv(d / "split.csv")
    assert fitted["n"] == (split["part"] == "val").sum()  # chosen on validation rows only
    assert "Calibration (fitted on validation rows only)" in (d / "report.html").read_text()
    bundle = load_bundle(calibrated_run.bundle)
    assert bundle.calibration.temperature == pytest.approx(metrics["calibration"]["temperature"])
    # the bundle gives the run's calibrated test predictions
    evaluate_bundle(calibrated_run.bundle, synth_small, progress=False, out=tmp_path)
    ours = pd.read_csv(d / "predictions.csv").set_index("image_id")
    again = pd.read_csv(tmp_path / "predictions.csv").set_index("image_id").loc[ours.index]
    cols = [c for c in ours.columns if c.startswith("p_")]
    assert np.allclose(ours[cols].to_numpy(), again[cols].to_numpy(), atol=1e-5)


def test_recalibrating_a_calibrated_run_does_not_stack(calibrated_run, tmp_path):
    """`dermfuse calibrate` on a run calibrated in training starts from its raw scores."""
    import shutil

    d = shutil.copytree(calibrated_run.run_dir, tmp_path / "copy")
    ref = json.loads((d / "metrics.json").read_text())
    m = calibrate_run(d, progress=False)
    assert m["calibration"]["prior_shift"] == ref["calibration"]["prior_shift"]
    assert m["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-9)
    assert m["uncalibrated"]["accuracy"] == pytest.approx(ref["uncalibrated"]["accuracy"], abs=1e-9)


def test_calibrating_a_finished_run(synth_small, tmp_path):
    """`dermfuse calibrate RUN` fits on the run's validation rows with the training rows'
    prior, rescales the saved test scores, and leaves a bundle that reproduces them."""
    plain = train_run(_cfg(synth_small, tmp_path / "plain", calibration="none"), progress=False)
    assert "calibration" not in json.loads((plain.run_dir / "metrics.json").read_text())
    m = calibrate_run(plain.run_dir, progress=False)
    d = plain.run_dir
    split = pd.read_csv(d / "split.csv")
    labels = pd.read_csv(synth_small / "metadata.csv").drop_duplicates("image_id").set_index("image_id")["dx"]
    train_labels = labels.loc[split.loc[split["part"] == "train", "image_id"]]
    bundle = load_bundle(plain.bundle)
    counts = train_labels.value_counts().reindex(bundle.classes).fillna(0).clip(lower=1)
    assert np.allclose(bundle.calibration.log_prior, np.log(counts / counts.sum()))
    assert m["calibration"]["fitted_on"]["n"] == (split["part"] == "val").sum()
    raw = pd.read_csv(d / "predictions_uncalibrated.csv").set_index("image_id")
    cal = pd.read_csv(d / "predictions.csv").set_index("image_id").loc[raw.index]
    cols = [f"p_{c}" for c in bundle.classes]
    expected = bundle.calibration.apply(raw[cols].to_numpy() / raw[cols].to_numpy().sum(1, keepdims=True))
    assert np.allclose(cal[cols].to_numpy(), expected, atol=2e-6)
    evaluate_bundle(plain.bundle, synth_small, progress=False, out=tmp_path / "eval")
    again = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("image_id").loc[raw.index]
    assert np.allclose(again[cols].to_numpy(), cal[cols].to_numpy(), atol=1e-5)
    assert m["uncalibrated"]["accuracy"] == pytest.approx((raw["pred"] == raw["label"]).mean())
    twice = calibrate_run(d, progress=False)  # idempotent: starts again from the kept raw scores
    assert twice["accuracy"] == m["accuracy"]
    assert load_bundle(plain.bundle).calibration.prior_shift == m["calibration"]["prior_shift"]


def test_all_rows_run_has_no_test_part(synth_small, tmp_path):
    res = train_run(_cfg(synth_small, tmp_path / "all", test_fraction=0.0), progress=False)
    split = pd.read_csv(res.run_dir / "split.csv")
    assert set(split["part"]) == {"train", "val"}
    assert not (res.run_dir / "predictions.csv").exists()
    assert json.loads((res.run_dir / "metrics.json").read_text())["n_images"] == 0
    assert load_bundle(res.bundle).calibration.fitted_on["n"] == (split["part"] == "val").sum()


def test_calibration_needs_a_validation_part(synth_small, tmp_path):
    cfg = _cfg(synth_small, tmp_path / "x")
    cfg.data.val_fraction = 0.0
    with pytest.raises(ConfigError, match="val_fraction"):
        train_run(cfg, progress=False)
    cfg = _cfg(synth_small, tmp_path / "y", calibration="isotonic")
    with pytest.raises(ConfigError, match="train.calibration"):
        train_run(cfg, progress=False)
