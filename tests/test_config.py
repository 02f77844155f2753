import pytest

from dermfuse.config import RunConfig, apply_overrides, config_from_dict, config_to_dict, load_config, save_config
from dermfuse.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig()
    cfg.model.name = "cnn"
    cfg.train.epochs = 3
    save_config(cfg, tmp_path / "c.yaml")
    assert config_to_dict(load_config(tmp_path / "c.yaml")) == config_to_dict(cfg)


def test_unknown_key_is_an_error(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="unknown"):
        config_from_dict({"nonsense": {}})


def test_overrides_parse_types():
    cfg = apply_overrides(RunConfig(), ["train.epochs=7", "train.lr=0.01", "model.use_meta=false", "data.format=ham10000"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01 and cfg.model.use_meta is False
    assert cfg.data.format == "ham10000"
    with pytest.raises(ConfigError):
        apply_overrides(RunConfig(), ["train.nope=1"])
    with pytest.raises(ConfigError):
        apply_overrides(RunConfig(), ["model.use_meta=maybe"])


def test_values_take_the_type_of_their_default(tmp_path):
    """YAML reads 1e-3 as a string; a run must get a float, and nonsense must fail early."""
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  epochs: '4'\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float) and cfg.train.epochs == 4
    assert apply_overrides(RunConfig(), ["cam.lr=5e-4"]).cam.lr == 0.0005
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(RunConfig(), ["train.epochs=ten"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_column_map_from_set_and_yaml(tmp_path):
    cfg = apply_overrides(RunConfig(), ["data.column_map={image_id: file, label: diagnosis}"])
    assert cfg.data.column_map == {"image_id": "file", "label": "diagnosis"}
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").data.column_map == {"image_id": "file", "label": "diagnosis"}
