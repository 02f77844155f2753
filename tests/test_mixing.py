"""dermfuse.training.mixing and train.mixup_alpha / cutmix_alpha in fit: the mixed batch and
its targets follow the formulas, the draws are reproducible, fit trains on the mixed batches
(the model sees what the mixer made) and a resumed run mixes as an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermfuse.config import TrainConfig
from dermfuse.errors import ConfigError
from dermfuse.training.loop import ArrayDataset, fit
import dermfuse.training.loop as loop_module
from dermfuse.training.mixing import BatchMix, MixedTargetLoss
from test_train import CLASSES, TinyNet, _one_thread, make_task  # noqa: F401 (_one_thread: autouse fixture)

CFG = dict(epochs=3, batch_size=8, lr=0.05, early_stopping="none", augment=False, balance="none",
           device="cpu", channels_last=False, init_seed=3)


def _batch(b: int = 6, h: int = 8, w: int = 10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, h, w, generator=g), torch.randn(b, 2, generator=g), torch.arange(b) % 3


def _perm_and_lam(x, mixed, rows):
    """For a mixup batch: the partner of each row and lam, solved from the mixed images."""
    out = []
    for i in range(len(x)):
        for j in range(len(x)):
            # mixed_i = lam x_i + (1 - lam) x_j  =>  lam = (mixed_i - x_j) / (x_i - x_j)
            d = x[i] - x[j]
            if i == j:
                if torch.allclose(mixed[i], x[i], atol=1e-6):
                    out.append((j, None))
                    break
                continue
            lam = ((mixed[i] - x[j]) * d).sum() / (d * d).sum()
            if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5):
                out.append((j, float(lam)))
                break
    assert len(out) == rows
    return out


def test_mixup_mixes_images_metadata_and_targets_with_one_lambda():
    x, meta, y = _batch()
    mix = BatchMix(3, mixup_alpha=0.4)
    mix.seed(1)
    mx, mm, t = mix(x, meta, y)
    pairs = _perm_and_lam(x, mx, len(x))
    lams = {round(lam, 5) for _, lam in pairs if lam is not None}
    assert len(lams) == 1  # one lam for the batch
    lam = lams.pop()
    assert 0 < lam < 1
    onehot = torch.eye(3)[y]
    for i, (j, _) in enumerate(pairs):
        assert torch.allclose(mm[i], lam * meta[i] + (1 - lam) * meta[j], atol=1e-5)
        assert torch.allclose(t[i], lam * onehot[i] + (1 - lam) * onehot[j], atol=1e-5)
    assert torch.allclose(t.sum(1), torch.ones(len(x)))
    assert sorted(j for j, _ in pairs) == list(range(len(x)))  # a permutation


def test_cutmix_pastes_one_box_and_weighs_targets_by_its_area():
    x, meta, y = _batch()
    mix = BatchMix(3, cutmix_alpha=1.0)
    for seed in range(5):
        mix.seed(seed)
        mx, mm, t = mix(x, meta, y)
        changed = (mx != x).any(dim=(0, 1))  # (H, W): the box, over the batch
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        if len(rows):
            box = np.zeros(changed.shape, bool)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert (changed.numpy() == box).all()  # one rectangle
        lam = 1 - changed.float().mean().item()
        own = (t * torch.eye(3)[y]).sum(1)  # each row's weight on its own label
        partner_same = own > 1 - 1e-6  # rows mixed with an image of their own class
        assert torch.allclose(own[~partner_same], torch.full_like(own[~partner_same], lam), atol=1e-5)
        outside = ~changed
        assert torch.equal(mx[:, :, outside], x[:, :, outside])
        if len(rows):  # each row's box is some row's box, and the rows' boxes are a permutation of them
            box = (slice(None), slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
            src = [next(j for j in range(len(x)) if torch.equal(mx[i][box], x[j][box])) for i in range(len(x))]
            assert sorted(src) == list(range(len(x)))


def test_draws_repeat_for_a_seed_and_differ_across_seeds():
    x, meta, y = _batch()
    mix = BatchMix(3, mixup_alpha=0.2, cutmix_alpha=1.0)
    runs = []
    for seed in (7, 7, 8):
        mix.seed(seed)
        runs.append([mix(x, meta, y)[0] for _ in range(4)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


@pytest.mark.parametrize("kw", [dict(mixup_alpha=-0.1), dict(cutmix_alpha=float("nan")), dict(mixup_alpha=True), dict()])
def test_bad_alphas_are_refused(kw):
    with pytest.raises(ConfigError, match="alpha"):
        BatchMix(3, **kw)


class Spy(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, image, meta):
        if self.training:
            self.seen.append(image.detach().clone())
        return super().forward(image, meta)


def _run(cfg, run_dir=None, resume=False):
    train = ArrayDataset(*make_task(40, seed=0))
    val = ArrayDataset(*make_task(18, seed=1))
    torch.manual_seed(0)
    model = Spy()
    res = fit(model, train, val, TrainConfig(**cfg), CLASSES, run_dir=run_dir, resume=resume, progress=False)
    return model, res


def test_fit_trains_on_mixed_batches():
    plain, plain_res = _run(CFG)
    mixed, mixed_res = _run({**CFG, "mixup_alpha": 0.4})
    # training images are 0..255 uint8 scaled to [0, 1]: unmixed batches hold multiples of 1/255 only
    grid = lambda t: torch.allclose(t * 255, (t * 255).round(), atol=1e-3)  # noqa: E731
    assert all(grid(b) for b in plain.seen)
    assert not all(grid(b) for b in mixed.seen)
    assert [r["train_loss"] for r in mixed_res.history] != [r["train_loss"] for r in plain_res.history]


def test_resume_mixes_as_an_uninterrupted_run(tmp_path):
    cfg = {**CFG, "mixup_alpha": 0.4, "cutmix_alpha": 1.0}
    _run({**cfg, "epochs": 2}, run_dir=tmp_path / "run")
    resumed, res = _run(cfg, run_dir=tmp_path / "run", resume=True)
    straight, _ = _run(cfg)
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_bad_alpha_is_named_before_anything_else():
    images, meta, labels = make_task(16, seed=0)
    soft = np.full((16, 3), 1 / 3, np.float32)
    with pytest.raises(ConfigError, match="train.cutmix_alpha: expected 0"):
        fit(TinyNet(), ArrayDataset(images, meta, labels, soft=soft), None,
            TrainConfig(**{**CFG, "epochs": 1, "cutmix_alpha": -1.0}), CLASSES, progress=False)


def test_mixing_with_soft_targets_is_refused():
    images, meta, labels = make_task(16, seed=0)
    soft = np.full((16, 3), 1 / 3, np.float32)
    with pytest.raises(ConfigError, match="distill_targets"):
        fit(TinyNet(), ArrayDataset(images, meta, labels, soft=soft), None,
            TrainConfig(**{**CFG, "epochs": 1, "mixup_alpha": 0.2}), CLASSES, progress=False)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_mixed_target_loss_is_torchs_cross_entropy_on_one_hot_targets(smoothing, weighted):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(9, 3, generator=g), torch.tensor([0, 1, 2, 2, 2, 1, 0, 2, 2])
    w = torch.tensor([2.0, 0.5, 0.25]) if weighted else None
    want = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)(logits, y)
    got = MixedTargetLoss(w, smoothing)(logits, torch.eye(3)[y])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_mixed_target_loss_weighs_a_mixed_row_by_its_target_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.25, 0.75, 0.0]])
    w = torch.tensor([2.0, 0.5, 1.0])
    logp = torch.log_softmax(logits, 1)[0]
    want = -(2.0 * 0.25 * logp[0] + 0.5 * 0.75 * logp[1]) / (0.25 * 2.0 + 0.75 * 0.5)
    assert MixedTargetLoss(w)(logits, t).item() == pytest.approx(want.item(), rel=1e-6)


def test_fit_hands_the_criterion_the_mixed_distributions(monkeypatch):
    seen = []

    class Spy(MixedTargetLoss):
        def forward(self, logits, targets):
            seen.append(targets.detach().clone())
            return super().forward(logits, targets)

    monkeypatch.setattr(loop_module, "MixedTargetLoss", Spy)
    _run({**CFG, "epochs": 1, "mixup_alpha": 0.4, "balance": "weighted-loss"})
    assert len(seen) == 5 and all(t.shape == (8, 3) for t in seen)
    assert all(torch.allclose(t.sum(1), torch.ones(8)) for t in seen)
    assert any(((t > 0) & (t < 1)).any() for t in seen)  # mixed, not one-hot
