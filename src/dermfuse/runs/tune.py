"""``dermfuse tune``: a hyper-parameter search on Optuna, in a database that several workers share.

One worker (one ``tune()`` call, one ``dermfuse tune`` process) reads and splits the data
exactly as ``dermfuse train`` does with the same config and seed, then drops the test part
before anything is decoded: the search sees only the training part, and scores every trial
by the balanced accuracy on the validation rows inside it (lesion-grouped, as the config
says). A trial trains one model with the sampled values (TPE); after every epoch the loop's
``on_epoch`` callback reports the validation score, and the pruner may stop the trial there.

The study lives in a database: a SQLite file ``study.db`` in the run folder by default, or
any Optuna storage URL (``postgresql://user:pass@host/db``) that workers on several machines
share. Each trial is its own row, created when it starts and finished when it ends, so a
worker that is interrupted loses at most the trial it was running (marked FAIL: at once by
Ctrl-C or SIGTERM, by the next worker on the same host after a kill, or by Optuna's heartbeat after
``GRACE_PERIOD_S`` from any machine).

At the end a worker writes the best trial as ``best_config.yaml`` (``dermfuse train
--config`` takes it unchanged) and the report (`dermfuse.runs.tune_report`).
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from rich.console import Console

from ..io import atomic_write_text
from ..config import RunConfig, apply_overrides, config_from_dict, config_to_dict, read_yaml
from ..data.cache import build_cache
from ..data.encode import MetadataEncoder
from ..errors import ConfigError
from ..models import create_model, model_spec
from ..training.loop import ArrayDataset, fit

__all__ = ["SearchSpace", "TuneResult", "load_space", "default_storage", "open_study", "tune", "mask_url"]

console = Console(stderr=True)
HEARTBEAT_S = 30  # a running trial's worker writes a heartbeat this often ...
GRACE_PERIOD_S = 120  # ... and a trial whose heartbeat is older than this is marked FAIL by the next worker
OBJECTIVE = "balanced accuracy on the validation rows inside the training part (best epoch)"
_SAMPLERS = ("tpe",)
_PRUNERS = ("median", "threshold", "none")


def _optuna():
    try:
        import optuna
    except ImportError:  # an optional extra
        raise ConfigError("dermfuse tune needs Optuna: pip install 'dermfuse[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# --- the search space ---------------------------------------------------------------------


@dataclass
class SearchSpace:
    """Sampler, pruner and one distribution per config key (see search_space.yaml)."""

    params: dict[str, dict[str, Any]]
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "pruner": self.pruner, "params": self.params}


def _default_space_dict() -> dict[str, Any]:
    return yaml.safe_load(resources.files("dermfuse.runs").joinpath("search_space.yaml").read_text())


def load_space(path: str | Path | None = None) -> SearchSpace:
    """The default search space, or ``path`` over it (its ``params`` replace the defaults'
    params; its sampler/pruner keys replace single defaults). ConfigError names a bad entry."""
    base = _default_space_dict()
    where = "default search space"
    if path is not None:
        path, where = Path(path), str(path)
        user = read_yaml(path, "search space file")
        if not isinstance(user, dict) or set(user) - {"sampler", "pruner", "params"}:
            raise ConfigError(f"{path}: expected a mapping with keys sampler, pruner, params; got "
                              f"{sorted(user) if isinstance(user, dict) else type(user).__name__}")
        for key in ("sampler", "pruner"):
            base[key] = {**base[key], **(user.get(key) or {})}
        if "params" in user:
            base["params"] = user["params"]
    space = SearchSpace(params=base["params"] or {}, sampler=base["sampler"], pruner=base["pruner"])
    _check_space(space, where)
    return space


def _check_space(space: SearchSpace, where: str) -> None:
    if not isinstance(space.params, dict) or not space.params:
        raise ConfigError(f"{where}: params must map config keys to distributions, got {space.params!r}")
    probe = RunConfig()
    for key, dist in space.params.items():
        kinds = [k for k in ("float", "int", "choice") if isinstance(dist, dict) and k in dist]
        if len(kinds) != 1 or set(dist) - {kinds[0], "log"}:
            raise ConfigError(f"{where}: {key}: expected one of {{float: [low, high]}}, {{int: [low, high]}}, "
                              f"{{choice: [...]}} (optionally log: true), got {dist!r}")
        kind, arg = kinds[0], dist[kinds[0]]
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: {key}: choice needs a non-empty list, got {arg!r}")
            values = arg
        else:
            if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)
                    and arg[0] < arg[1]):
                raise ConfigError(f"{where}: {key}: {kind} needs [low, high] numbers with low < high, got {arg!r}")
            if dist.get("log") and arg[0] <= 0:
                raise ConfigError(f"{where}: {key}: a log scale needs low > 0, got {arg[0]!r}")
            values = arg
        for v in values:  # every value must be one the config accepts
            try:
                apply_overrides(copy.deepcopy(probe), {key: v})
            except ConfigError as e:
                raise ConfigError(f"{where}: {key}: {e}") from None
    s, p = space.sampler.get("name", "tpe"), space.pruner.get("name", "median")
    if s not in _SAMPLERS:
        raise ConfigError(f"{where}: sampler.name {s!r}: expected one of {_SAMPLERS}")
    if p not in _PRUNERS:
        raise ConfigError(f"{where}: pruner.name {p!r}: expected one of {_PRUNERS}")


def _suggest(trial: Any, key: str, dist: dict[str, Any]) -> Any:
    if "choice" in dist:
        return trial.suggest_categorical(key, dist["choice"])
    low, high = dist.get("float") or dist.get("int")
    if "int" in dist:
        return trial.suggest_int(key, int(low), int(high), log=bool(dist.get("log")))
    return trial.suggest_float(key, float(low), float(high), log=bool(dist.get("log")))


# --- the study ----------------------------------------------------------------------------


def default_storage(out: str | Path) -> str:
    """The SQLite URL of ``out/study.db`` (absolute, so workers started anywhere agree)."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ***, for logs and tune.json."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _storage(url: str):
    optuna = _optuna()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}  # wait for the other workers' writes
    last: Exception | None = None
    for attempt in range(5):  # workers started together may race to create the tables
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_PERIOD_S)
        except Exception as e:  # sqlalchemy's OperationalError / IntegrityError and friends
            last = e
            if "No module named" in str(e) or isinstance(e, (ImportError, ValueError)):
                break
            time.sleep(0.5 + random.random() * attempt)
    raise ConfigError(f"cannot open the study storage {mask_url(url)}: {type(last).__name__}: {last}") from None


def open_study(storage: str, study_name: str, space: SearchSpace) -> Any:
    """Create the study or join it (``load_if_exists``), with the space's sampler and pruner."""
    optuna = _optuna()
    s, p = space.sampler, space.pruner
    sampler = optuna.samplers.TPESampler(n_startup_trials=int(s.get("n_startup_trials", 5)),
                                         seed=s.get("seed"), constant_liar=True)
    # n_warmup_steps: epochs every trial runs before it may be pruned. Steps are epochs counted
    # from 1 and optuna prunes at a step >= its n_warmup_steps, so it gets one more.
    warmup = int(p.get("n_warmup_steps", 1)) + 1
    if p.get("name") == "none":
        pruner = optuna.pruners.NopPruner()
    elif p.get("name") == "threshold":  # stop any trial whose score is below `lower` after the warm-up
        pruner = optuna.pruners.ThresholdPruner(lower=float(p.get("lower", 0.0)), n_warmup_steps=warmup)
    else:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=int(p.get("n_startup_trials", 3)), n_warmup_steps=warmup)
    store = _storage(storage)
    for attempt in range(5):
        try:
            return optuna.create_study(storage=store, study_name=study_name, direction="maximize",
                                       sampler=sampler, pruner=pruner, load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
            time.sleep(0.2 * (attempt + 1))
    return optuna.load_study(storage=store, study_name=study_name, sampler=sampler, pruner=pruner)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials of workers on this host whose process is gone (a kill);
    other hosts' dead workers are caught by the heartbeat. Returns the trial numbers."""
    optuna = _optuna()
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        if ":" in who and who.rsplit(":", 1)[0] == host and who.rsplit(":", 1)[1].isdigit():
            pid = int(who.rsplit(":", 1)[1])
            if pid != os.getpid() and not _pid_alive(pid):
                try:
                    study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
                    failed.append(t.number)
                except Exception:  # another worker marked it first
                    pass
    optuna.storages.fail_stale_trials(study)  # heartbeats older than the grace period
    return failed


def _study_config(cfg: RunConfig) -> dict[str, Any]:
    """What must agree between the workers of one study (the run folder and data path may differ)."""
    d = config_to_dict(cfg)
    d.pop("out", None)
    d["data"] = {k: v for k, v in d["data"].items() if k != "path"}
    return d


# --- one worker ---------------------------------------------------------------------------


@dataclass
class TuneResult:
    out: Path
    study_name: str
    storage: str  # password masked
    trials_run: int  # by this worker
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    counts: dict[str, int]  # trials of the whole study per state


@dataclass
class _Data:
    train: ArrayDataset
    val: ArrayDataset
    classes: list[str]
    meta_dim: int
    counts: dict[str, int]


def _prepare(cfg: RunConfig, out: Path, progress: bool) -> _Data:
    """The training part only: split as ``dermfuse train`` does, drop the test rows, then
    decode, encode (encoder fitted on the training rows) and, for heatmap inputs, make the maps."""
    from .cohort import cohort_for, holdout_split
    from .config_checks import image_size_for

    cohort = cohort_for(cfg, progress)
    table, classes, y = cohort.table, cohort.classes, cohort.labels
    train_idx, val_idx, test_idx = holdout_split(cfg, table, out)  # writes out/split.csv
    if len(val_idx) == 0:
        raise ConfigError("dermfuse tune scores trials on the validation part: set data.val_fraction > 0")

    keep = np.sort(np.r_[train_idx, val_idx])  # test rows go no further than here
    sub = table.iloc[keep].reset_index(drop=True)
    y_sub = y[keep]
    pos = {r: i for i, r in enumerate(keep)}
    tr, va = np.array([pos[r] for r in train_idx]), np.array([pos[r] for r in val_idx])
    cache = build_cache(sub, size=image_size_for(cfg), method=cfg.data.resize_method, progress=progress)
    encoder = MetadataEncoder().fit(sub.iloc[tr])
    meta = encoder.transform(sub) if model_spec(cfg.model.name).uses_meta else np.zeros((len(sub), 0), np.float32)
    images = cache.images
    if cfg.model.input != "image" and model_spec(cfg.model.name).uses_image:
        from ..training.heatmap_stage import heatmap_stage

        stage = heatmap_stage(cfg, sub, y_sub, classes, images, tr, va,
                              out / "heatmap_stage" / _worker_id().replace(":", "-"),
                              cache_key=cache.key, progress=progress)
        images = stage.inputs

    def ds(idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(np.ascontiguousarray(images[idx]), meta[idx], y_sub[idx])

    counts = {"train": int(len(tr)), "val": int(len(va)), "test_excluded": int(len(test_idx))}
    return _Data(ds(tr), ds(va), classes, int(meta.shape[1]), counts)


def _build(cfg: RunConfig, num_classes: int, meta_dim: int) -> torch.nn.Module:
    from .config_checks import model_kwargs

    kwargs, weights = model_kwargs(cfg, num_classes, meta_dim), cfg.model.weights
    if cfg.model.name == "ft_multicnn" and "image_backbone" in kwargs and weights:
        kwargs["backbone_weights"], weights = weights, None  # the file is the backbone's (as train_run)
    torch.manual_seed(cfg.train.init_seed)
    return create_model(cfg.model.name, pretrained=cfg.model.pretrained, weights=weights, **kwargs)


def tune(cfg: RunConfig, trials: int, out: str | Path, storage: str | None = None, study_name: str | None = None,
         space: SearchSpace | None = None, progress: bool = True) -> TuneResult:
    """Run ``trials`` trials of the study (joining it if it exists), then write the report.

    ``trials`` counts this worker's trials: two workers with ``trials=3`` add six. 0 only
    writes the report of the study as it stands. Returns the study's best so far."""
    optuna = _optuna()
    from .config_checks import check_config

    check_config(cfg)
    if trials < 0:
        raise ConfigError(f"--trials {trials}: expected 0 (report only) or more")
    space = space or load_space()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    name = study_name or "dermfuse"
    study = open_study(url, name, space)
    _join_study(study, {"config": _study_config(cfg), "space": space.to_dict(), "objective": OBJECTIVE}, url, name)
    if trials:
        failed = fail_dead_trials(study)
        if failed and progress:
            console.print(f"marked trial(s) {failed} FAIL: their worker on this host is gone")
    worker = _worker_id()
    data = _prepare(cfg, out, progress) if trials else None
    if data is not None:
        study.set_user_attr("split", data.counts)
    atomic_write_text(out / "base_config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    if trials:
        with _sigterm_as_interrupt():
            study.optimize(_objective(optuna, cfg, space, data, worker, progress), n_trials=trials,
                           callbacks=[_announce] if progress else [], gc_after_trial=True)
    return _finish(study, cfg, out, url, name, trials)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill PID`, a batch scheduler's stop) raises KeyboardInterrupt, as Ctrl-C does,
    so that Optuna marks the running trial FAIL before the worker exits instead of leaving it
    RUNNING for the next worker to find. Only in the main thread, where Python runs handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set from C


def _join_study(study: Any, mine: dict[str, Any], url: str, name: str) -> None:
    """Record the config, space and objective on a new study; refuse to join one started
    with other ones."""
    for key, value in mine.items():
        theirs = study.user_attrs.get(key)
        if key == "config" and isinstance(theirs, dict):
            try:  # in today's names (a study begun before config_version 2), with today's defaults for
                # the fields added since (a study begun before train.optimizer has none)
                theirs = _study_config(config_from_dict(theirs))
            except ConfigError:
                pass
        if key in study.user_attrs and json.loads(json.dumps(theirs)) != json.loads(json.dumps(value)):
            raise ConfigError(f"study {name!r} in {mask_url(url)} was started with another {key}; join it with "
                              f"the same --config/--set/--space, or pick a new --study name")
        if key not in study.user_attrs:
            study.set_user_attr(key, value)


def _objective(optuna: Any, cfg: RunConfig, space: SearchSpace, data: _Data, worker: str,
               progress: bool = True) -> Callable[[Any], float]:
    """One trial: the config with the trial's values, trained with `fit`; its best validation
    balanced accuracy, reported every epoch to the pruner."""

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", worker)
        values = {key: _suggest(trial, key, dist) for key, dist in space.params.items()}
        tcfg = apply_overrides(copy.deepcopy(cfg), dict(values))
        model = _build(tcfg, len(data.classes), data.meta_dim)
        t0 = time.perf_counter()

        def report(row: dict[str, Any]) -> None:  # fit()'s per-epoch callback: the pruner's input
            score = float(row["val_balanced_accuracy"])
            trial.report(score, row["epoch"])  # step = the epoch, counted from 1
            trial.set_user_attr("epochs_run", row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: validation balanced accuracy {score:.4f}")

        res = fit(model, data.train, data.val, tcfg.train, data.classes, progress=progress, on_epoch=report)  # epochs on stderr
        value = max(float(r["val_balanced_accuracy"]) for r in res.history)
        best = int(np.argmax([r["val_balanced_accuracy"] for r in res.history]))
        trial.set_user_attr("best_epoch", int(res.history[best]["epoch"]))  # counted from 1
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return value

    return objective


def _announce(study: Any, t: Any) -> None:
    """Optuna callback: one line per finished trial, with the study's best so far."""
    shown = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in t.params.items())
    best = study.best_value if any(s.state.name == "COMPLETE" for s in study.get_trials(deepcopy=False)) else None
    value = "-" if t.value is None else f"{t.value:.4f}"
    console.print(f"trial {t.number} {t.state.name.lower()}: val BA {value}"
                  f"{'' if best is None else f' (best {best:.4f})'}  {shown}", highlight=False)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _finish(study: Any, cfg: RunConfig, out: Path, url: str, name: str, trials_run: int) -> TuneResult:
    """best_config.yaml, tune.json and the report, from the study as it stands now."""
    from .tune_report import write_tune_report

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_path = None
    if best is not None:
        best_cfg = apply_overrides(copy.deepcopy(cfg), dict(best.params))
        best_cfg.out = RunConfig().out  # `dermfuse train` picks its own folder unless --out says
        best_path = out / "best_config.yaml"
        header = (f"# dermfuse tune: best trial {best.number} of study {name!r}, {OBJECTIVE} = {best.value:.4f}\n"
                  f"# train it: dermfuse train DATA --config {best_path.name}\n")
        atomic_write_text(best_path, header + yaml.safe_dump(config_to_dict(best_cfg), sort_keys=False))
    summary = {"study": name, "storage": mask_url(url), "direction": "maximize", "objective": OBJECTIVE,
               "trials": counts, "split": study.user_attrs.get("split"),
               "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
               "best_config": None if best_path is None else best_path.name}
    atomic_write_text(out / "tune.json", json.dumps(summary, indent=2))
    write_tune_report(study, out)
    return TuneResult(out, name, mask_url(url), trials_run, None if best is None else best.value,
                      {} if best is None else dict(best.params), best_path, counts)
