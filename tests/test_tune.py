"""dermfuse tune: a search on real study databases (SQLite in the run folder, PostgreSQL where
$DERMFUSE_TEST_POSTGRES names one), worker processes that share a study, a killed worker,
the per-epoch pruner, and a best config that `dermfuse train` takes unchanged.

Tiny SYNTHETIC data, 64 px, one epoch of two steps per trial."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

optuna = pytest.importorskip("optuna")

from dermfuse.cli import main  # noqa: E402
from dermfuse.config import config_to_dict, load_config  # noqa: E402
from dermfuse.errors import ConfigError  # noqa: E402
from dermfuse.runs.tune import default_storage, load_space, mask_url  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ["--epochs", "1", "--image-size", "64", "--set", "train.max_steps_per_epoch=2", "--set", "train.batch_size=8"]
PG_ENV = "DERMFUSE_TEST_POSTGRES"  # e.g. postgresql://dermfuse:dermfuse@127.0.0.1:5432/dermfuse_test (.ci/run)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from dermfuse.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("tune") / "data", n=96, seed=3)


def _space(tmp_path: Path, **pruner) -> Path:
    """A small space (lr and dropout) with a fast sampler; pruner as given (default none)."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "sampler": {"n_startup_trials": 2},
        "pruner": pruner or {"name": "none"},
        "params": {"train.lr": {"float": [1e-4, 1e-2], "log": True}, "model.dropout": {"float": [0.0, 0.5]}},
    }))
    return path


def _worker(data: Path, out: Path, trials: int, *extra: str) -> subprocess.Popen:
    """One `dermfuse tune` process, as a user starts it on each machine."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dermfuse", "-q", "tune", str(data), "--trials", str(trials), "--out", str(out),
           *FAST, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{stderr[-3000:]}"


def _trials(storage: str, name: str = "dermfuse") -> list:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _two_workers_share_one_study(data: Path, tmp_path: Path, storage: str | None, study: str) -> None:
    out = tmp_path / "tune"
    extra = ["--space", str(_space(tmp_path)), "--study", study] + (["--storage", storage] if storage else [])
    workers = [_worker(data, out, 2, *extra) for _ in range(2)]
    for w in workers:
        _finish(w)
    trials = _trials(storage or default_storage(out), study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # nothing failed, nothing lost
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # no duplicate
    by_worker = pd.Series([t.user_attrs["worker"] for t in trials]).value_counts()
    assert sorted(by_worker.tolist()) == [2, 2]  # each worker finished its own two trials
    assert set(by_worker.index) == {f"{socket.gethostname()}:{w.pid}" for w in workers}
    assert all(0.0 <= t.value <= 1.0 and t.user_attrs["epochs_run"] == 1 for t in trials)
    report = pd.read_csv(out / "trials.csv")
    assert len(report) >= 2  # the report of whichever worker ended last


def test_two_workers_share_a_sqlite_study(data, tmp_path):
    _two_workers_share_one_study(data, tmp_path, None, "dermfuse")
    assert (tmp_path / "tune" / "study.db").is_file()


def _postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}=postgresql://user:pass@127.0.0.1/db (.ci/run does)")
    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2-binary (the tune extra)")
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as e:  # server down, wrong password, no such database
        pytest.skip(f"PostgreSQL at {mask_url(url)} is not reachable: {type(e).__name__}: {str(e)[:200]}")
    return url


def test_two_workers_share_a_postgresql_study(data, tmp_path):
    url = _postgres_url()
    _two_workers_share_one_study(data, tmp_path, url, f"test-{uuid.uuid4().hex[:10]}")


def _wait_inside_second_trial(worker: subprocess.Popen, storage: str) -> None:
    """Until the worker has finished one trial and is running the next."""
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = _trials(storage)
        except Exception:  # the study does not exist yet
            continue
        states = [t.state.name for t in trials]
        if states.count("COMPLETE") >= 1 and states[-1] == "RUNNING" and trials[-1].user_attrs.get("worker"):
            return
    worker.kill()
    pytest.fail(f"the worker did not start a second trial in time: {worker.stderr.read()[-2000:]}")


def test_killed_worker_loses_only_its_running_trial(data, tmp_path):
    out, storage = tmp_path / "tune", default_storage(tmp_path / "tune")
    # trials of several epochs, so that the kill lands inside one
    slow = ["--space", str(_space(tmp_path)), "--epochs", "4", "--set", "train.early_stopping=none"]
    worker = _worker(data, out, 50, *slow)
    _wait_inside_second_trial(worker, storage)
    worker.send_signal(signal.SIGKILL)  # no clean-up at all: as a machine that loses power
    worker.wait()
    before = [t.state.name for t in _trials(storage)]
    done = before.count("COMPLETE")
    assert before.count("RUNNING") == 1
    _finish(_worker(data, out, 1, *slow))  # resume: the next worker on this host
    after = [t.state.name for t in _trials(storage)]
    assert after.count("FAIL") == 1  # the trial that was running when the worker died ...
    assert after.count("COMPLETE") == done + 1  # ... is the only one lost; the finished ones stay
    assert after.count("RUNNING") == 0 and len(after) == len(before) + 1


def test_terminated_worker_marks_its_running_trial_fail_before_it_exits(data, tmp_path):
    out, storage = tmp_path / "tune", default_storage(tmp_path / "tune")
    slow = ["--space", str(_space(tmp_path)), "--epochs", "4", "--set", "train.early_stopping=none"]
    worker = _worker(data, out, 50, *slow)
    _wait_inside_second_trial(worker, storage)
    worker.send_signal(signal.SIGTERM)  # `kill PID`, or a scheduler's stop
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 130, stderr[-2000:]  # as after Ctrl-C
    states = [t.state.name for t in _trials(storage)]
    assert states[-1] == "FAIL" and states.count("RUNNING") == 0  # no next worker needed to clean up
    assert states.count("COMPLETE") >= 1


def test_tune_two_trials_then_train_from_the_best_config(data, tmp_path):
    out = tmp_path / "tune"
    assert main(["-q", "tune", str(data), "--trials", "2", "--out", str(out), "--space", str(_space(tmp_path)),
                 *FAST]) == 0
    trials = _trials(default_storage(out))
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    best = max(trials, key=lambda t: t.value)
    best_cfg = load_config(out / "best_config.yaml")
    assert best_cfg.train.lr == best.params["train.lr"] and best_cfg.model.dropout == best.params["model.dropout"]
    base = load_config(out / "base_config.yaml")
    changed = {f"{s}.{k}" for s, sec in config_to_dict(base).items() if isinstance(sec, dict)
               for k, v in sec.items() if config_to_dict(best_cfg)[s][k] != v}
    assert changed <= {"train.lr", "model.dropout"}  # the best config is the base plus the best values
    assert (out / "plots" / "optimization_history.png").stat().st_size > 0
    assert (out / "plots" / "param_importances.png").stat().st_size > 0
    table = pd.read_csv(out / "trials.csv")
    assert table["number"].tolist() == [0, 1] and "param train.lr" in table and (out / "trials.html").is_file()

    run = tmp_path / "train"
    assert main(["-q", "train", str(data), "--config", str(out / "best_config.yaml"), "--out", str(run)]) == 0
    assert (run / "bundle" / "bundle.json").is_file()
    assert load_config(run / "config.yaml").train.lr == best.params["train.lr"]
    # the search saw none of the rows this run holds out, and scored on its validation rows
    tuned, trained = pd.read_csv(out / "split.csv"), pd.read_csv(run / "split.csv")
    assert tuned.set_index("image_id")["part"].equals(trained.set_index("image_id")["part"])
    assert (tuned["part"] == "test").sum() > 0


def test_threshold_pruner_stops_every_trial_after_its_first_epoch(data, tmp_path):
    out = tmp_path / "tune"
    space = _space(tmp_path, name="threshold", lower=1.01, n_warmup_steps=0)  # no score reaches 1.01
    assert main(["-q", "tune", str(data), "--trials", "2", "--out", str(out), "--space", str(space),
                 *FAST, "--epochs", "3"]) == 0
    trials = _trials(default_storage(out))
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(t.user_attrs["epochs_run"] == 1 and list(t.intermediate_values) == [1] for t in trials)
    assert not (out / "best_config.yaml").exists()  # no completed trial, no best


def test_fit_calls_on_epoch_once_per_epoch_and_stops_on_its_exception():
    import numpy as np

    from dermfuse.config import TrainConfig
    from dermfuse.training.loop import ArrayDataset, fit
    from dermfuse.models import create_model

    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), np.zeros((16, 0), np.float32),
                      rng.integers(0, 2, 16))
    model = create_model("cnn", num_classes=2, input_size=16)
    rows = []
    cfg = TrainConfig(epochs=3, batch_size=8, augment=False, device="cpu", early_stopping="none")
    fit(model, ds, ds, cfg, ["a", "b"], progress=False, on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_balanced_accuracy" in r for r in rows)

    class Stop(Exception):
        pass

    def stop_at_second(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(create_model("cnn", num_classes=2, input_size=16), ds, ds, cfg, ["a", "b"], progress=False,
            on_epoch=stop_at_second)


def test_a_worker_with_another_config_cannot_join_the_study(data, tmp_path):
    out, space = tmp_path / "tune", str(_space(tmp_path))
    assert main(["-q", "tune", str(data), "--trials", "0", "--out", str(out), "--space", space, *FAST]) == 0
    assert main(["-q", "tune", str(data), "--trials", "0", "--out", str(out), "--space", space, *FAST,
                 "--set", "train.balance=none"]) == 2  # error: ... started with another config


def test_a_study_begun_before_a_config_field_existed_can_be_joined(data, tmp_path):
    """A field added to the config since (train.optimizer here) takes its default in the
    stored config, so the same command joins; asking for another value is still refused."""
    import optuna

    out, space = tmp_path / "tune", str(_space(tmp_path))
    assert main(["-q", "tune", str(data), "--trials", "0", "--out", str(out), "--space", space, *FAST]) == 0
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(storage=storage, study_name=name)
    old = study.user_attrs["config"]
    del old["train"]["optimizer"]  # what a study begun before the option recorded
    study.set_user_attr("config", old)
    assert main(["-q", "tune", str(data), "--trials", "0", "--out", str(out), "--space", space, *FAST]) == 0
    assert main(["-q", "tune", str(data), "--trials", "0", "--out", str(out), "--space", space, *FAST,
                 "--set", "train.optimizer=adamw"]) == 2


def test_search_space_defaults_and_errors(tmp_path):
    space = load_space()
    assert {"train.lr", "train.batch_size", "train.weight_decay", "model.dropout",
            "train.augment_strength"} <= set(space.params)
    assert space.sampler["name"] == "tpe" and space.pruner["name"] == "median"
    for bad, match in (({"params": {"train.nope": {"float": [0, 1]}}}, "train.nope"),
                       ({"params": {"train.lr": {"float": [1e-2, 1e-4]}}}, "low < high"),
                       ({"params": {"train.lr": {"float": [0.0, 1.0], "log": True}}}, "low > 0"),
                       ({"params": {"train.batch_size": {"choice": ["big"]}}}, "batch_size"),
                       ({"pruner": {"name": "hyperband"}}, "pruner.name")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=match):
            load_space(path)


def test_mask_url_hides_the_password():
    assert mask_url("postgresql://u:secret@127.0.0.1:5432/db") == "postgresql://u:***@127.0.0.1:5432/db"
    assert mask_url("sqlite:////tmp/x/study.db") == "sqlite:////tmp/x/study.db"
