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
from dermfuse.training.mixing import BatchMix
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


def test_draws_repeat_for_a_seed_and_differ_across_seeds():
    x, meta, y = _batch()
    mix = BatchMix(3, mixup_alpha=0.2, cutmix_alpha=1.0)
    runs = []
    for seed in (7, 7, 8):
        mix.seed(seed)
        runs.append([mix(x, meta, y)[0] for _ in range(4)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


@pytest.mark.parametrize("kw", [dict(mixup_alpha=-0.1), dict(cutmix_alpha=float("nan")), dict()])
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


def test_mixing_with_soft_targets_is_refused():
    images, meta, labels = make_task(16, seed=0)
    soft = np.full((16, 3), 1 / 3, np.float32)
    with pytest.raises(ConfigError, match="distill_targets"):
        fit(TinyNet(), ArrayDataset(images, meta, labels, soft=soft), None,
            TrainConfig(**{**CFG, "epochs": 1, "mixup_alpha": 0.2}), CLASSES, progress=False)
