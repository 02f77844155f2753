"""The native aspect ratio: ``data.image_size: [h, w]`` from the config, the command line
and bundle.json through the augmentation, the test-time views, a run, its bundle, the
predictor's heatmaps, the ONNX export and the web service's /model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dermfuse.config import RunConfig, apply_overrides, config_from_dict
from dermfuse.errors import BundleError, ConfigError
from dermfuse.image_size import canonical_size, parse_size, size_hw, size_json, size_text
from dermfuse.preprocess import BatchAugmentation, Transpose, train_augmentation, tta_views

torch.set_num_threads(1)
H, W = 48, 64  # 3:4, both sides divisible by 8


def test_a_size_is_a_side_or_height_and_width():
    assert size_hw(128) == (128, 128) and size_hw((120, 160)) == (120, 160) and size_hw([120, 160]) == (120, 160)
    assert canonical_size([128, 128]) == 128 and canonical_size([120, 160]) == (120, 160)
    assert size_json((120, 160)) == [120, 160] and size_json(128) == 128
    assert size_text((120, 160)) == "120x160" and size_text(128) == "128"
    assert parse_size("120x160") == (120, 160) and parse_size("128") == 128 and parse_size("64X64") == 64
    for bad in (0, -1, 1.5, True, (1, 2, 3), (120.0, 160.0), "abc"):
        with pytest.raises(ValueError):
            size_hw(bad) if not isinstance(bad, str) else parse_size(bad)


@pytest.mark.parametrize("value, want", [("120x160", [120, 160]), ("[120, 160]", [120, 160]), ("128", 128),
                                         ("[96, 96]", 96), ("null", None)])
def test_the_config_takes_a_side_or_height_and_width(value, want):
    cfg = apply_overrides(RunConfig(), [f"data.image_size={value}"])
    assert cfg.data.image_size == want
    assert config_from_dict({"config_version": 2, "data": {"image_size": [120, 160]}}).data.image_size == [120, 160]


@pytest.mark.parametrize("value", ["abc", "[1, 2, 3]", "12.5", "[120, 160.5]", "true"])
def test_a_mistyped_size_is_a_config_error_that_says_what_is_expected(value):
    with pytest.raises(ConfigError, match=r"data.image_size: expected a side in px \(128\) or \[height, width\]"):
        apply_overrides(RunConfig(), [f"data.image_size={value}"])


def test_a_side_under_8_is_refused_before_any_image_is_read():
    from dermfuse.runs.config_checks import check_config

    cfg = apply_overrides(RunConfig(), ["data.image_size=[4, 64]"])
    with pytest.raises(ConfigError, match="at least 8 a side"):
        check_config(cfg)


def test_the_command_line_takes_height_x_width():
    from dermfuse.cli import build_parser  # noqa: PLC0415

    args = build_parser().parse_args(["train", "data", "--image-size", "120x160"])
    assert args.image_size == [120, 160]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "data", "--image-size", "120by160"])


def test_a_non_square_image_is_never_transposed_nor_squashed():
    img = torch.randint(0, 256, (3, H, W), dtype=torch.uint8)
    assert torch.equal(Transpose(p=1.0)(img), img)  # its symmetries are the flips
    sq = torch.randint(0, 256, (3, H, H), dtype=torch.uint8)
    assert torch.equal(Transpose(p=1.0)(sq), sq.transpose(-2, -1))
    torch.manual_seed(0)
    aug = train_augmentation((H, W))
    assert all(aug(img).shape == (3, H, W) for _ in range(20))


def test_the_batch_recipe_on_a_4_3_batch_keeps_its_shape_and_shifts_by_its_height_down():
    aug = BatchAugmentation()
    g = torch.Generator().manual_seed(0)
    params = aug.sample(2000, g, width=W, height=H)
    # RandomAffine's translate: a fraction (0.1) of the width across, of the height down
    assert params["tx"].abs().max() <= 0.1 * W + 0.5 and params["tx"].abs().max() > 0.1 * H + 1
    assert params["ty"].abs().max() <= 0.1 * H + 0.5
    images = torch.randint(0, 256, (6, 3, H, W), dtype=torch.uint8)
    out = aug(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # transpose only: a square batch is transposed, a 4:3 one is left alone
    only = {k: torch.zeros_like(v) for k, v in aug.sample(6, torch.Generator().manual_seed(2)).items()}
    only["transpose"] = torch.ones(6, dtype=torch.bool)
    only["scale"] = torch.ones(6)
    assert torch.equal(aug.apply(images, only), images)
    sq = images[..., :H]
    assert torch.equal(aug.apply(sq, only), sq.transpose(-2, -1))
    assert BatchAugmentation(size=(24, 32))(images).shape == (6, 3, 24, 32)


def test_a_4_3_batch_has_the_four_flips_as_its_test_time_views():
    x = torch.rand(2, 3, H, W)
    views = tta_views(x)
    assert len(views) == 4 and all(v.shape == x.shape for v in views)
    assert len(tta_views(torch.rand(2, 3, H, H))) == 5


def test_the_papers_conv_branch_flattens_height_by_width():
    from dermfuse.models import create_model

    net = create_model("ft_multicnn", 7, meta_dim=5, pretrained=False, input_size=[H, W]).eval()
    assert net.image_branch.num_features == 128 * (H // 8) * (W // 8)
    with torch.no_grad():
        assert net(torch.rand(2, 3, H, W), torch.zeros(2, 5)).shape == (2, 7)
    with pytest.raises(ValueError, match=f"built for {H}x{W}"):
        net(torch.rand(2, 3, W, H), torch.zeros(2, 5))


@pytest.fixture(scope="module")
def wide_run(synth_small, tmp_path_factory):
    """A short run at 48x64 on the synthetic data (the paper's conv branch, image input)."""
    from dermfuse.runs.holdout import train_run

    cfg = RunConfig()
    out = tmp_path_factory.mktemp("wide") / "run"
    cfg.data.path, cfg.out = str(synth_small), str(out)
    cfg = apply_overrides(cfg, [f"data.image_size={H}x{W}"])
    cfg.model.pretrained = False
    cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = 1, 32, True
    return train_run(cfg, progress=False)


def test_a_run_at_height_by_width_writes_a_bundle_that_says_so(wide_run):
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predictor import Predictor

    info = json.loads((wide_run.bundle / "bundle.json").read_text())
    assert info["preprocessing"]["image_size"] == [H, W]
    assert info["model"]["kwargs"]["input_size"] == [H, W]
    bundle = load_bundle(wide_run.bundle)
    assert bundle.image_size == (H, W)
    engine = Predictor.from_bundle(bundle)
    picture = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)  # a 4:3 picture
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    image = engine.prepare_image(buf.getvalue())
    assert image.shape == (H, W, 3)
    out = engine.run(image[None], engine.encode_meta(age=50, sex="male", site="back"), explain=True)
    assert out.proba.shape == (1, len(bundle.classes)) and np.isclose(out.proba.sum(), 1, atol=1e-5)
    assert out.maps.shape == (1, H, W)


def test_a_bundle_whose_size_disagrees_with_its_model_is_refused(wide_run, tmp_path):
    import shutil

    from dermfuse.inference.bundle import load_bundle

    bad = tmp_path / "bad"
    shutil.copytree(wide_run.bundle, bad)
    info = json.loads((bad / "bundle.json").read_text())
    info["preprocessing"]["image_size"] = [W, H]  # the model was built for H x W
    (bad / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match=f"image_size is {W}x{H} but the model was built for input_size {H}x{W}"):
        load_bundle(bad)
    info["preprocessing"]["image_size"] = [H, W, 3]
    (bad / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match=r"expected a side in px or \[height, width\]"):
        load_bundle(bad)


def test_the_export_of_a_4_3_bundle_matches_pytorch_and_lists_no_transpose(wide_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dermfuse.export.onnx import export_onnx
    from dermfuse.export.runtime import OnnxPredictor
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predict import predict_arrays

    export_onnx(wide_run.bundle, tmp_path / "onnx", progress=False)
    spec = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert [v["name"] for v in spec["views"]["list"]] == ["identity", "hflip", "vflip", "hvflip"]
    assert spec["preprocessing"]["resize"]["size"] == [H, W]
    assert spec["graphs"]["classifier"]["inputs"][0]["shape"] == ["batch", 3, H, W]
    bundle = load_bundle(wide_run.bundle)
    images = np.random.default_rng(1).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    meta = np.stack([bundle.encoder.encode_one(35, "male", "back")] * 3)[:, : bundle.model_meta_dim]
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "onnx").predict(images, meta),
                               predict_arrays(bundle, images, meta), atol=1e-4)


def test_the_service_tells_the_page_its_height_and_width(wide_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dermfuse.serve.app import create_app

    with TestClient(create_app(wide_run.bundle)) as client:
        body = client.get("/model").json()
    assert body["image_size"] == [H, W]


def test_explain_eval_scores_a_4_3_bundle(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _bundles import make_bundle

    from dermfuse.data.synth import make_synthetic
    from dermfuse.runs.explain_eval import explain_eval

    data = make_synthetic(tmp_path / "data", n=14, seed=2, masks=True)
    bundle = make_bundle(tmp_path / "bundle", model="ft_multicnn", image_size=(24, 32))
    res = explain_eval(bundle, data, methods=["gradcam"], n_images=6, steps=4, n_boot=20, batch_size=3,
                       progress=False)
    assert res["image_size"] == [24, 32] and res["images"] == 6
    assert 0 < res["border_area"] < 1
    assert 0 <= res["methods"]["gradcam"]["deletion_auc"]["mean"] <= 1


def test_data_augment_previews_at_the_runs_size(synth_small, tmp_path):
    from dermfuse.cli import main

    out = tmp_path / "aug.png"
    assert main(["data", "augment", str(synth_small), "--n", "2", "--image-size", "48x64", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
