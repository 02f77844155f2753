"""``dermfuse federate``: federated training across sites that keep their images, on Flower.

Sites are made from the data by a stated rule (`assign_sites`): by **body site** (the
anatomical sites are dealt to K centres, largest first to the centre with the fewest
images, so centres see different anatomy, hence different class mixes), by **age** band
(K bands of about equal size over the lesions' ages) or at **random** (an i.i.d. control).
Every lesion (patient, where the data have patient ids) goes to one site whole.

The held-out lesions are those of a central ``dermfuse train`` run with the same config
and seed (`dermfuse.data.splits.holdout`), and so is the validation part; each site
trains on its share of the training rows, the server scores the global model on the
validation part after every round and keeps the best round's weights (as central early
stopping keeps the best epoch's). One feature layout for all sites: the metadata encoder
is built from per-site summaries only (`site_summary`: counts, sums, sums of squares and
a histogram of ages, and the category levels each site has seen; `encoder_from_summaries`),
never from pooled rows, and equals the encoder fitted on the pooled training rows.

Each round a client runs the existing training loop (`dermfuse.training.loop.fit`) for
``local_epochs`` epochs from the global weights, at the learning rate the central schedule
has at that point (rounds x local epochs = central epochs), with a fresh optimiser state (Adam or AdamW, train.optimizer). FedProx
adds mu/2 ||w - w_global||^2 to the local loss as a gradient hook on the parameters
(mu (w - w_global) added to each gradient), so the loop itself is unchanged.

Engines: ``simulation`` is Flower's simulation (`flwr.simulation.start_simulation`, which
needs Ray: ``pip install 'dermfuse[federate]'``); ``processes`` starts a Flower server on
127.0.0.1 and one client process per site (Flower's gRPC transport, no Ray), which the
tests use. ``auto`` takes the simulation where Ray is installed."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import socket
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..io import atomic_write, atomic_write_text
from ..config import RunConfig, config_from_dict, config_to_dict, save_config
from ..data.encode import MetadataEncoder
from ..data.splits import group_ids, holdout, validation_split
from ..errors import ConfigError, DataError
from .federate_sites import SITE_RULES, assign_sites, encoder_from_summaries, site_summary

__all__ = ["SITE_RULES", "STRATEGIES", "ENGINES", "assign_sites", "site_summary", "encoder_from_summaries",
           "round_lr", "FederatedResult", "federate"]

log = logging.getLogger("dermfuse")
STRATEGIES = ("fedavg", "fedprox")
ENGINES = ("auto", "simulation", "processes")


def round_lr(cfg: RunConfig, epoch: int) -> float:
    """The learning rate the central schedule (train.schedule none or cosine, with linear
    warmup) uses at ``epoch`` of ``train.epochs``: what a round starting there trains at."""
    t = cfg.train
    if epoch < t.warmup_epochs:
        return t.lr * (epoch + 1) / (t.warmup_epochs + 1)
    if t.schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - t.warmup_epochs) / max(1, t.epochs - t.warmup_epochs)))
    return t.lr


# --- the client: one site ------------------------------------------------------------------------


@dataclass
class _SiteData:
    images: np.ndarray  # (n, S, S, 3) uint8
    meta: np.ndarray  # (n, D) float32
    labels: np.ndarray  # (n,) int64


class _Site:
    """One site's training: `fit` of the configured model from the global weights."""

    def __init__(self, cfg: RunConfig, classes: list[str], data: _SiteData, kwargs: dict[str, Any], site: int):
        self.cfg, self.classes, self.data, self.kwargs, self.site = cfg, classes, data, kwargs, site

    def train(self, weights: list[np.ndarray], lr: float, mu: float, round_: int, epochs: int) -> list[np.ndarray]:
        from ..models import create_model
        from ..training.loop import ArrayDataset, fit

        net = create_model(self.cfg.model.name, pretrained=False, **self.kwargs)
        _load(net, weights)
        handles = []
        if mu > 0:  # FedProx: d/dw mu/2 ||w - w_global||^2 = mu (w - w_global)
            for p in net.parameters():
                if p.requires_grad:
                    anchor = p.detach().clone()
                    handles.append(p.register_hook(lambda g, p=p, a=anchor: g + mu * (p.detach() - a.to(p.device))))
        local = replace(self.cfg.train, epochs=epochs, lr=lr, schedule="none", warmup_epochs=0,
                        early_stopping="none", amp=self.cfg.train.amp and mu == 0,
                        init_seed=self.cfg.train.init_seed + 1000 * round_ + self.site)
        d = self.data
        try:
            fit(net, ArrayDataset(d.images, d.meta, d.labels), None, local, self.classes, progress=False)
        finally:
            for h in handles:
                h.remove()
        return _weights(net)


def _weights(net: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]


def _load(net: torch.nn.Module, weights: Sequence[np.ndarray]) -> None:
    state = net.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"{len(weights)} arrays for a model with {len(state)} tensors")
    net.load_state_dict({k: torch.from_numpy(np.asarray(w)).to(v.dtype).reshape(v.shape)
                         for (k, v), w in zip(state.items(), weights)})


def _numpy_client(site: _Site):
    import flwr as fl

    class SiteClient(fl.client.NumPyClient):
        def fit(self, parameters, config):
            t0 = time.perf_counter()
            new = site.train(parameters, float(config["lr"]), float(config.get("proximal_mu", 0.0)),
                             int(config["round"]), int(config["local_epochs"]))
            return new, len(site.data.labels), {"site": site.site, "seconds": time.perf_counter() - t0}

        def evaluate(self, parameters, config):  # the server scores the global model itself
            return 0.0, len(site.data.labels), {}

    return SiteClient()


# --- the whole run ---------------------------------------------------------------------------------


@dataclass
class FederatedResult:
    run_dir: Path
    metrics: dict[str, Any]  # test metrics of the federated model
    history: list[dict[str, Any]]  # per round: val balanced accuracy, loss, lr, seconds
    sites: list[dict[str, Any]]
    central: dict[str, Any] | None = None  # test metrics of central training, with --central
    comparison: dict[str, Any] | None = None


def _prepare(cfg: RunConfig, k: int, rule: str, progress: bool):
    from ..data.cache import build_cache
    from .cohort import cohort_for
    from .config_checks import check_config, image_size_for, model_kwargs, split_by
    from ..models import model_spec

    check_config(cfg)
    if cfg.model.input != "image":
        raise ConfigError("federate trains image-input models (model.input: image); heatmap input needs a "
                          "CAM backbone per site")
    if cfg.data.test_fraction <= 0 or cfg.data.val_fraction <= 0:
        raise ConfigError("federate needs data.test_fraction > 0 (held-out lesions to score) and "
                          "data.val_fraction > 0 (the server picks the best round on it)")
    if cfg.train.schedule == "plateau" or cfg.train.members > 1 or cfg.train.calibration != "none":
        raise ConfigError("federate: train.schedule plateau, train.members > 1 and train.calibration are "
                          "not supported; use schedule none or cosine, one model, calibration none")
    cohort = cohort_for(cfg, progress)
    table, y = cohort.table, cohort.labels
    by = split_by(cfg.data.split)
    is_test = holdout(table, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed, by=by)
    train_idx, val_idx = validation_split(table, np.flatnonzero(~is_test), fraction=cfg.data.val_fraction,
                                          seed=cfg.data.split_seed, by=by)
    test_idx = np.flatnonzero(is_test)
    site_of = assign_sites(table, k, rule, seed=cfg.data.split_seed)
    cache = build_cache(table, size=image_size_for(cfg), method=cfg.data.resize_method, progress=progress)
    summaries = [site_summary(table.iloc[train_idx[site_of[train_idx] == s]]) for s in range(k)]
    encoder = encoder_from_summaries(summaries)
    spec = model_spec(cfg.model.name)
    meta = encoder.transform(table) if spec.uses_meta else np.zeros((len(table), 0), np.float32)
    kwargs = model_kwargs(cfg, len(cohort.classes), meta.shape[1])
    return cohort, table, y, train_idx, val_idx, test_idx, site_of, cache.images, meta, encoder, kwargs


def federate(cfg: RunConfig, sites: int, rounds: int, local_epochs: int = 1, strategy: str = "fedavg",
             mu: float = 0.0, site_rule: str = "site", engine: str = "auto", central: bool = False,
             progress: bool = True) -> FederatedResult:
    """Federated training of ``cfg.model`` on ``cfg.data.path`` split into ``sites`` sites;
    writes config.yaml, sites.json, split.csv, history.json, metrics.json, predictions.csv
    (and with ``central``: central/ and comparison.json) into ``cfg.out``."""
    from .predictions_csv import write_predictions
    from ..evaluation.metrics import compute_metrics
    from ..models import create_model
    from ..training.loop import ArrayDataset
    from .variant import score

    engine = _check_options(strategy, mu, rounds, local_epochs, engine)
    cfg.train.epochs = rounds * local_epochs  # the central schedule the rounds follow
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (cohort, table, y, train_idx, val_idx, test_idx, site_of, images, meta, encoder,
     kwargs) = _prepare(cfg, sites, site_rule, progress)
    classes = cohort.classes
    _write_split(run_dir / "split.csv", table, val_idx, test_idx, site_of)
    site_rows = [train_idx[site_of[train_idx] == s] for s in range(sites)]
    if any(len(r) == 0 for r in site_rows):
        raise DataError(f"a site has no training rows ({[len(r) for r in site_rows]}); use fewer sites")
    site_info = [_site_info(s, r, table, y, classes) for s, r in enumerate(site_rows)]
    atomic_write_text(run_dir / "sites.json", json.dumps({"rule": site_rule, "sites": site_info}, indent=2))
    spec = {"config": config_to_dict(cfg), "classes": classes, "kwargs": kwargs, "encoder": encoder.to_dict(),
            "rows": [r.tolist() for r in site_rows]}

    torch.manual_seed(cfg.train.init_seed)  # the global model's initial weights, as a central run's
    global_net = create_model(cfg.model.name, pretrained=cfg.model.pretrained, weights=cfg.model.weights,
                              **kwargs)
    init = _weights(global_net)
    val = ArrayDataset(np.ascontiguousarray(images[val_idx]), meta[val_idx], y[val_idx])
    server = _Server(global_net, val, cfg, rounds, local_epochs, progress, init)
    _run_flower(engine, spec, sites, rounds, local_epochs, strategy, mu, init, server.evaluate, cfg)
    if len(server.history) != rounds + 1:
        raise DataError(f"federate: the server scored {len(server.history) - 1} of {rounds} rounds; a site failed")
    _load(global_net, server.best["weights"])
    atomic_write_text(run_dir / "history.json", json.dumps(server.history, indent=2))
    proba = score(global_net, classes, encoder, np.ascontiguousarray(images[test_idx]), meta[test_idx], cfg.train.tta,
                  cfg.train.tta_views)
    metrics = compute_metrics(y[test_idx], proba, classes)
    metrics.update(best_round=server.best["round"], rounds=rounds, local_epochs=local_epochs, sites=sites,
                   site_rule=site_rule, strategy=strategy, mu=mu, engine=engine)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_predictions(run_dir / "predictions.csv", table.iloc[test_idx]["image_id"].to_numpy(), classes, y[test_idx], proba)
    result = FederatedResult(run_dir, metrics, server.history, site_info)
    if central:
        result.central, result.comparison = _compare_central(cfg, run_dir, table, y, test_idx, proba, classes, progress)
        atomic_write_text(run_dir / "comparison.json", json.dumps(result.comparison, indent=2))
    return result


def _check_options(strategy: str, mu: float, rounds: int, local_epochs: int, engine: str) -> str:
    """Refuse a bad strategy, mu, round count or engine; the engine ``auto`` resolves to."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"federate --strategy {strategy!r}: expected one of {STRATEGIES}")
    if strategy == "fedprox" and mu <= 0:
        raise ConfigError(f"federate --strategy fedprox needs --mu > 0, got {mu}")
    if strategy == "fedavg" and mu != 0:
        raise ConfigError("federate --mu is FedProx's; use --strategy fedprox with it")
    if rounds < 1 or local_epochs < 1:
        raise ConfigError(f"federate: --rounds and --local-epochs must be >= 1, got {rounds} and {local_epochs}")
    if engine not in ENGINES:
        raise ConfigError(f"federate --engine {engine!r}: expected one of {ENGINES}")
    if engine == "auto":
        engine = "simulation" if importlib.util.find_spec("ray") else "processes"
    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("federate needs Flower: pip install 'dermfuse[federate]' (or flwr)")
    if engine == "simulation" and importlib.util.find_spec("ray") is None:
        raise ConfigError("federate --engine simulation needs Ray: pip install 'dermfuse[federate]'; "
                          "or use --engine processes")
    return engine


def _write_split(path: Path, table: pd.DataFrame, val_idx: np.ndarray, test_idx: np.ndarray,
                 site_of: np.ndarray) -> None:
    """split.csv: every row's part (train, val, test) and, for training rows, its site (else -1)."""
    part = np.full(len(table), "train", dtype=object)
    part[val_idx], part[test_idx] = "val", "test"
    split = pd.DataFrame({"image_id": table["image_id"], "part": part,
                          "site": np.where(part == "train", site_of, -1)})
    atomic_write(path, lambda tmp: split.to_csv(tmp, index=False))


def _site_info(s: int, rows: np.ndarray, table: pd.DataFrame, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """What sites.json says of site ``s``: images, lesions, class counts, body sites (20 at most)."""
    return {"site": s, "images": int(len(rows)), "lesions": int(len(set(group_ids(table.iloc[rows])))),
            "classes": {classes[c]: int(n) for c, n in sorted(Counter(y[rows].tolist()).items())},
            "body_sites": sorted({str(v) for v in table.iloc[rows].get("site", pd.Series(dtype=str))
                                  if isinstance(v, str)})[:20]}


class _Server:
    """The server's side of the rounds: scores the global model on the validation part after
    every round (round 0: the initial weights), keeps the history and the best round's weights."""

    def __init__(self, global_net: torch.nn.Module, val, cfg: RunConfig, rounds: int, local_epochs: int,
                 progress: bool, init: list[np.ndarray]):
        self.global_net, self.val, self.cfg = global_net, val, cfg
        self.rounds, self.local_epochs, self.progress = rounds, local_epochs, progress
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": -1.0, "weights": init, "round": 0}
        self.t_round = time.perf_counter()

    def evaluate(self, server_round: int, parameters, config):
        """Flower's ``evaluate_fn``: (val loss, {"balanced_accuracy"}) of ``parameters``."""
        from ..training.loop import evaluate

        _load(self.global_net, parameters)
        m = evaluate(self.global_net, torch.utils.data.DataLoader(self.val, batch_size=64), torch.device("cpu"))
        row = {"round": server_round, "val_loss": m["loss"], "val_acc": m["acc"],
               "val_balanced_accuracy": m["balanced_accuracy"],
               "lr": round_lr(self.cfg, (server_round - 1) * self.local_epochs) if server_round else None,
               "seconds": time.perf_counter() - self.t_round}
        self.t_round = time.perf_counter()
        self.history.append(row)
        if server_round > 0 and m["balanced_accuracy"] > self.best["score"]:
            self.best.update(score=m["balanced_accuracy"], weights=[np.array(p) for p in parameters],
                             round=server_round)
        if self.progress:
            log.warning("round %d/%d: val balanced accuracy %.3f, loss %.4f", server_round, self.rounds,
                        m["balanced_accuracy"], m["loss"])
        return m["loss"], {"balanced_accuracy": m["balanced_accuracy"]}


def _compare_central(cfg: RunConfig, run_dir: Path, table: pd.DataFrame, y: np.ndarray, test_idx: np.ndarray,
                     proba: np.ndarray, classes: list[str], progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the same config centrally into ``run_dir/central``; (its test metrics, the paired
    lesion bootstrap of federated minus central on the same test images)."""
    from .holdout import train_run
    from .predictions_csv import probabilities, read_predictions
    from ..evaluation.metrics import paired_bootstrap

    ccfg = config_from_dict(config_to_dict(cfg))
    ccfg.out = str(run_dir / "central")
    cres = train_run(ccfg, progress=progress)
    cpred = read_predictions(run_dir / "central" / "predictions.csv")
    if list(cpred["image_id"]) != list(table["image_id"].iloc[test_idx]):
        raise DataError("central and federated runs scored different test images")
    cp = probabilities(cpred, classes).argmax(1)
    boot = paired_bootstrap(y[test_idx], proba.argmax(1), cp, group_ids(table.iloc[test_idx]), classes)
    return cres.metrics, {"federated_minus_central": boot, "central_epochs": cfg.train.epochs,
                          "test_images": int(len(test_idx))}


def _strategy(name: str, mu: float, sites: int, rounds: int, local_epochs: int, init, server_eval, cfg: RunConfig):
    import flwr as fl
    from flwr.common import ndarrays_to_parameters

    def fit_config(server_round: int) -> dict[str, Any]:
        return {"round": server_round, "local_epochs": local_epochs,
                "lr": round_lr(cfg, (server_round - 1) * local_epochs)}

    kw = dict(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=sites, min_evaluate_clients=0,
              min_available_clients=sites, initial_parameters=ndarrays_to_parameters(init),
              evaluate_fn=server_eval, on_fit_config_fn=fit_config)
    if name == "fedprox":
        return fl.server.strategy.FedProx(proximal_mu=mu, **kw)
    return fl.server.strategy.FedAvg(**kw)


def _site_from_spec(spec: dict[str, Any], s: int) -> _Site:
    """Rebuild site ``s`` from the run spec (in a client process: its rows, the image cache,
    the common encoder)."""
    from ..data.cache import build_cache
    from .cohort import cohort_for
    from .config_checks import image_size_for
    from ..models import model_spec

    cfg = config_from_dict(spec["config"])
    cohort = cohort_for(cfg, progress=False)
    rows = np.asarray(spec["rows"][s], np.int64)
    images = build_cache(cohort.table, size=image_size_for(cfg), method=cfg.data.resize_method,
                         progress=False).images
    encoder = MetadataEncoder.from_dict(spec["encoder"])
    sub = cohort.table.iloc[rows]
    meta = encoder.transform(sub) if model_spec(cfg.model.name).uses_meta else np.zeros((len(rows), 0), np.float32)
    data = _SiteData(np.ascontiguousarray(images[rows]), meta, cohort.labels[rows])
    return _Site(cfg, spec["classes"], data, spec["kwargs"], s)


def _client_process(spec_path: str, s: int, address: str) -> None:
    import flwr as fl

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    site = _site_from_spec(spec, s)
    fl.client.start_client(server_address=address, client=_numpy_client(site).to_client(), insecure=True,
                           max_retries=60, max_wait_time=120.0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_flower(engine: str, spec: dict[str, Any], sites: int, rounds: int, local_epochs: int, strategy: str,
                mu: float, init, server_eval, cfg: RunConfig) -> None:
    import flwr as fl

    strat = _strategy(strategy, mu, sites, rounds, local_epochs, init, server_eval, cfg)
    config = fl.server.ServerConfig(num_rounds=rounds)
    if engine == "simulation":
        built: dict[int, _Site] = {}

        def client_fn(context):
            s = int(context.node_config["partition-id"])
            if s not in built:
                built[s] = _site_from_spec(spec, s)
            return _numpy_client(built[s]).to_client()

        fl.simulation.start_simulation(client_fn=client_fn, num_clients=sites, config=config, strategy=strat,
                                       client_resources={"num_cpus": 1},
                                       ray_init_args={"include_dashboard": False, "num_cpus": max(1, min(sites, 2))})
        return
    import multiprocessing as mp

    spec_path = Path(cfg.out) / "federate_spec.json"
    spec_path.write_text(json.dumps(spec))
    address = f"127.0.0.1:{_free_port()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_client_process, args=(str(spec_path), s, address), daemon=True) for s in range(sites)]
    for p in procs:
        p.start()
    try:
        fl.server.start_server(server_address=address, config=config, strategy=strat)
    finally:
        codes = []
        for p in procs:  # told to disconnect after the last round; a slow exit is ended here
            p.join(timeout=120)
            codes.append(p.exitcode)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        spec_path.unlink(missing_ok=True)
    bad = [c for c in codes if c is not None and c > 0]
    if bad:
        raise DataError(f"federate: {len(bad)} site process(es) failed (exit codes {bad}); their traceback is above")
