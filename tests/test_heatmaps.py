"""The heatmap stage: per fold, the CAM backbone sees only that fold's training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dermfuse.config import RunConfig
from dermfuse.data.cache import build_cache
from dermfuse.data.splits import kfold, validation_split
from dermfuse.runs.holdout import load_cohort
from dermfuse.explain.heatmap_input import cached_maps, render_input
from dermfuse.training.heatmap_stage import heatmap_stage


@pytest.fixture(scope="module")
def cohort(synth_small):
    return load_cohort(synth_small, progress=False)


def test_no_test_lesion_trains_its_fold_cam_backbone(cohort, tmp_path):
    cfg = RunConfig()
    cfg.cam.backbone, cfg.cam.epochs, cfg.model.pretrained = "cnn", 1, False
    cfg.model.input = "heatmap"
    cfg.train.batch_size = 32
    table, y = cohort.table, cohort.labels
    cache = build_cache(table, size=32, progress=False)
    folds = kfold(table, 3, seed=0)
    for k in range(3):
        train_idx = np.flatnonzero(folds != k)
        train_idx, val_idx = validation_split(table, train_idx, fraction=0.15, seed=0)
        stage = heatmap_stage(cfg, table, y, cohort.classes, cache.images, train_idx, val_idx,
                              tmp_path / f"fold{k}", cache_key=cache.key, progress=False)
        trained = set(pd.read_csv(tmp_path / f"fold{k}" / "cam_training_ids.csv")["image_id"])
        test_ids = set(table["image_id"][folds == k])
        test_lesions = set(table["lesion_id"][folds == k])
        trained_lesions = set(table.set_index("image_id").loc[sorted(trained), "lesion_id"])
        assert trained and not (trained & test_ids)
        assert not (trained_lesions & test_lesions)
        assert stage.inputs.shape == (len(table), 32, 32, 3) and stage.inputs.dtype == np.uint8
        assert 0.0 <= stage.maps.min() and stage.maps.max() <= 1.0


def test_heatmap_cache_reused(cohort):
    from dermfuse.models import create_model

    table = cohort.table
    cache = build_cache(table, size=32, progress=False)
    model = create_model("cnn", num_classes=7, pretrained=False, input_size=32).eval()
    m1, key1, reused1 = cached_maps(model, cache.images, cache.key, "gradcam", progress=False)
    m2, key2, reused2 = cached_maps(model, cache.images, cache.key, "gradcam", progress=False)
    assert key1 == key2 and not reused1 and reused2
    assert np.array_equal(m1, m2)
    other = create_model("cnn", num_classes=7, pretrained=False, input_size=32).eval()  # other weights → other key
    _, key3, _ = cached_maps(other, cache.images[:4], cache.key, "gradcam", progress=False)
    assert key3 != key1


def test_render_modes():
    images = np.full((2, 8, 8, 3), 200, np.uint8)
    maps = np.zeros((2, 8, 8), np.float32)
    maps[:, :4] = 1.0
    assert render_input("image", images, maps) is images
    masked = render_input("masked", images, maps)
    assert (masked[:, :4] == 200).all() and (masked[:, 4:] == 0).all()
    heat = render_input("heatmap", images, maps)
    assert heat.shape == images.shape and not np.array_equal(heat[:, 0], heat[:, 7])
    with pytest.raises(ValueError):
        render_input("sketch", images, maps)


def test_weights_digest_handles_batchnorm_counters():
    """BatchNorm's num_batches_tracked is a 0-dim tensor; the default CAM backbone has 49."""
    from dermfuse.explain.heatmap_input import weights_digest
    from dermfuse.models import create_model

    torch.manual_seed(0)
    a = create_model("efficientnet_lite0", num_classes=7, pretrained=False)
    b = create_model("efficientnet_lite0", num_classes=7, pretrained=False)
    assert len(weights_digest(a)) == 64 and weights_digest(a) == weights_digest(a)
    assert weights_digest(a) != weights_digest(b)
