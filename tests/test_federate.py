"""Federated training: sites by a stated rule, one feature layout from per-site summaries,
FedProx's proximal term, and a two-site, two-round Flower run on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermfuse.config import RunConfig
from dermfuse.data.encode import MetadataEncoder
from dermfuse.data.splits import group_ids
from dermfuse.data.synth import make_synthetic
from dermfuse.runs.holdout import load_cohort
from dermfuse.runs.federate import _Site, _SiteData, _weights, assign_sites, encoder_from_summaries, federate, round_lr, site_summary


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("fed") / "data", n=70, seed=3)


@pytest.mark.parametrize("rule", ["site", "age", "random"])
def test_sites_never_split_a_lesion_and_differ_by_their_rule(synth, rule):
    table = load_cohort(synth, progress=False).table
    site = assign_sites(table, 3, rule, seed=0)
    assert set(site) == {0, 1, 2}
    lesions = pd.Series(site).groupby(group_ids(table)).nunique()
    assert (lesions == 1).all()
    if rule == "site":  # each body site lives at one centre
        assert (pd.Series(site).groupby(table["site"].to_numpy()).nunique() == 1).all()
    if rule == "age":  # bands: every age of site 0 is below every age of site 2
        age = pd.to_numeric(table["age"], errors="coerce")
        assert age[site == 0].max() <= age[site == 2].min()
    counts = np.bincount(site)
    assert counts.min() > 0


def test_encoder_from_site_summaries_equals_the_pooled_fit(synth):
    table = load_cohort(synth, progress=False).table
    table.loc[table.index[:3], "age"] = None  # missing ages at one site
    site = assign_sites(table, 3, "site")
    summaries = [site_summary(table[site == s]) for s in range(3)]
    assert all(set(s) == {"n_age", "age_sum", "age_sumsq", "age_hist", "sexes", "sites"} for s in summaries)
    fed = encoder_from_summaries(summaries)
    pooled = MetadataEncoder().fit(table)
    a, b = fed.to_dict(), pooled.to_dict()
    for key in ("age_mean", "age_std", "age_median"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert a["sexes"] == b["sexes"] and a["sites"] == b["sites"]
    np.testing.assert_allclose(fed.transform(table), pooled.transform(table), atol=1e-5)


def test_round_lr_follows_the_central_schedule():
    cfg = RunConfig()
    cfg.train.lr, cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.schedule = 1.0, 5, 1, "cosine"
    assert [round(round_lr(cfg, e), 6) for e in range(5)] == [0.5, 1.0, round(0.5 * (1 + np.cos(np.pi / 4)), 6),
                                                              0.5, round(0.5 * (1 + np.cos(3 * np.pi / 4)), 6)]


def test_fedprox_term_keeps_local_weights_near_the_global_ones():
    rng = np.random.default_rng(0)
    data = _SiteData(rng.integers(0, 255, (48, 16, 16, 3)).astype(np.uint8), np.zeros((48, 0), np.float32),
                     rng.integers(0, 2, 48))
    cfg = RunConfig()
    cfg.model.name, cfg.train.augment, cfg.train.device, cfg.train.batch_size = "cnn", False, "cpu", 16
    site = _Site(cfg, ["a", "b"], data, {"num_classes": 2, "meta_dim": 0, "input_size": 16}, 0)
    import torch

    from dermfuse.models import create_model

    torch.manual_seed(0)
    start = _weights(create_model("cnn", num_classes=2, input_size=16))

    def drift(mu: float) -> float:
        new = site.train(start, lr=5e-3, mu=mu, round_=1, epochs=2)
        return float(sum(((a.astype(np.float64) - b) ** 2).sum() for a, b in zip(new, start)))

    free, prox = drift(0.0), drift(50.0)
    assert prox < 0.5 * free, (free, prox)


@pytest.mark.slow  # a Flower server and two client processes (each imports torch and flwr)
def test_two_sites_two_rounds_trains_and_scores(synth, tmp_path):
    pytest.importorskip("flwr")
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size = str(synth), 32
    cfg.model.name, cfg.model.pretrained = "ft_multicnn", False
    cfg.train.batch_size, cfg.train.augment, cfg.train.device, cfg.train.tta = 16, False, "cpu", False
    cfg.out = str(tmp_path / "fed")
    res = federate(cfg, sites=2, rounds=2, local_epochs=1, engine="processes", progress=False)
    assert [h["round"] for h in res.history] == [0, 1, 2]
    assert res.metrics["best_round"] in (1, 2) and 0 <= res.metrics["balanced_accuracy"] <= 1
    split = pd.read_csv(tmp_path / "fed" / "split.csv")
    pred = pd.read_csv(tmp_path / "fed" / "predictions.csv")
    assert len(pred) == (split["part"] == "test").sum() == res.metrics["n_images"]
    assert set(split.loc[split["part"] == "train", "site"]) == {0, 1}
    sites = json.loads((tmp_path / "fed" / "sites.json").read_text())
    assert sum(s["images"] for s in sites["sites"]) == (split["part"] == "train").sum()
    # the model moved: round 1's validation loss differs from the initial model's
    assert res.history[1]["val_loss"] != pytest.approx(res.history[0]["val_loss"], rel=1e-6)
