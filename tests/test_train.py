"""dermfuse.training.loop: learning, class balance, early stopping, kill-and-resume, DDP; test-row scoring.

Tiny CPU-only data: 16x16 images whose class is their dominant colour channel.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dermfuse.config import TrainConfig
from dermfuse.errors import ConfigError
from dermfuse.runs.variant import score
from dermfuse.training.loop import ArrayDataset, EpochSampler, class_weights, epoch_indices, fit

CLASSES = ["red", "green", "blue"]
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: cheap on a shared CPU, and bitwise-repeatable across processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_task(n: int, seed: int, size: int = 16, meta_dim: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images uint8 (n, size, size, 3) whose brightest channel is the label; noise metadata."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 90, size=(n, size, size, 3))
    images[np.arange(n), :, :, labels] += 120
    meta = rng.normal(size=(n, meta_dim)).astype(np.float32)
    return images.astype(np.uint8), meta, labels.astype(np.int64)


class TinyNet(nn.Module):
    """1x1 conv + global average pool (so flip/transpose invariant) + batch norm + metadata
    -> logits (B, 3)."""

    def __init__(self, meta_dim: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=1)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8 + meta_dim, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = self.norm(torch.relu(self.conv(image * 4 - 2)).mean(dim=(2, 3)))  # (B, 8)
        return self.head(self.drop(torch.cat([x, meta], dim=1)))  # (B, 3)


def random_flip(image: torch.Tensor) -> torch.Tensor:
    """A transform that draws from torch's global RNG, as the real augmentation does."""
    return image.flip(-1) if torch.rand(1).item() < 0.5 else image


class LoggedDataset(ArrayDataset):
    """Appends every training index it serves to a text file (one per line), optionally slowly."""

    def __init__(self, *arrays, log: str | Path, delay: float = 0.0, **kw) -> None:
        super().__init__(*arrays, **kw)
        self.log, self.delay = Path(log), delay

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        with open(self.log, "a") as f:
            f.write(f"{i}\n")
        return super().__getitem__(i)


def _lines(path: Path) -> list[int]:
    return [int(s) for s in path.read_text().split()] if path.exists() else []


def _strip_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --- (1) it learns ------------------------------------------------------------------------


def test_fit_learns_colour_task_and_writes_history(tmp_path, capsys):
    train, val = ArrayDataset(*make_task(48, seed=0)), ArrayDataset(*make_task(24, seed=1))
    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.05, schedule="cosine", warmup_epochs=1, augment=True,
                      early_stopping="none", device="cpu")
    res = fit(model, train, val, cfg, CLASSES, run_dir=tmp_path, progress=True)

    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]  # as the bar shows them: "epoch 1/4"
    assert set(res.history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                   "val_balanced_accuracy", "lr", "seconds"}
    assert res.history[-1]["val_acc"] >= 0.8  # chance is 1/3
    assert res.history[-1]["val_balanced_accuracy"] >= 0.8
    assert res.best_epoch == 4 and not res.stopped_early
    assert json.loads((tmp_path / "history.json").read_text()) == res.history
    assert (tmp_path / "checkpoint.pt").exists() and not list(tmp_path.glob("*.tmp"))
    out = capsys.readouterr().err
    assert sum("train loss" in line for line in out.splitlines()) == 4 and "epoch 4/4" in out


def test_epochs_count_from_one_in_history_best_epoch_bar_and_cv_curves(tmp_path, capsys):
    from dermfuse.runs.cv_html import _mean_history
    from dermfuse.training.loop import best_epoch_of, one_based_history

    train, val = ArrayDataset(*make_task(24, seed=0)), ArrayDataset(*make_task(12, seed=1))
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, augment=False, early_stopping="balanced_accuracy",
                      patience=5, device="cpu")
    res = fit(TinyNet(), train, val, cfg, CLASSES, run_dir=tmp_path, progress=True)
    epochs = [r["epoch"] for r in res.history]
    assert epochs == [1, 2]
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1, 2]
    assert res.best_epoch in (1, 2) and res.history[res.best_epoch - 1]["val_balanced_accuracy"] == res.best_score
    err = capsys.readouterr().err
    assert "epoch 1/2  train loss" in err and "epoch 2/2  train loss" in err and "epoch 0/" not in err
    # the cross-validation curves number the same epochs the same way
    assert [r["epoch"] for r in _mean_history([res.history, res.history[:1]])] == epochs
    # files from when epochs counted from 0 read with the same numbers
    old = [{**r, "epoch": r["epoch"] - 1} for r in res.history]
    assert one_based_history(old) == res.history and one_based_history(res.history) == res.history
    assert best_epoch_of({"best_epoch": 0}) == 1 and best_epoch_of({"best_epoch": 1, "epoch_base": 1}) == 1


class CountingBatchAugmentation:
    """Stands in for dermfuse.training.loop.BatchAugmentation: the real one, counting its calls and
    noting the seed its generator was last set to."""

    calls = 0
    seeds: list[int] = []

    def __init__(self, strength: float = 1.0) -> None:
        from dermfuse.preprocess import BatchAugmentation
        self.inner = BatchAugmentation(strength=strength)

    def __call__(self, images, generator=None):
        type(self).calls += 1
        if not type(self).seeds or type(self).seeds[-1] != generator.initial_seed():
            type(self).seeds.append(generator.initial_seed())
        assert images.dtype == torch.uint8 and images.ndim == 4  # augmented after the copy, before to_input
        return self.inner(images, generator)


class BlankingBatchAugmentation(CountingBatchAugmentation):
    """Returns black images: training on its output cannot learn the colour task."""

    def __call__(self, images, generator=None):
        return torch.zeros_like(super().__call__(images, generator))


@pytest.mark.parametrize("augment_on, per_batch", [("device", True), ("workers", False), ("auto", False)])
def test_augmentation_runs_per_batch_on_the_device_only_when_asked(monkeypatch, augment_on, per_batch):
    """'device' augments each batch on the training device (CPU here), repeatably under a
    seed; 'workers', and 'auto' off CUDA, augment per image in the loader."""
    monkeypatch.setattr("dermfuse.training.loop.BatchAugmentation", CountingBatchAugmentation)
    train, val = ArrayDataset(*make_task(48, seed=0)), ArrayDataset(*make_task(24, seed=1))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, augment=True, augment_on=augment_on,
                      early_stopping="none", device="cpu")
    runs = []
    for _ in range(2):
        CountingBatchAugmentation.calls, CountingBatchAugmentation.seeds = 0, []
        torch.manual_seed(0)
        model = TinyNet()
        runs.append((fit(model, train, val, cfg, CLASSES, progress=False), model))
        assert CountingBatchAugmentation.calls == (3 * 6 if per_batch else 0)  # 3 epochs x 6 batches
    (a, model_a), (b, model_b) = runs
    assert _strip_seconds(a.history) == _strip_seconds(b.history)
    assert all(torch.equal(x, y) for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert a.history[-1]["val_balanced_accuracy"] >= 0.8  # still learns the colour task
    if per_batch:  # reseeded every epoch from (seed, epoch, rank): a resumed epoch draws the same
        assert CountingBatchAugmentation.seeds == [
            int(np.random.SeedSequence([cfg.init_seed, epoch, 0, 1]).generate_state(1)[0]) for epoch in range(3)]
        monkeypatch.setattr("dermfuse.training.loop.BatchAugmentation", BlankingBatchAugmentation)
        torch.manual_seed(0)
        blank = fit(TinyNet(), train, val, cfg, CLASSES, progress=False)  # the model trains on what it returns
        assert blank.history[-1]["val_balanced_accuracy"] < 0.6


def test_augment_on_auto_means_the_device_on_cuda():
    from dermfuse.training.loop import _augment_on_device
    square = ArrayDataset(*make_task(6, seed=0))
    images, meta, labels = make_task(6, seed=0)
    wide = ArrayDataset(np.ascontiguousarray(np.concatenate([images, images], axis=2)), meta, labels)
    auto = TrainConfig(augment_on="auto")
    assert _augment_on_device(auto, torch.device("cuda"), square)
    assert _augment_on_device(auto, torch.device("cuda"), wide)  # the batch recipe skips the transpose there
    assert not _augment_on_device(auto, torch.device("cpu"), square)
    assert not _augment_on_device(TrainConfig(augment_on="workers"), torch.device("cuda"), square)
    assert _augment_on_device(TrainConfig(augment_on="device"), torch.device("cpu"), square)


def test_augment_on_is_checked():
    train = ArrayDataset(*make_task(12, seed=0))
    with pytest.raises(ConfigError, match="augment_on"):
        fit(TinyNet(), train, None, TrainConfig(epochs=1, augment_on="gpu", device="cpu"), CLASSES, progress=False)
    images, meta, labels = make_task(12, seed=0)
    wide = ArrayDataset(np.ascontiguousarray(np.concatenate([images, images], axis=2)), meta, labels)  # 16 x 32
    done = fit(TinyNet(), wide, None, TrainConfig(epochs=1, batch_size=4, augment_on="device", device="cpu"),
               CLASSES, progress=False)  # a non-square batch augments on the device too
    assert len(done.history) == 1


def test_lr_schedules_follow_warmup_then_cosine_or_plateau():
    train = ArrayDataset(*make_task(12, seed=0))
    cfg = TrainConfig(epochs=5, batch_size=4, lr=0.3, schedule="cosine", warmup_epochs=2, augment=False,
                      device="cpu", max_steps_per_epoch=1)
    lrs = [r["lr"] for r in fit(TinyNet(), train, None, cfg, CLASSES, progress=False).history]
    cosine = [0.1, 0.2, 0.3, 0.3 * 0.5 * (1 + math.cos(math.pi / 3)), 0.3 * 0.5 * (1 + math.cos(2 * math.pi / 3))]
    assert lrs == pytest.approx(cosine)
    cfg.schedule = "plateau"
    lrs = [r["lr"] for r in fit(TinyNet(), train, None, cfg, CLASSES, progress=False).history]
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3]) and all(lr <= 0.3 for lr in lrs)


# --- (2) class balance --------------------------------------------------------------------


def test_balance_helpers_give_expected_class_counts_and_weights():
    labels = np.array([0] * 20 + [1] * 5 + [2] * 10)

    w = class_weights(labels, num_classes=4).numpy()  # class 3 absent
    assert w[3] == 0 and w[:3].mean() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(4.0) and w[2] / w[0] == pytest.approx(2.0)

    perm = epoch_indices(labels, "none", seed=0, epoch=0)
    assert sorted(perm) == list(range(35))
    assert np.array_equal(perm, epoch_indices(labels, "weighted-loss", seed=0, epoch=0))
    assert not np.array_equal(perm, epoch_indices(labels, "none", seed=0, epoch=1))

    for epoch in range(3):
        under = epoch_indices(labels, "undersample", seed=0, epoch=epoch)
        assert len(under) == 15 and len(set(under)) == 15
        assert np.bincount(labels[under]).tolist() == [5, 5, 5]
    assert set(epoch_indices(labels, "undersample", 0, 0)) != set(epoch_indices(labels, "undersample", 0, 1))

    over = np.concatenate([epoch_indices(labels, "oversample", seed=0, epoch=e) for e in range(60)])
    assert len(over) == 60 * 35
    share = np.bincount(labels[over]) / len(over)
    assert share == pytest.approx([1 / 3] * 3, abs=0.03)

    for mode, length in [("none", 35), ("oversample", 35), ("undersample", 15)]:
        shards = [EpochSampler(labels, mode, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
        for s in shards:
            s.set_epoch(4)
        a, b = (list(s) for s in shards)
        assert len(a) == len(b) == len(shards[0]) == math.ceil(length / 2)
        rows = np.resize(epoch_indices(labels, mode, seed=0, epoch=4), 2 * len(a))
        assert a == rows[0::2].tolist() and b == rows[1::2].tolist()


# --- (3) early stopping -------------------------------------------------------------------


def test_early_stopping_stops_and_restores_best_weights():
    train = ArrayDataset(*make_task(48, seed=0))
    images, meta, labels = make_task(24, seed=1)
    val = ArrayDataset(images, meta, (labels + 1) % 3)  # learning the task makes val loss worse
    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(epochs=15, batch_size=8, lr=0.05, early_stopping="loss", patience=2, augment=False,
                      balance="none", device="cpu")
    res = fit(model, train, val, cfg, CLASSES, progress=False)

    losses = [r["val_loss"] for r in res.history]
    assert res.stopped_early and len(losses) == res.best_epoch + cfg.patience < cfg.epochs
    assert res.best_epoch == int(np.argmin(losses)) + 1 and res.best_score == losses[res.best_epoch - 1]
    proba = score(model, CLASSES, None, val.images, val.meta, tta=False)
    restored_loss = float(-np.log(proba[np.arange(len(proba)), val.labels]).mean())
    assert restored_loss == pytest.approx(losses[res.best_epoch - 1], rel=1e-5)
    assert restored_loss != pytest.approx(losses[-1], rel=1e-3)


# --- (4) kill and resume ------------------------------------------------------------------

RESUME_CFG = dict(epochs=4, batch_size=8, lr=0.02, schedule="cosine", warmup_epochs=1, balance="oversample",
                  early_stopping="loss", patience=10, augment=False, device="cpu", init_seed=7)
N_RESUME = 32


def run_resumable(run_dir: str | Path, log: str | Path | None = None, delay: float = 0.0,
                  resume: bool = False):
    """The run the resume test interrupts: dropout, a random transform and oversampling all
    draw random numbers, so an exact resume needs every RNG restored."""
    images, meta, labels = make_task(N_RESUME, seed=0)
    if log is None:
        train = ArrayDataset(images, meta, labels, transform=random_flip)
    else:
        train = LoggedDataset(images, meta, labels, transform=random_flip, log=log, delay=delay)
    val = ArrayDataset(*make_task(12, seed=1))
    torch.manual_seed(0)
    model = TinyNet(dropout=0.3)
    res = fit(model, train, val, TrainConfig(**RESUME_CFG), CLASSES, run_dir=Path(run_dir), resume=resume,
              progress=False)
    return model, res


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "seen.txt"
    script = (f"import sys, torch; torch.set_num_threads(1); sys.path.insert(0, {str(TESTS)!r}); "
              f"import test_train as t; t.run_resumable({str(run_dir)!r}, log={str(log)!r}, delay=0.03)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while True:  # kill once >= 1 epoch is saved and the next one is a few items in
        assert proc.poll() is None, f"training finished or failed before the kill:\n{proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "no complete epoch within 90 s"
        history_file = run_dir / "history.json"
        done = len(json.loads(history_file.read_text())) if history_file.exists() else 0
        seen = len(_lines(log))
        if done >= 1 and done * N_RESUME + 2 <= seen <= (done + 1) * N_RESUME - 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_history = json.loads((run_dir / "history.json").read_text())
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == len(killed_history) == done  # only the epoch in flight is lost
    assert done < RESUME_CFG["epochs"]

    resumed_log = tmp_path / "resumed.txt"
    model, res = run_resumable(run_dir, log=resumed_log, resume=True)
    assert [r["epoch"] for r in res.history] == list(range(1, RESUME_CFG["epochs"] + 1))
    assert res.history[:done] == killed_history
    assert len(_lines(resumed_log)) == (RESUME_CFG["epochs"] - done) * N_RESUME  # no saved epoch redone

    ref_model, ref = run_resumable(tmp_path / "reference")  # the same run, never interrupted
    assert _strip_seconds(res.history) == _strip_seconds(ref.history)
    assert res.best_epoch == ref.best_epoch
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), name

    again_model, again = run_resumable(run_dir, log=resumed_log, resume=True)  # a finished run: nothing to do
    assert again.history == res.history and len(_lines(resumed_log)) == (RESUME_CFG["epochs"] - done) * N_RESUME
    assert all(torch.equal(a, b) for a, b in zip(again_model.state_dict().values(), model.state_dict().values()))


# --- (5) DDP ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from dermfuse.training.loop import dist_info, is_main_process

    images, meta, labels = make_task(24, seed=0)
    train = LoggedDataset(images, meta, labels, log=root / f"seen{rank}.txt")
    val = ArrayDataset(*make_task(10, seed=1))
    torch.manual_seed(rank)  # different initial weights per rank: DDP must start from rank 0's
    model = TinyNet()
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.05, augment=False, device="cpu", balance="weighted-loss")
    res = fit(model, train, val, cfg, CLASSES, run_dir=root / f"run{rank}", progress=False)
    (root / f"result{rank}.json").write_text(json.dumps({
        "history": _strip_seconds(res.history), "dist_info": list(dist_info()), "main": is_main_process(),
        "weights": [v.double().sum().item() for v in model.state_dict().values()]}))
    dist.destroy_process_group()


def test_ddp_two_gloo_ranks_train_disjoint_shards_and_only_rank0_writes(tmp_path):
    workers = torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=False)
    # a hang guard, not a speed check: generous, since a loaded 2-core machine (a training
    # run beside the suite) once took more than 150 s
    deadline = time.monotonic() + 600
    while not workers.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail("the two DDP workers did not finish within 600 s (hung?)")

    seen = [_lines(tmp_path / f"seen{r}.txt") for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2 * 12  # two epochs of 24 rows over 2 ranks
    labels = make_task(24, seed=0)[2]
    for epoch in (0, 1):
        a, b = (s[epoch * 12:(epoch + 1) * 12] for s in seen)
        assert not set(a) & set(b) and sorted(a + b) == list(range(24))
        rows = epoch_indices(labels, "weighted-loss", seed=0, epoch=epoch)
        assert a == rows[0::2].tolist() and b == rows[1::2].tolist()
    assert seen[0][:12] != seen[0][12:]  # set_epoch reshuffles

    assert sorted(p.name for p in (tmp_path / "run0").iterdir()) == ["checkpoint.pt", "history.json"]
    assert not (tmp_path / "run1").exists()
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0["dist_info"] == [0, 2, 0] and r1["dist_info"] == [1, 2, 1]
    assert r0["main"] and not r1["main"]
    assert r0["history"] == r1["history"] and len(r0["history"]) == 2  # metrics reduced over ranks
    assert r0["weights"] == r1["weights"]  # averaged gradients, rank 0's BatchNorm statistics
    ckpt = torch.load(tmp_path / "run0" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2


def test_rank_seeds_of_consecutive_ensemble_seeds_never_collide():
    from dermfuse.training.loop import rank_seed

    assert [rank_seed(s, 0) for s in (0, 7, 123)] == [0, 7, 123]  # one process: the seed itself
    grid = {(seed, rank): rank_seed(seed, rank) for seed in range(40) for rank in range(8)}
    assert len(set(grid.values())) == len(grid)  # member k on rank r never reuses another's stream
    assert rank_seed(3, 2) == int(np.random.SeedSequence([3, 2]).generate_state(1)[0])


def test_fit_seeds_its_rank_with_rank_seed(monkeypatch):
    import dermfuse.training.loop as train_mod

    class Seeded(Exception):
        pass

    def stop_after_seeding(seed: int) -> None:
        seeds.append(seed)
        raise Seeded  # what comes next needs a process group

    seeds: list[int] = []
    monkeypatch.setattr(train_mod, "_seed_everything", stop_after_seeding)
    monkeypatch.setattr(train_mod, "init_distributed", lambda device: (1, 2))  # as rank 1 of 2 sees it
    images, meta, labels = make_task(16, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=8, augment=False, device="cpu", init_seed=5)
    with pytest.raises(Seeded):
        fit(TinyNet(), ArrayDataset(images, meta, labels), None, cfg, CLASSES, progress=False)
    assert seeds == [train_mod.rank_seed(5, 1)] and seeds[0] != 5 + 1


# --- (6) scoring test rows: dermfuse.runs.variant.score, the inference engine ---------------


class PositionNet(nn.Module):
    """A linear layer over every pixel: flipping or transposing the image changes its
    logits (unlike TinyNet), so averaging over test-time views is visible."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * h * w, 3)
        self.calls = 0

    def forward(self, image, meta):
        self.calls += 1
        return self.lin(image.flatten(1)) * 5


def _softmax_by_hand(model: nn.Module, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(x, None).softmax(1).numpy()


def test_scoring_averages_the_test_time_views_of_a_position_sensitive_net():
    images, _, _ = make_task(10, seed=0)
    no_meta = np.zeros((10, 0), np.float32)
    torch.manual_seed(0)
    model = PositionNet(16, 16)
    p = score(model, CLASSES, None, images, no_meta, tta=False)
    assert p.shape == (10, 3) and p.dtype == np.float32 and model.calls == 1
    np.testing.assert_allclose(p, _softmax_by_hand(model, images), atol=1e-6)

    model.calls = 0
    p_tta = score(model, CLASSES, None, images, no_meta, tta=True)
    assert model.calls == 5  # one forward pass per view: identity, h-, v-, hv-flip, transpose
    views = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1], images.transpose(0, 2, 1, 3)]
    want = np.mean([_softmax_by_hand(model, np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(p_tta, want, atol=1e-6)
    assert np.abs(p_tta - p).max() > 1e-3  # the views differ for this net, so the test can fail

    wide = np.ascontiguousarray(images[:, :12])  # (10, 12, 16, 3): no transpose view
    model = PositionNet(12, 16)
    p_wide = score(model, CLASSES, None, wide, no_meta, tta=True)
    want = np.mean([_softmax_by_hand(model, np.ascontiguousarray(v))
                    for v in (wide, wide[:, :, ::-1], wide[:, ::-1], wide[:, ::-1, ::-1])], axis=0)
    np.testing.assert_allclose(p_wide, want, atol=1e-6)
    assert not model.training


def test_array_dataset_items_and_memmap(tmp_path):
    images, meta, labels = make_task(6, seed=0)
    mm = np.memmap(tmp_path / "img.u8", dtype=np.uint8, mode="w+", shape=images.shape)
    mm[:] = images
    mm.flush()
    ro = np.memmap(tmp_path / "img.u8", dtype=np.uint8, mode="r", shape=images.shape)
    ds = ArrayDataset(ro, meta, labels)
    img, m, y = ds[4]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
    assert torch.equal(img, torch.from_numpy(images[4]).permute(2, 0, 1))
    assert m.shape == (2,) and y == labels[4] and isinstance(ds.images, np.memmap)
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(images, meta, labels[:3])


# --- memory format ------------------------------------------------------------------------


class TinyConvNet(nn.Module):
    """3x3 conv, depthwise 3x3, 1x1 (no bias before a batch norm, as in the real backbones),
    each + BN + ReLU, pooled, + metadata -> logits (B, 3)."""

    def __init__(self, meta_dim: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16 + meta_dim, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.features(image * 4 - 2).mean(dim=(2, 3)), meta], dim=1))


def test_channels_last_training_gives_the_same_losses_and_hands_back_a_contiguous_model():
    """train.channels_last (the default, faster on CPU: docs/performance.md) changes the layout,
    not the numbers: the same training and validation losses within 1e-4 either way."""
    train = ArrayDataset(*make_task(32, seed=0))
    val = ArrayDataset(*make_task(16, seed=1))
    runs = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = TinyConvNet()
        seen: list[tuple[bool, bool]] = []  # (input, first conv weight) in channels_last, per forward

        def spy(module, args, model=model, seen=seen):
            w = model.features[0].weight
            seen.append((args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous(),
                         w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()))

        hook = model.register_forward_pre_hook(spy)
        cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, max_steps_per_epoch=3, augment=False, balance="none",
                          early_stopping="none", device="cpu", channels_last=channels_last)
        res = fit(model, train, val, cfg, CLASSES, progress=False)
        hook.remove()
        assert seen and all(s == (channels_last, channels_last) for s in seen)  # training and validation
        assert all(p.is_contiguous() for p in model.parameters())  # bundles and exports see the usual layout
        runs[channels_last] = res.history
    assert TrainConfig().channels_last
    for a, b in zip(runs[False], runs[True], strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (a, b)
    assert runs[False][-1]["train_loss"] < runs[False][0]["train_loss"]  # it learns: the losses compared move


def test_channels_last_step_of_the_lite0_ft_multicnn_is_exact_in_float64():
    """The real path (depthwise and 1x1 convs, batch norm): one training step in float64 gives
    the same loss and gradients in both layouts (float32 differs by rounding only, which a
    random-init Lite0 at 32 px with batch norm over a few images amplifies)."""
    import copy

    from dermfuse.models import create_model

    torch.manual_seed(0)
    ref = create_model("ft_multicnn", 3, meta_dim=2, pretrained=False, input_size=32,
                       image_backbone="efficientnet_lite0", dropout=0.0).double().train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64)
    meta = torch.randn(4, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    grads, losses = [], []
    for channels_last in (False, True):
        model = copy.deepcopy(ref)
        xx = x
        if channels_last:
            model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(xx, meta), y)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], abs=1e-9)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_resume_refuses_another_optimizer_seed_lr_or_weight_decay(tmp_path):
    """A checkpoint's optimizer state fits only the optimizer that wrote it; the error says so
    (rather than a state-dict mismatch, or Adam moments silently read as AdamW's). Its saved
    lr and weight decay would silently win over new ones, so those are refused too."""
    images, meta, labels = make_task(48, seed=3)
    data = ArrayDataset(images, meta, labels)
    cfg = TrainConfig(epochs=1, batch_size=16, augment=False, early_stopping="none")
    fit(TinyNet(), data, None, cfg, CLASSES, run_dir=tmp_path, progress=False)
    cfg.epochs = 2
    for change, match in ((dict(optimizer="adamw"), "train.optimizer=adam"), (dict(init_seed=5), "init seed 0"),
                          (dict(weight_decay=0.1), r"train.weight_decay=0.0, this run asks for 0.1"),
                          (dict(lr=0.5), r"train.lr=0.001, this run asks for 0.5")):
        other = TrainConfig(**{**{k: getattr(cfg, k) for k in ("epochs", "batch_size", "augment", "early_stopping")},
                               **change})
        with pytest.raises(ConfigError, match=match):
            fit(TinyNet(), data, None, other, CLASSES, run_dir=tmp_path, resume=True, progress=False)
    res = fit(TinyNet(), data, None, cfg, CLASSES, run_dir=tmp_path, resume=True, progress=False)
    assert len(res.history) == 2
