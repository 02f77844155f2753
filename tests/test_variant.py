"""dermfuse.runs.variant: the one training path of holdout runs, cv folds and ablations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dermfuse.config import RunConfig
from dermfuse.runs import cv, holdout, variant
from dermfuse.runs.variant import pretrainable, takes_meta, train_variant

CLASSES = ["a", "b", "c"]


def _rows(n: int = 24, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "age": rng.integers(20, 80, n).astype(float),
                          "sex": rng.choice(["male", "female"], n), "site": rng.choice(["back", "face"], n)})
    y = np.arange(n) % 3
    images = rng.integers(0, 255, (n, size, size, 3)).astype(np.uint8)
    return table, y.astype(np.int64), images


def _cfg(use_meta: bool) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.use_meta, cfg.model.pretrained = "ft_multicnn", use_meta, False
    cfg.data.image_size = 32
    cfg.train.epochs, cfg.train.augment, cfg.train.device, cfg.train.batch_size = 1, False, "cpu", 8
    return cfg


@pytest.mark.parametrize("use_meta", [True, False])
def test_use_meta_false_gives_the_classifier_no_metadata_columns(use_meta, tmp_path):
    """The settled disagreement: holdout runs used to hand a use_meta=False FT-MultiCNN
    every metadata column (which it ignored, while its bundle asked predict for them); cv
    handed it none. None is right: the bundle then records meta_dim 0."""
    table, y, images = _rows()
    idx = np.arange(len(table))
    done = train_variant(_cfg(use_meta), table, y, CLASSES, images, idx[:16], idx[16:20], idx[20:], tmp_path,
                         progress=False)
    want = done.encoder.n_features if use_meta else 0
    assert done.meta_dim == done.kwargs["meta_dim"] == done.model.meta_dim == want
    assert want > 0 or not use_meta
    assert done.proba.shape == (4, 3) and np.allclose(done.proba.sum(1), 1, atol=1e-5)
    assert set(done.metrics) >= {"balanced_accuracy", "accuracy"}


def test_takes_meta_and_pretrainable_follow_the_registry():
    cfg = RunConfig()
    for name, meta in [("cnn", False), ("meta_mlp", True), ("ft_multicnn", True), ("resnet50", False)]:
        cfg.model.name = name
        assert takes_meta(cfg) is meta
    cfg.model.name, cfg.model.use_meta = "ft_multicnn", False
    assert not takes_meta(cfg)
    cfg.model.name, cfg.model.use_meta = "meta_mlp", False  # use_meta is the FT-MultiCNN's switch only
    assert takes_meta(cfg)
    for name, backbone, want in [("cnn", None, False), ("resnet50", None, True), ("efficientnet_lite0", None, True),
                                 ("ft_multicnn", None, False), ("ft_multicnn", "cnn", False),
                                 ("ft_multicnn", "resnet50", True), ("meta_mlp", None, False)]:
        cfg.model.name, cfg.model.image_backbone = name, backbone
        assert pretrainable(cfg) is want, (name, backbone)


def test_holdout_and_cv_train_through_the_same_function():
    assert holdout.train_variant is variant.train_variant is cv.train_variant
    assert not hasattr(holdout, "_fit_members") and not hasattr(cv, "fit")
