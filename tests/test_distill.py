"""dermfuse.training.distill: the loss against its formula, soft targets aligned by image id
with clear errors, a fit that follows the soft targets rather than the labels, and
`dermfuse teach` -> `train.distill_targets` end to end on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dermfuse.cli import main
from dermfuse.config import RunConfig, TrainConfig
from dermfuse.errors import ConfigError
from dermfuse.runs.predictions_csv import write_predictions
from dermfuse.runs.teach import load_soft_targets, teacher_targets
from dermfuse.training.distill import DistillLoss
from dermfuse.training.loop import ArrayDataset, fit
from test_train import CLASSES, TinyNet, _one_thread, make_task  # noqa: F401 (_one_thread: autouse fixture)


def _logits_and_soft(seed: int = 0, n: int = 6, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, requires_grad=True)
    soft = torch.softmax(torch.randn(n, c, generator=g) * 2, dim=1)
    labels = torch.randint(0, c, (n,), generator=g)
    return logits, soft, labels


def test_loss_is_the_weighted_mix_of_hard_cross_entropy_and_softened_kl():
    logits, soft, labels = _logits_and_soft()
    weight = torch.tensor([1.0, 2.0, 0.5])
    alpha, t = 0.3, 2.0
    got = DistillLoss(alpha, t, weight)(logits, labels, soft)
    # written out: the weighted CE, and sum_c q_c (log q_c - log s_c) / n with q, s softened by t
    w = weight[labels]
    ce = -(w * torch.log_softmax(logits, 1)[torch.arange(len(labels)), labels]).sum() / w.sum()
    q = soft ** (1 / t) / (soft ** (1 / t)).sum(1, keepdim=True)
    s = torch.log_softmax(logits / t, 1)
    kl = (q * (q.log() - s)).sum(1).mean()
    assert got.item() == pytest.approx(((1 - alpha) * ce + alpha * t * t * kl).item(), rel=1e-5)
    assert DistillLoss(0.0, t, weight)(logits, labels, soft).item() == pytest.approx(ce.item(), rel=1e-6)


def test_the_soft_term_vanishes_with_its_gradient_when_the_student_matches_the_teacher():
    logits, _, labels = _logits_and_soft(1)
    soft = torch.softmax(logits.detach(), dim=1)
    loss = DistillLoss(1.0, 3.0)(logits, labels, soft)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert logits.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("alpha,t,needle", [(1.5, 2.0, "distill_weight"), (-0.1, 2.0, "distill_weight"),
                                            (0.5, 0.0, "distill_temperature"),
                                            (0.5, float("inf"), "distill_temperature")])
def test_bad_settings_are_refused(alpha, t, needle):
    with pytest.raises(ConfigError, match=needle):
        DistillLoss(alpha, t)


def test_soft_targets_are_read_in_the_rows_order_and_renormalised(tmp_path):
    path = tmp_path / "t.csv"
    proba = np.array([[0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [1.0, 1.0, 2.0]])  # the last sums to 4
    write_predictions(path, ["a", "b", "007"], CLASSES, np.array([2, 0, 2]), proba)
    got = load_soft_targets(path, ["007", "a"], CLASSES)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.25, 0.25, 0.5], [0.2, 0.2, 0.6]], rtol=1e-6)


def test_soft_target_files_that_do_not_fit_say_what_is_wrong(tmp_path):
    path = tmp_path / "t.csv"
    write_predictions(path, ["a", "b"], CLASSES, np.array([0, 1]), np.full((2, 3), 1 / 3))
    with pytest.raises(ConfigError, match=r"1 of the 3 training images have no soft target.*'c'"):
        load_soft_targets(path, ["a", "b", "c"], CLASSES)
    with pytest.raises(ConfigError, match="the student's classes are .*purple"):
        load_soft_targets(path, ["a"], CLASSES + ["purple"])
    extra = tmp_path / "extra.csv"  # a teacher with a class the student lacks: refused, not dropped
    write_predictions(extra, ["a"], CLASSES + ["extra"], np.array([0]), np.full((1, 4), 1 / 4))
    with pytest.raises(ConfigError, match="holds probabilities for .*extra"):
        load_soft_targets(extra, ["a"], CLASSES)
    with pytest.raises(ConfigError, match="not found"):
        load_soft_targets(tmp_path / "nope.csv", ["a"], CLASSES)
    pd.concat([pd.read_csv(path)] * 2).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ConfigError, match="twice"):
        load_soft_targets(tmp_path / "dup.csv", ["a"], CLASSES)
    zero = tmp_path / "zero.csv"
    write_predictions(zero, ["a"], CLASSES, np.array([0]), np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="all-zero"):
        load_soft_targets(zero, ["a"], CLASSES)


def _fit_on(soft: np.ndarray | None, alpha: float) -> np.ndarray:
    images, meta, labels = make_task(48, seed=0)
    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(epochs=25, batch_size=8, lr=0.05, early_stopping="none", augment=False, balance="none",
                      device="cpu", channels_last=False, distill_weight=alpha, distill_temperature=1.0)
    fit(model, ArrayDataset(images, meta, labels, soft=soft), None, cfg, CLASSES, progress=False)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return model.eval()(x, torch.from_numpy(meta)).argmax(1).numpy()


def test_fit_follows_the_soft_targets_in_proportion_to_their_weight():
    _, _, labels = make_task(48, seed=0)
    shifted = (labels + 1) % 3  # teachers that disagree with every label, in a learnable way
    soft = np.full((48, 3), 0.05, np.float32)
    soft[np.arange(48), shifted] = 0.9
    assert (_fit_on(soft, 1.0) == shifted).mean() > 0.9  # soft targets alone: the teachers' classes
    assert (_fit_on(soft, 0.0) == labels).mean() > 0.9  # weight 0: the labels, soft targets unused
    assert (_fit_on(None, 0.5) == labels).mean() > 0.9  # no soft targets: plain cross entropy


def test_array_dataset_refuses_soft_targets_of_the_wrong_length():
    images, meta, labels = make_task(4, seed=0)
    with pytest.raises(ValueError, match="soft"):
        ArrayDataset(images, meta, labels, soft=np.ones((3, 3)))


@pytest.fixture(scope="module")
def teacher_run(synth_small, tmp_path_factory):
    from dermfuse.runs.holdout import train_run

    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size = str(synth_small), 32
    cfg.model.name, cfg.model.pretrained = "ft_multicnn", False
    cfg.train.epochs, cfg.train.tta, cfg.train.calibration = 1, True, "prior-temperature"
    cfg.out = str(tmp_path_factory.mktemp("teach") / "teacher")
    return cfg, train_run(cfg, progress=False)


def test_teach_scores_the_training_rows_uncalibrated_and_a_student_trains_on_them(teacher_run, synth_small,
                                                                                  tmp_path, capsys):
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predictor import Predictor
    from dermfuse.runs.holdout import train_run

    cfg, res = teacher_run
    split = res.run_dir / "split.csv"
    targets = tmp_path / "targets.csv"
    code = main(["-q", "teach", str(synth_small), "--teacher", str(res.bundle), "--teacher", str(res.bundle),
                 "--split-file", str(split), "--out", str(targets)])
    assert code == 0 and "rows scored by 2 teacher(s)" in capsys.readouterr().err
    got = pd.read_csv(targets, dtype={"image_id": str})
    train_ids = set(pd.read_csv(split, dtype={"image_id": str}).query("part == 'train'")["image_id"])
    assert set(got["image_id"]) == train_ids

    # the same rows through the engine by hand: TTA views, no calibration (the bundle has one)
    ids, y, proba, classes = teacher_targets([res.bundle], synth_small, split, progress=False)
    bundle = load_bundle(res.bundle)
    assert not bundle.calibration.is_identity
    engine = Predictor.from_bundle(bundle)
    from dermfuse.data.cache import build_cache
    from dermfuse.runs.cohort import load_cohort

    table = load_cohort(synth_small, progress=False).table.set_index("image_id").loc[ids].reset_index()
    images = build_cache(table, size=32, method=bundle.resize_method, progress=False).images
    from dermfuse.preprocess import tta_views, to_input

    meta = torch.as_tensor(bundle.encode_table(table))
    with torch.inference_mode():  # the mean softmax over the test-time views, by hand
        views = tta_views(to_input(images))
        hand = np.mean([torch.softmax(bundle.model.eval()(v, meta), 1).numpy() for v in views], axis=0)
    assert len(views) == 5
    np.testing.assert_allclose(proba, hand, atol=1e-5)
    assert not np.allclose(proba, engine.run(images, bundle.encode_table(table)).proba, atol=1e-3)  # uncalibrated
    np.testing.assert_allclose(got.set_index("image_id").loc[ids, [f"p_{c}" for c in classes]].to_numpy(),
                               proba, rtol=1e-6, atol=1e-8)

    cfg.train.distill_targets, cfg.out = str(targets), str(tmp_path / "student")
    student = train_run(cfg, progress=False)
    assert student.metrics["n_images"] > 0
    assert f"distill_targets: {targets}" in (student.run_dir / "config.yaml").read_text()


def test_a_student_whose_split_has_rows_without_soft_targets_is_refused(teacher_run, synth_small, tmp_path):
    from dermfuse.runs.holdout import train_run

    cfg, res = teacher_run
    targets = tmp_path / "targets.csv"
    teacher_targets([res.bundle], synth_small, res.run_dir / "split.csv", part="val", out=targets, progress=False)
    cfg.train.distill_targets, cfg.out = str(targets), str(tmp_path / "student")
    with pytest.raises(ConfigError, match="have no soft target"):
        train_run(cfg, progress=False)


def test_cross_fitted_targets_are_the_inner_folds_out_of_fold_predictions(teacher_run, synth_small, tmp_path,
                                                                           capsys):
    """`teach --from-cv`: every training row of the split scored once, by the inner-fold model
    that did not train on it; a student trains on them; an unfinished fold is refused."""
    from dermfuse.runs.holdout import train_run

    cfg, res = teacher_run
    split = res.run_dir / "split.csv"
    cv_dir = tmp_path / "inner"
    code = main(["-q", "cv", str(synth_small), "--models", "ft_multicnn", "--folds", "2", "--image-size", "32",
                 "--epochs", "1", "--no-pretrained", "--set", "train.max_steps_per_epoch=2",
                 "--split-file", str(split), "--part", "train", "--out", str(cv_dir)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    targets = tmp_path / "oof.csv"
    code = main(["-q", "teach", "--from-cv", str(cv_dir / "ft_multicnn"), "--out", str(targets)])
    err = capsys.readouterr().err
    assert code == 0 and "out-of-fold predictions" in err and "part(s) train of" in err, err

    got = pd.read_csv(targets, dtype={"image_id": str}).set_index("image_id")
    train_ids = set(pd.read_csv(split, dtype={"image_id": str}).query("part == 'train'")["image_id"])
    assert set(got.index) == train_ids and len(got) == len(train_ids)
    for k in (0, 1):  # each row's target is its own fold's out-of-fold prediction, unchanged
        fold = pd.read_csv(cv_dir / "ft_multicnn" / f"fold{k}" / "predictions.csv", dtype={"image_id": str})
        cols = [c for c in fold.columns if c.startswith("p_")]
        assert (got.loc[fold["image_id"], "fold"] == k).all()
        np.testing.assert_allclose(got.loc[fold["image_id"], cols].to_numpy(),
                                   fold[cols].to_numpy() / fold[cols].to_numpy().sum(1, keepdims=True), rtol=1e-6)
        assert (got.loc[fold["image_id"], "label"].to_numpy() == fold["label"].to_numpy()).all()

    cfg.train.distill_targets, cfg.out = str(targets), str(tmp_path / "student")
    assert train_run(cfg, progress=False).metrics["n_images"] > 0

    (cv_dir / "ft_multicnn" / "fold1" / "DONE").unlink()
    code = main(["-q", "teach", "--from-cv", str(cv_dir / "ft_multicnn"), "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "fold(s) [1]" in err and "not finished" in err and not (tmp_path / "x.csv").exists(), err
    plan = json.loads((cv_dir / "plan.json").read_text())
    (cv_dir / "plan.json").write_text(json.dumps({**plan, "rows": None}))  # a cv over every row
    (cv_dir / "ft_multicnn" / "fold1" / "DONE").write_text("{}")
    code = main(["-q", "teach", "--from-cv", str(cv_dir / "ft_multicnn"), "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "cv run over every row" in err and not (tmp_path / "x.csv").exists(), err
    for bad in (["teach", "--out", "t.csv"],  # neither source
                ["teach", str(synth_small), "--teacher", str(res.bundle), "--from-cv", str(cv_dir), "--out", "t.csv"]):
        code = main(["-q", *bad])
        assert code == 2 and "either --teacher" in capsys.readouterr().err
