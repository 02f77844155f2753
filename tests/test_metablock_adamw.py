"""model.fusion=metablock (metadata-gated image features) and train.optimizer=adamw
(decoupled weight decay): the layer against its formula, the optimiser against what
decoupling means, and both through a run, its bundle and the ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dermfuse.config import RunConfig, TrainConfig, apply_overrides
from dermfuse.errors import ConfigError
from dermfuse.inference.bundle import load_bundle
from dermfuse.models import create_model
from dermfuse.models.fusion import MetaBlock
from dermfuse.runs.holdout import train_run
from dermfuse.training.loop import make_optimizer

torch.set_num_threads(1)
N_CLASSES, META_DIM, B = 7, 5, 4


def _metablock_model(**kw) -> nn.Module:
    return create_model("ft_multicnn", N_CLASSES, meta_dim=META_DIM, pretrained=False, input_size=64,
                        fusion="metablock", **kw)


def test_metablock_is_the_gate_of_its_formula():
    torch.manual_seed(0)
    block = MetaBlock(6, META_DIM).eval()
    for bn in (block.scale[1], block.shift[1]):  # non-trivial running statistics
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x, meta = torch.randn(B, 6), torch.randn(B, META_DIM)

    def linear_bn(seq: nn.Sequential) -> torch.Tensor:  # Linear then BatchNorm1d in eval, by hand
        lin, bn = seq
        z = meta @ lin.weight.T + lin.bias
        return (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias

    with torch.no_grad():
        f, g = linear_bn(block.scale), linear_bn(block.shift)
        assert f.shape == g.shape == (B, 6)
        want = 1 / (1 + torch.exp(-(torch.tanh(f * x) + g)))
        got = block(x, meta)
    assert torch.allclose(got, want, atol=1e-6)
    assert (got > 0).all() and (got < 1).all()


def test_metablock_model_gates_instead_of_concatenating():
    model = _metablock_model(image_backbone="efficientnet_lite0").eval()
    assert model.fusion == "metablock" and isinstance(model.meta_branch, MetaBlock)
    assert model.head.in_features == 1280  # gated image features only, no 64 metadata features
    image, meta = torch.rand(B, 3, 64, 64), torch.randn(B, META_DIM)
    with torch.no_grad():
        out = model(image, meta)
        assert out.shape == (B, N_CLASSES)
        assert not torch.allclose(out, model(image, meta + 1))  # the metadata matters
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        model(image, meta[:, :3])


def test_metablock_model_trains_and_grad_cam_reaches_its_layer():
    model = _metablock_model().train()
    image, meta = torch.rand(B, 3, 64, 64), torch.randn(B, META_DIM)
    seen = {}

    def hook(module, inputs, output):
        output.register_hook(lambda g: seen.setdefault("g", g))  # returns None: the output stays

    model.cam_layer.register_forward_hook(hook)
    loss = nn.functional.cross_entropy(model(image, meta), torch.arange(B) % N_CLASSES)
    loss.backward()
    assert seen["g"].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.meta_branch.parameters() if p.ndim > 1)


def test_unknown_fusion_is_refused_by_the_model_and_the_config():
    with pytest.raises(ValueError, match="metablock"):
        create_model("ft_multicnn", N_CLASSES, meta_dim=META_DIM, pretrained=False, input_size=64, fusion="sum")
    with pytest.raises(ConfigError, match="model.fusion"):
        apply_overrides(RunConfig(), ["model.fusion=sum"])
    with pytest.raises(ConfigError, match="train.optimizer"):
        apply_overrides(RunConfig(), ["train.optimizer=sgd"])


def test_without_metadata_the_fusion_choice_is_moot():
    model = create_model("ft_multicnn", N_CLASSES, meta_dim=0, use_meta=False, pretrained=False,
                         input_size=64, fusion="metablock")
    assert model.meta_branch is None and model(torch.rand(2, 3, 64, 64), None).shape == (2, N_CLASSES)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_choice_and_where_the_decay_goes(name):
    """With a zero loss gradient AdamW shrinks only the weight matrices, by lr * wd exactly,
    and leaves biases and norms alone; Adam's L2 term goes into the gradient of every
    parameter and through the adaptive step, which moves each by about lr against its sign."""
    net, lr, wd = _net(), 0.01, 0.1
    cfg = TrainConfig(lr=lr, weight_decay=wd, optimizer=name)
    opt = make_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.AdamW if name == "adamw" else torch.optim.Adam)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for k, p in net.named_parameters():
        w = before[k]
        if name == "adam":
            assert torch.allclose(p.detach(), w - lr * torch.sign(w), atol=1e-4), k
        elif p.ndim == 1:
            assert torch.equal(p.detach(), w), k
        else:
            assert torch.allclose(p.detach(), w * (1 - lr * wd), atol=1e-7), k


def test_adamw_without_decay_is_adam():
    a, b = _net(), _net()
    oa, ob = make_optimizer(a, TrainConfig(lr=0.01)), make_optimizer(b, TrainConfig(lr=0.01, optimizer="adamw"))
    x = torch.randn(8, 4)
    for net, opt in ((a, oa), (b, ob)):
        for _ in range(3):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_negative_weight_decay_is_a_config_error(synth_small, tmp_path):
    cfg = _cfg(synth_small, tmp_path / "bad")
    cfg.train.weight_decay = -0.1
    with pytest.raises(ConfigError, match="weight_decay"):
        train_run(cfg, progress=False)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def _cfg(data, out) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size, cfg.out = str(data), 48, str(out)
    cfg.model.pretrained = False
    cfg.train.epochs, cfg.train.batch_size = 2, 32
    return cfg


def test_a_metablock_adamw_run_writes_a_bundle_that_rebuilds_and_exports(synth_small, tmp_path):
    cfg = _cfg(synth_small, tmp_path / "run")
    cfg.model.fusion, cfg.train.optimizer, cfg.train.weight_decay = "metablock", "adamw", 0.05
    done = train_run(cfg, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["optimizer"] == "adamw"
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [0.05, 0.0]
    bundle = load_bundle(done.bundle)
    assert bundle.info["model"]["kwargs"]["fusion"] == "metablock"
    assert isinstance(bundle.model.meta_branch, MetaBlock)
    ort = pytest.importorskip("onnxruntime")  # noqa: F841
    pytest.importorskip("onnx")
    from dermfuse.export.onnx import export_onnx
    from dermfuse.export.runtime import OnnxPredictor
    from dermfuse.inference.predict import predict_arrays

    export_onnx(done.bundle, tmp_path / "onnx", progress=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    meta = np.stack([bundle.encoder.encode_one(a, s, site) for a, s, site in
                     ((35, "male", "back"), (None, None, None), (70, "female", "face"))])[:, : bundle.model_meta_dim]
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "onnx").predict(images, meta),
                               predict_arrays(bundle, images, meta), atol=1e-4)


def test_concat_bundles_keep_their_kwargs():
    """A concat model's kwargs carry no fusion key, so bundles written before the option
    (and by older dermfuse) rebuild exactly as they did."""
    from dermfuse.runs.config_checks import model_kwargs

    cfg = RunConfig()
    assert "fusion" not in model_kwargs(cfg, N_CLASSES, META_DIM)
    cfg.model.fusion = "metablock"
    assert model_kwargs(cfg, N_CLASSES, META_DIM)["fusion"] == "metablock"


def test_fine_tuning_takes_the_bundles_fusion():
    """--init: the bundle's fusion wins over the config's, and a bundle without the key
    (concat, or written before the option) resets a metablock config to concat."""
    from types import SimpleNamespace

    from dermfuse.training.finetune import apply_init_architecture

    def bundle(**kw):
        return SimpleNamespace(info={"model": {"name": "ft_multicnn", "kwargs": {"use_meta": True, **kw}}},
                               input_mode="image", image_size=128, resize_method="bilinear", tta=False, tta_views=0)

    cfg = RunConfig()
    changed = apply_init_architecture(cfg, bundle(fusion="metablock"))
    assert cfg.model.fusion == "metablock" and any("model.fusion" in c for c in changed)
    changed = apply_init_architecture(cfg, bundle())
    assert cfg.model.fusion == "concat" and any("'metablock' -> 'concat'" in c for c in changed)
