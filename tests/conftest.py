"""Shared fixtures: a private cache root, small synthetic data sets, one thread for torch."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _cache_root(tmp_path_factory):
    """Tests never touch the user's cache."""
    if "DERMFUSE_CACHE_KEEP" not in os.environ:
        os.environ["DERMFUSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A small SYNTHETIC HAM10000-layout data set (with planted defects)."""
    from dermfuse.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", n=160, seed=1, defects=True)
