"""The config owns its values: closed sets are Literal fields checked when a config is
built, the CLI's choices come from them, and version-1 configs keep their meaning."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from dermfuse.config import (CONFIG_VERSION, CamMethod, DataConfig, ModelConfig, ResizeMethod, RunConfig, SplitName,
                             TrainConfig, apply_overrides, choices, config_from_dict, config_to_dict, load_config,
                             save_config)
from dermfuse.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


# --- the one check ------------------------------------------------------------------------


@pytest.mark.parametrize("doc, key", [
    ({"config_version": 2, "data": {"split": "lesions"}}, "data.split"),
    ({"train": {"balance": "smote"}}, "train.balance"),
    ({"model": {"input": "heatmaps"}}, "model.input"),
    ({"cam": {"method": "scorecam"}}, "cam.method"),
    ({"train": {"calibration": "platt"}}, "train.calibration"),
    ({"train": {"device": "tpu"}}, "train.device"),
])
def test_a_value_outside_its_literal_names_field_value_and_choices(doc, key):
    section, name = key.split(".")
    cls = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}.get(section)
    bad = doc[section][name]
    with pytest.raises(ConfigError) as e:
        config_from_dict(doc)
    msg = str(e.value)
    assert key in msg and repr(bad) in msg
    allowed = choices(cls, name) if cls else get_args(CamMethod)
    assert all(repr(v) in msg for v in allowed), msg
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # --set goes through the same check
        apply_overrides(RunConfig(), [f"{key}={bad}"])


@pytest.mark.parametrize("key,value,error", [
    ("data.image_size", "abc", r"data.image_size: expected a side in px \(128\) or \[height, width\].*got 'abc'"),
    ("data.image_size", "1.5", r"data.image_size: expected a side in px"),
    ("train.max_steps_per_epoch", "many", "train.max_steps_per_epoch: expected int"),
])
def test_fields_whose_default_is_none_are_type_checked_too(key, value, error, tmp_path):
    with pytest.raises(ConfigError, match=error):
        apply_overrides(RunConfig(), [f"{key}={value}"])
    path = tmp_path / "c.yaml"
    section, name = key.split(".")
    path.write_text(f"config_version: 2\n{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_text_fields_whose_default_is_none_keep_their_text():
    cfg = apply_overrides(RunConfig(), ["model.weights=007", "data.image_size=96", "model.image_backbone=null"])
    assert cfg.model.weights == "007" and cfg.data.image_size == 96 and cfg.model.image_backbone is None


@pytest.mark.parametrize("override,error", [
    ("data.image_size=4", "data.image_size: 4 px"),
    ("train.weight_decay=-0.01", "train.weight_decay"),
    ("train.weight_decay=.nan", "train.weight_decay"),
    ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch"),
])
def test_out_of_range_numbers_fail_before_any_image_is_read(override, error):
    from dermfuse.runs.config_checks import check_config

    cfg = apply_overrides(RunConfig(), [override])
    with pytest.raises(ConfigError, match=error):
        check_config(cfg)


def test_version_1_split_name_in_a_version_2_config_says_what_it_is_now(tmp_path):
    (tmp_path / "c.yaml").write_text("config_version: 2\ndata:\n  split: image\n")
    with pytest.raises(ConfigError, match="image-leaky"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="image-leaky"):
        apply_overrides(RunConfig(), ["data.split=image"])


def test_lookup_tables_cover_exactly_the_literals():
    from dermfuse.data.cache import RESIZE_METHODS
    from dermfuse.data.splits import SPLIT_GROUPING, SPLIT_LABELS
    from dermfuse.explain.heatmap_input import CAM_METHODS

    assert set(CAM_METHODS) == set(get_args(CamMethod))
    assert set(RESIZE_METHODS) == set(get_args(ResizeMethod))
    assert tuple(SPLIT_GROUPING) == tuple(SPLIT_LABELS) == get_args(SplitName)


def test_setting_a_renamed_field_in_python_is_an_error():
    with pytest.raises(AttributeError):
        RunConfig().seed = 3  # slots: no silent new attribute
    with pytest.raises(AttributeError):
        TrainConfig().seed = 3


# --- the CLI ------------------------------------------------------------------------------


def _train_actions() -> dict[str, argparse.Action]:
    from dermfuse.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


@pytest.mark.parametrize("dest, cls, field", [
    ("split", DataConfig, "split"), ("balance", TrainConfig, "balance"),
    ("input", ModelConfig, "input"), ("device", TrainConfig, "device"),
])
def test_cli_choices_are_the_literal_args(dest, cls, field):
    from typing import get_type_hints

    assert tuple(_train_actions()[dest].choices) == get_args(get_type_hints(cls)[field])


def test_cli_split_image_is_refused_with_its_new_name(capsys):
    from dermfuse.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--split", "image"])
    assert "image-leaky" in capsys.readouterr().err


def test_cli_seed_sets_the_split_seed_and_the_init_seed():
    from dermfuse.cli import _run_config, build_parser

    args = build_parser().parse_args(["train", "data", "--seed", "3", "--split", "lesion"])
    cfg = _run_config(args, "data", None)
    assert (cfg.data.split_seed, cfg.train.init_seed, cfg.data.split) == (3, 3, "lesion")


# --- version 1 ----------------------------------------------------------------------------

V1 = """\
seed: 3
data:
  split: lesion
model:
  input: heatmap
  cam_backbone: cnn
  cam_method: layercam
  cam_epochs: 2
  cam_lr: 0.001
train:
  seed: 7
"""


def test_version_1_config_loads_with_its_old_meaning(tmp_path):
    (tmp_path / "v1.yaml").write_text(V1)
    cfg = load_config(tmp_path / "v1.yaml")
    assert cfg.data.split == "grouped"
    assert (cfg.data.split_seed, cfg.train.init_seed) == (3, 7)
    assert (cfg.cam.backbone, cfg.cam.method, cfg.cam.epochs, cfg.cam.lr) == ("cnn", "layercam", 2, 0.001)
    assert config_from_dict({"data": {"split": "image"}}).data.split == "image-leaky"
    assert config_from_dict({"data": {"split": "auto"}}).data.split == "grouped"
    assert config_from_dict({"data": {"split": "patient"}}).data.split == "patient"
    save_config(cfg, tmp_path / "v2.yaml")  # written back as version 2, read back the same
    assert "config_version: 2" in (tmp_path / "v2.yaml").read_text()
    assert config_to_dict(load_config(tmp_path / "v2.yaml")) == config_to_dict(cfg)


def test_version_2_config_with_version_1_keys_names_the_new_ones():
    with pytest.raises(ConfigError, match=r"seed is train\.init_seed"):
        config_from_dict({"config_version": CONFIG_VERSION, "train": {"seed": 1}})
    with pytest.raises(ConfigError, match=r"cam_epochs is cam\.epochs"):
        config_from_dict({"config_version": CONFIG_VERSION, "model": {"cam_epochs": 1}})
    with pytest.raises(ConfigError, match="config_version 3"):
        config_from_dict({"config_version": 3})


def test_renamed_keys_still_work_as_overrides():
    cfg = apply_overrides(RunConfig(), ["seed=4", "train.seed=5", "model.cam_epochs=2"])
    assert (cfg.data.split_seed, cfg.train.init_seed, cfg.cam.epochs) == (4, 5, 2)


def test_version_1_cv_plan_reads_in_todays_split_names(tmp_path):
    from dermfuse.runs.cv_report import read_plan

    plan = {"kind": "cv", "folds": 5, "split": "lesion", "variants": [
        {"name": "cnn", "split": "lesion"}, {"name": "cnn@image", "split": "image"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    got = read_plan(tmp_path / "plan.json")
    assert got["split"] == "grouped" and [v["split"] for v in got["variants"]] == ["grouped", "image-leaky"]
    (tmp_path / "plan.json").write_text(json.dumps({**plan, "config_version": 2}))
    assert read_plan(tmp_path / "plan.json")["split"] == "lesion"  # version 2: lesion means lesion


# --- honest split names -------------------------------------------------------------------


def _patients_with_many_lesions() -> pd.DataFrame:
    """12 patients x 4 lesions x 2 images; a patient's lesions share one label."""
    rows = []
    for p in range(12):
        for lesion in range(4):
            for i in range(2):
                rows.append({"image_id": f"p{p}l{lesion}i{i}", "label": ("mel", "nv")[p % 2],
                             "patient_id": f"P{p}", "lesion_id": f"P{p}L{lesion}"})
    return pd.DataFrame(rows)


def _sides(split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from dermfuse.runs.cohort import holdout_split

    table = _patients_with_many_lesions()
    cfg = RunConfig()
    cfg.data.split, cfg.data.test_fraction, cfg.data.val_fraction = split, 0.25, 0.25
    train, val, test = holdout_split(cfg, table, None)
    return table.iloc[np.r_[train, val]], table.iloc[test]


def test_lesion_split_groups_by_lesion_not_patient():
    fit, test = _sides("lesion")
    assert not set(fit["lesion_id"]) & set(test["lesion_id"])
    assert set(fit["patient_id"]) & set(test["patient_id"]), "lesion split kept every patient on one side"


def test_grouped_split_groups_by_patient():
    fit, test = _sides("grouped")
    assert not set(fit["patient_id"]) & set(test["patient_id"])


def test_split_labels_say_what_groups():
    from dermfuse.runs.config_checks import split_label

    assert split_label("grouped") == "patient/lesion-grouped"
    assert split_label("lesion") == "lesion-grouped"
    assert split_label("image-leaky") == "image-level (leaky)"


# --- the CAM backbone's input size ---------------------------------------------------------


def test_bundles_hold_no_cam_image_size_and_old_ones_must_agree(tmp_path):
    from dermfuse.errors import BundleError
    from dermfuse.inference.bundle import load_bundle

    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "bundle_0_1_heatmap32", old)
    info = json.loads((old / "bundle.json").read_text())
    assert info["cam"]["image_size"] == info["preprocessing"]["image_size"] == 32
    assert load_bundle(old).cam_model is not None  # an old bundle's cam.image_size is still read
    info["cam"]["image_size"] = 64
    (old / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="cam.image_size is 64"):
        load_bundle(old)
