"""Fine-tuning a bundle on new data (`dermfuse train DATA --init BUNDLE|released`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from _bundles import make_bundle, make_encoder
from dermfuse.training import finetune
from dermfuse.inference.bundle import load_bundle
from dermfuse.cli import main
from dermfuse.config import RunConfig
from dermfuse.errors import BundleError, ConfigError, DataError
from dermfuse.runs.holdout import train_run
from dermfuse.training.finetune import check_classes, extend_encoder, load_matching, resolve_init
from dermfuse.models import create_model


def test_released_resolves_to_the_one_installed_bundle_or_says_none_is(tmp_path):
    root = tmp_path / "released"
    with pytest.raises(BundleError, match="no released model is installed"):
        resolve_init("released", root=root)
    make_bundle(root / "abc123")
    assert resolve_init("released", root=root) == root / "abc123"
    make_bundle(root / "def456")
    with pytest.raises(BundleError, match="2 released models"):
        resolve_init("released", root=root)
    with pytest.raises(BundleError, match="not a bundle folder"):
        resolve_init(tmp_path)


def test_extended_encoder_keeps_age_statistics_and_appends_new_levels():
    base = make_encoder()
    new_rows = pd.DataFrame({"age": [5, 10, 15], "sex": ["female"] * 3, "site": ["acral", "back", "ear"]})
    enc = extend_encoder(base, new_rows)
    assert (enc.age_mean, enc.age_std, enc.age_median) == (base.age_mean, base.age_std, base.age_median)
    assert enc.sites[: len(base.sites) - 1] == base.sites[:-1] and enc.sites[-1] == "unknown"
    assert set(enc.sites) - set(base.sites) == {"acral", "ear"}
    assert set(base.feature_names) < set(enc.feature_names)


def test_loaded_model_predicts_as_the_bundle_on_inputs_both_encoders_know(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", model="ft_multicnn", image_size=48))
    enc = extend_encoder(bundle.encoder, pd.DataFrame({"age": [30], "sex": ["male"], "site": ["acral"]}))
    kwargs = dict(bundle.info["model"]["kwargs"], meta_dim=enc.n_features)
    torch.manual_seed(1)
    net = create_model("ft_multicnn", pretrained=False, **kwargs).eval()
    report = load_matching(net, bundle, enc.feature_names)
    assert report["skipped"] == [] and report["adapted"] == ["meta_branch.0.weight"]
    rows = pd.DataFrame({"age": [40, None, 70], "sex": ["male", "female", None], "site": ["back", "face", "trunk"]})
    images = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        old = bundle.model(images, torch.from_numpy(bundle.encoder.transform(rows)))
        new = net(images, torch.from_numpy(enc.transform(rows)))
    torch.testing.assert_close(new, old)
    column = enc.feature_names.index("site=acral")
    assert torch.count_nonzero(net.state_dict()["meta_branch.0.weight"][:, column]) == 0


def test_class_lists_must_match():
    check_classes(["a", "b"], ["a", "b"], "data")
    with pytest.raises(DataError, match="class lists must be the same"):
        check_classes(["b", "a"], ["a", "b"], "data")


def _cfg(data, out) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path = str(data)
    cfg.data.image_size = 48
    cfg.model.name = "ft_multicnn"
    cfg.model.pretrained = False
    cfg.train.epochs = 1
    cfg.out = str(out)
    return cfg


def test_train_with_init_fine_tunes_a_synthetic_bundle(synth_small, tmp_path):
    first = train_run(_cfg(synth_small, tmp_path / "first"), progress=False)
    data = tmp_path / "own"
    shutil.copytree(synth_small, data)
    meta = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    base_sites = set(load_bundle(first.bundle).encoder.sites)
    new_site = next(s for s in ("acral", "genital", "ear", "hand", "scalp") if s not in base_sites)
    meta.loc[meta.index[:20], "localization"] = new_site
    meta.to_csv(data / "metadata.csv", index=False)
    cfg = _cfg(data, tmp_path / "tuned")
    cfg.model.name, cfg.model.init = "cnn", str(first.bundle)  # the bundle's architecture wins
    tuned = train_run(cfg, progress=False)
    init = tuned.metrics["init"]
    assert init["bundle"] == str(first.bundle)
    assert init["encoder"]["added_sites"] == [new_site] and init["encoder"]["mode"] == "extended"
    assert init["weights"]["skipped"] == 0 and init["weights"]["adapted"] == 1 and init["weights"]["loaded"] > 10
    b = load_bundle(tuned.bundle)
    assert b.info["model"]["name"] == "ft_multicnn" and new_site in b.encoder.sites
    assert json.loads((tmp_path / "tuned" / "metrics.json").read_text())["init"]["model_id"]


def test_cli_init_errors_are_clear(synth_small, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(finetune, "released_dir", lambda: tmp_path / "none")
    assert main(["-q", "train", str(synth_small), "--init", "released", "--out", str(tmp_path / "r")]) == 2
    assert "no released model is installed" in capsys.readouterr().err
    assert main(["-q", "train", str(synth_small), "--init", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "not a bundle folder" in capsys.readouterr().err
    assert not np.any([p.name == "bundle" for p in tmp_path.rglob("bundle")])


def b_info(path) -> dict:
    return json.loads((path / "bundle.json").read_text())


def test_a_seed_ensemble_is_fine_tuned_member_by_member(synth_small, tmp_path, monkeypatch):
    """--init with a two-member bundle (the released recipe's shape): the run becomes a
    two-member ensemble and member k starts from the bundle's member k."""
    cfg = _cfg(synth_small, tmp_path / "ens")
    cfg.train.members, cfg.train.weights_dtype = 2, "float16"
    first = load_bundle(train_run(cfg, progress=False).bundle)
    assert len(first.model.members) == 2
    for k in (0, 1):  # each member's weights, exactly, into a fresh network
        net = create_model("ft_multicnn", pretrained=False, **first.info["model"]["kwargs"]["member_kwargs"])
        report = load_matching(net, first, first.encoder.feature_names, member=k)
        assert not report["skipped"] and not report["adapted"]
        for key, value in first.model.members[k].state_dict().items():
            assert torch.equal(net.state_dict()[key], value), (k, key)

    tuned_cfg = _cfg(synth_small, tmp_path / "tuned")
    tuned_cfg.model.init = str(first.path)
    asked: list[int] = []
    real = finetune.load_matching
    monkeypatch.setattr(finetune, "load_matching", lambda net, b, f, member=0: asked.append(member) or real(net, b, f, member))
    tuned = train_run(tuned_cfg, progress=False)
    assert asked == [0, 1]  # member k from the bundle's member k
    assert tuned.metrics["init"]["weights"]["skipped"] == 0
    assert set(tuned.metrics["init"]["weights_by_member"]) == {"0", "1"}
    # what the bundle does at inference carries over: float16 weights, its views
    assert b_info(tuned.bundle)["weights_dtype"] == "float16"
    tuned_cfg.train.members = 3
    with pytest.raises(ConfigError, match="seed ensemble of 2"):
        train_run(tuned_cfg, progress=False)
    b = load_bundle(tuned.bundle)
    assert b.info["model"]["name"] == "ensemble" and len(b.model.members) == 2
    assert [m["seed"] for m in tuned.metrics["members"]] == [0, 1]
