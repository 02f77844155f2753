"""Bundles: round trip, and a clear BundleError for truncated, edited or foreign files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dermfuse.inference.bundle import load_bundle, save_bundle
from dermfuse.data.encode import MetadataEncoder
from dermfuse.errors import BundleError
from dermfuse.models import create_model


def _table():
    return pd.DataFrame({"image_id": ["a", "b", "c"], "age": [30.0, np.nan, 70.0],
                         "sex": ["male", "female", "unknown"], "site": ["back", "face", "unknown"]})


@pytest.fixture
def bundle_dir(tmp_path):
    enc = MetadataEncoder().fit(_table())
    torch.manual_seed(0)
    kw = {"num_classes": 7, "meta_dim": enc.n_features, "input_size": 32}
    model = create_model("ft_multicnn", pretrained=False, **kw).eval()
    return save_bundle(tmp_path / "b", model=model, model_name="ft_multicnn", model_kwargs=kw,
                       classes=list("abcdefg"), encoder=enc, image_size=32), model, enc


def test_round_trip_same_outputs(bundle_dir):
    path, model, enc = bundle_dir
    b = load_bundle(path)
    x = torch.rand(2, 3, 32, 32)
    m = torch.as_tensor(enc.transform(_table())[:2])
    with torch.no_grad():
        assert torch.equal(model(x, m), b.model(x, m))
    assert b.classes == list("abcdefg") and b.image_size == 32
    assert b.info["model_card"]["intended_use"].startswith("Research")


def test_loading_never_unpickles(bundle_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", boom)
    load_bundle(bundle_dir[0])


def test_truncated_weights(bundle_dir):
    w = bundle_dir[0] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated|checksum"):
        load_bundle(bundle_dir[0])


def test_edited_json(bundle_dir):
    meta = bundle_dir[0] / "bundle.json"
    meta.write_text(meta.read_text()[:-20])
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(bundle_dir[0])


def test_foreign_and_missing(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "bundle.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(BundleError, match="not a dermfuse bundle"):
        load_bundle(tmp_path / "x")
    (bundle_dir[0] / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_dir[0])


def test_weights_swapped_for_other_architecture(bundle_dir, tmp_path):
    path = bundle_dir[0]
    info = json.loads((path / "bundle.json").read_text())
    info["model"]["name"] = "cnn"
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="do not fit|cannot rebuild"):
        load_bundle(path)
