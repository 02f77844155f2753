"""dermfuse.training.ema and train.ema_decay in fit: the average is the warmed-up EMA of the
weights after every step, validation scores it, fit hands it back, resume continues it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dermfuse.config import TrainConfig
from dermfuse.errors import ConfigError
from dermfuse.runs.variant import score
from dermfuse.training.ema import WeightEma
from dermfuse.training.loop import ArrayDataset, fit
from test_train import CLASSES, TinyNet, _one_thread, make_task  # noqa: F401 (_one_thread: autouse fixture)


def hand_ema(snapshots: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The average written out: starts from the weights before the first step, then
    avg = d_t * avg + (1 - d_t) * w_t with d_t = min(decay, (1 + t) / (10 + t)), t = 1, 2, ..."""
    avg = {k: v.double().clone() for k, v in snapshots[0].items()}
    for t, weights in enumerate(snapshots[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        for k, v in weights.items():
            avg[k] = d * avg[k] + (1 - d) * v.double() if v.dtype.is_floating_point else v.clone()
    return avg


def test_weight_ema_is_the_warmed_up_average_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    snapshots = [{k: v.clone() for k, v in model.state_dict().items()}]
    ema = WeightEma(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(2 / 11)  # t = 1: warm-up, well below 0.9
    for _ in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # moves the batch-norm statistics and its step counter
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update(model)
    assert ema.current_decay() == 0.9  # warm-up over after 80 updates
    expected = hand_ema(snapshots, 0.9)
    for k, v in ema.module.state_dict().items():
        assert torch.allclose(v.double(), expected[k].double(), atol=1e-5), k
    assert ema.module.state_dict()["1.num_batches_tracked"] == 100
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightEma(model, 1.0)


CFG = dict(epochs=3, batch_size=8, lr=0.05, early_stopping="none", augment=False, balance="none",
           device="cpu", channels_last=False, init_seed=3)


def _run(cfg: dict, run_dir: Path | None = None, resume: bool = False, record: list | None = None):
    train = ArrayDataset(*make_task(40, seed=0))
    val = ArrayDataset(*make_task(18, seed=1))
    torch.manual_seed(0)
    model = TinyNet()
    handle = None
    if record is not None:  # the raw weights before training and after every optimiser step
        record.append({k: v.clone() for k, v in model.state_dict().items()})
        handle = register_optimizer_step_post_hook(
            lambda *_: record.append({k: v.detach().clone() for k, v in model.state_dict().items()}))
    try:
        res = fit(model, train, val, TrainConfig(**cfg), CLASSES, run_dir=run_dir, resume=resume, progress=False)
    finally:
        if handle is not None:
            handle.remove()
    return model, res, val


def test_fit_validates_and_hands_back_the_average_not_the_raw_weights():
    steps: list[dict[str, torch.Tensor]] = []
    raw, raw_res, val = _run(CFG, record=steps)
    assert len(steps) == 1 + 3 * 5  # 40 images, batch 8: 5 steps an epoch
    model, res, _ = _run({**CFG, "ema_decay": 0.8})
    # the average does not change training: the same steps, the same training losses
    assert [r["train_loss"] for r in res.history] == [r["train_loss"] for r in raw_res.history]
    expected = hand_ema(steps, 0.8)
    for k, v in model.state_dict().items():
        assert torch.allclose(v.double(), expected[k].double(), atol=1e-5), k
    assert any(not torch.allclose(a, b) for a, b in zip(model.state_dict().values(), raw.state_dict().values()))
    # each epoch's validation scored the average: the last row is the returned model's loss
    proba = score(model, CLASSES, None, val.images, val.meta, tta=False)
    loss = float(-np.log(proba[np.arange(len(proba)), val.labels]).mean())
    assert res.history[-1]["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert res.history[-1]["val_loss"] != pytest.approx(raw_res.history[-1]["val_loss"], rel=1e-4)


def test_early_stopping_keeps_the_best_epochs_average():
    cfg = {**CFG, "epochs": 4, "early_stopping": "loss", "patience": 10, "ema_decay": 0.8}
    model, res, val = _run(cfg)
    proba = score(model, CLASSES, None, val.images, val.meta, tta=False)
    loss = float(-np.log(proba[np.arange(len(proba)), val.labels]).mean())
    assert loss == pytest.approx(res.history[res.best_epoch - 1]["val_loss"], rel=1e-5)


def test_resume_continues_the_average_exactly(tmp_path):
    cfg = {**CFG, "ema_decay": 0.8}
    _run({**cfg, "epochs": 2}, run_dir=tmp_path / "run")
    resumed, res, _ = _run(cfg, run_dir=tmp_path / "run", resume=True)
    straight, _, _ = _run(cfg)
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), k
    _run({**CFG, "epochs": 1}, run_dir=tmp_path / "plain")  # a checkpoint without an average
    with pytest.raises(ConfigError, match="ema_decay"):
        _run({**cfg, "epochs": 2}, run_dir=tmp_path / "plain", resume=True)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ConfigError, match="train.ema_decay"):
        _run({**CFG, "epochs": 1, "ema_decay": decay})
