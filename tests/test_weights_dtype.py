"""train.weights_dtype float16: the bundle stores the classifier at half precision (half the
file), the run scores what it stores, and loading computes in float32."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from _bundles import rescore_run
from dermfuse.config import RunConfig
from dermfuse.errors import BundleError, ConfigError
from dermfuse.inference.bundle import load_bundle, round_weights
from dermfuse.models import create_model
from dermfuse.runs.holdout import train_run

pytestmark = pytest.mark.filterwarnings("ignore:The least populated class")


def _cfg(data, out, dtype: str, members: int = 1) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size = str(data), 32
    cfg.model.name, cfg.model.pretrained = "ft_multicnn", False
    cfg.train.epochs, cfg.train.tta, cfg.train.calibration = 1, True, "prior-temperature"
    cfg.train.members, cfg.train.weights_dtype = members, dtype
    cfg.out = str(out)
    return cfg


@pytest.fixture(scope="module")
def runs(synth_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dtype")
    return {d: train_run(_cfg(synth_small, tmp / d, d, members=2), progress=False) for d in ("float32", "float16")}


def test_a_half_precision_bundle_is_half_the_file_and_says_so(runs):
    full, half = runs["float32"].bundle, runs["float16"].bundle
    info_full = json.loads((full / "bundle.json").read_text())
    info_half = json.loads((half / "bundle.json").read_text())
    assert "weights_dtype" not in info_full and info_half["weights_dtype"] == "float16"
    tensors = load_file(str(half / "model.safetensors"))
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert any(t.dtype == torch.int64 for t in tensors.values())  # BatchNorm's counters stay integers
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.49 < ratio < 0.52, ratio
    assert info_half["model_id"] != info_full["model_id"]
    model = load_bundle(half).model
    assert all(p.dtype == torch.float32 for p in model.parameters())  # computes in float32


def test_the_run_scores_exactly_what_the_bundle_computes(runs, synth_small, tmp_path):
    """The half run's metrics are the stored bundle's: its test predictions come back from
    `evaluate` on the bundle, and they differ from the full-precision run's (rounded, not ignored)."""
    half = runs["float16"]
    ours, again, table = rescore_run(half, synth_small, tmp_path)
    np.testing.assert_allclose(ours, again, atol=1e-6)
    full = pd.read_csv(runs["float32"].run_dir / "predictions.csv").set_index("image_id").loc[table.index]
    cols = [c for c in table.columns if c.startswith("p_")]
    diff = np.abs(full[cols].to_numpy() - ours).max()
    assert 0 < diff < 0.02, diff


def test_round_weights_rounds_in_place_and_refuses_an_overflow():
    torch.manual_seed(0)
    net = create_model("ft_multicnn", 7, meta_dim=4, pretrained=False, input_size=32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    round_weights(net, "float16")
    after = net.state_dict()
    for k, v in after.items():
        assert v.dtype == before[k].dtype
        if v.is_floating_point():
            assert torch.equal(v, before[k].half().float()), k
    assert any(not torch.equal(after[k], before[k]) for k in after if after[k].is_floating_point())
    with torch.no_grad():
        next(net.parameters())[0] = 1e6
    with pytest.raises(ValueError, match="beyond its range"):
        round_weights(net, "float16")


def test_bad_weights_dtypes_are_refused(runs, tmp_path):
    from dermfuse.config import apply_overrides

    with pytest.raises(ConfigError, match="weights_dtype"):
        apply_overrides(RunConfig(), {"train.weights_dtype": "int8"})
    import shutil

    bad = tmp_path / "b"
    shutil.copytree(runs["float16"].bundle, bad)
    info = json.loads((bad / "bundle.json").read_text())
    (bad / "bundle.json").write_text(json.dumps({**info, "weights_dtype": "bfloat8"}))
    with pytest.raises(BundleError, match="weights_dtype 'bfloat8'"):
        load_bundle(bad)


def test_a_released_half_ensemble_keeps_its_weights_and_says_what_it_is(runs, tmp_path):
    from dermfuse.runs.release import release_run

    res = release_run(runs["float16"].run_dir, tmp_path / "released", progress=False)
    info = json.loads((tmp_path / "released" / "bundle.json").read_text())
    source = json.loads((runs["float16"].bundle / "bundle.json").read_text())
    assert info["model_id"] == source["model_id"] == res["model_id"]  # the weights are copied unchanged
    assert info["weights_dtype"] == "float16"
    card = info["model_card"]
    assert card["name"].startswith("dermfuse ft_multicnn, a seed ensemble of 2, 32 px")
    assert card["training"]["members"] == 2 and card["training"]["weights_dtype"] == "float16"
