"""dermfuse export --format onnx: onnxruntime against the PyTorch bundle, view by view and for
the average export.json describes, for an image-input model, the heatmap-input model (CAM
backbone included) and a seed ensemble; probabilities within 1e-4, the same class on every
image, maps (before 8-bit quantisation) within 1e-4. Small random-weight bundles, 64 px."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from _bundles import lesion_image, make_encoder  # noqa: E402
from dermfuse import HAM10000_CLASSES  # noqa: E402
from dermfuse.inference.bundle import load_bundle, save_bundle, update_bundle_info  # noqa: E402
from dermfuse.evaluation.calibrate import Calibration  # noqa: E402
from dermfuse.cli import main  # noqa: E402
from dermfuse.data.cache import resize_image  # noqa: E402
from dermfuse.export.onnx import export_onnx  # noqa: E402
from dermfuse.export.runtime import OnnxPredictor  # noqa: E402
from dermfuse.explain.heatmap_input import compute_maps, render_input  # noqa: E402
from dermfuse.models import create_model  # noqa: E402
from dermfuse.models.ensemble import ENSEMBLE, build_ensemble  # noqa: E402
from dermfuse.inference.predict import explain_arrays, predict_arrays  # noqa: E402
from dermfuse.preprocess import tta_views  # noqa: E402
from dermfuse.preprocess import to_input  # noqa: E402

SIZE = 64
TOL = 1e-4
TRUST = {"format": "dermfuse-trust/1",  # the shape `dermfuse release` writes (max-probability OOD needs no file)
         "selective": {"threshold": 0.61, "coverage": 0.9, "achieved": 0.9, "n": 100, "score": "max_probability"},
         "ood": {"method": "max_probability", "threshold": -0.3, "keep": 0.95, "n_fit": 100, "n_val": 100},
         "melanoma": {"threshold": 0.18, "target_sensitivity": 0.85, "sensitivity": 0.9, "specificity": 0.7,
                      "n_mel": 10, "n": 100}}


def _randomise_bn(net: torch.nn.Module) -> None:
    """Give BatchNorm layers non-trivial statistics, so the closed form's BN folding is tested."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _fusion_kwargs(meta_dim: int) -> dict:
    return {"num_classes": len(HAM10000_CLASSES), "meta_dim": meta_dim, "image_backbone": "efficientnet_lite0",
            "dropout": 0.2}


def _calibration() -> Calibration:
    prior = np.log(np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02]))
    return Calibration(temperature=0.8, prior_shift=0.4, log_prior=prior.tolist())


def make_image_bundle(out: Path) -> Path:
    """FT-MultiCNN on EfficientNet-Lite0 (random weights), image input, TTA, calibration."""
    torch.manual_seed(0)
    enc = make_encoder()
    kw = _fusion_kwargs(enc.n_features)
    net = create_model("ft_multicnn", pretrained=False, **kw).eval()
    _randomise_bn(net)
    return save_bundle(out, model=net, model_name="ft_multicnn", model_kwargs=kw, classes=list(HAM10000_CLASSES),
                       encoder=enc, image_size=SIZE, tta=True, calibration=_calibration(),
                       training_data={"name": "untrained test bundle"})


def make_metablock_bundle(out: Path) -> Path:
    """FT-MultiCNN on Lite0 whose metadata gates the pooled features (model.fusion=metablock):
    its Grad-CAM weights differ per image."""
    torch.manual_seed(3)
    enc = make_encoder()
    kw = {**_fusion_kwargs(enc.n_features), "fusion": "metablock"}
    net = create_model("ft_multicnn", pretrained=False, **kw).eval()
    _randomise_bn(net)
    return save_bundle(out, model=net, model_name="ft_multicnn", model_kwargs=kw, classes=list(HAM10000_CLASSES),
                       encoder=enc, image_size=SIZE, tta=True, calibration=_calibration(),
                       training_data={"name": "untrained test bundle"})


def make_heatmap_bundle(out: Path) -> Path:
    """The paper's method: FT-MultiCNN (conv blocks) on jet heatmaps of a Lite0 CAM backbone."""
    torch.manual_seed(1)
    enc = make_encoder()
    kw = {"num_classes": len(HAM10000_CLASSES), "meta_dim": enc.n_features, "input_size": SIZE}
    net = create_model("ft_multicnn", pretrained=False, **kw).eval()
    cam_kw = {"num_classes": len(HAM10000_CLASSES)}
    cam = create_model("efficientnet_lite0", pretrained=False, **cam_kw).eval()
    _randomise_bn(cam)
    return save_bundle(out, model=net, model_name="ft_multicnn", model_kwargs=kw, classes=list(HAM10000_CLASSES),
                       encoder=enc, image_size=SIZE, input_mode="heatmap", cam_model=cam,
                       cam_name="efficientnet_lite0", cam_kwargs=cam_kw, tta=True,
                       calibration=_calibration(), training_data={"name": "untrained test bundle"})


def make_ensemble_bundle(out: Path) -> Path:
    """A seed ensemble of two FT-MultiCNN-on-Lite0 members."""
    torch.manual_seed(2)
    enc = make_encoder()
    kw = _fusion_kwargs(enc.n_features)
    net = build_ensemble("ft_multicnn", kw, 2).eval()
    _randomise_bn(net)
    bkw = {"member": "ft_multicnn", "member_kwargs": kw, "n_members": 2, "num_classes": len(HAM10000_CLASSES),
           "meta_dim": enc.n_features}
    return save_bundle(out, model=net, model_name=ENSEMBLE, model_kwargs=bkw, classes=list(HAM10000_CLASSES),
                       encoder=enc, image_size=SIZE, tta=False, training_data={"name": "untrained test bundle"})


def _inputs(bundle, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([resize_image(lesion_image(seed + i), SIZE) for i in range(n)])
    rows = [(35, "male", "back"), (None, None, None), (70, "female", "face"), (52, "male", "trunk"),
            (18, "female", "lower extremity"), (88, None, "upper extremity")]
    meta = np.stack([bundle.encoder.encode_one(*rows[i % len(rows)]) for i in range(n)])[:, : bundle.model_meta_dim]
    return images, meta


def _torch_views(bundle, images: np.ndarray, meta: np.ndarray) -> list[np.ndarray]:
    """The bundle's per-view softmax in PyTorch, as predict_arrays computes it."""
    if bundle.input_mode == "image":
        view = images
    else:  # what the classifier sees: the CAM backbone's map, rendered as the bundle asks
        from dermfuse.explain.heatmap_input import compute_maps, render_input

        view = render_input(bundle.input_mode, images, compute_maps(bundle.cam_model, images, method=bundle.cam_method))
    x = to_input(view)
    with torch.inference_mode():
        return [bundle.model(v, torch.as_tensor(meta)).float().softmax(1).numpy() for v in tta_views(x)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    made = {}
    for name, make in (("image", make_image_bundle), ("heatmap", make_heatmap_bundle),
                       ("ensemble", make_ensemble_bundle), ("metablock", make_metablock_bundle)):
        b = make(root / f"{name}_bundle")
        if name == "image":
            update_bundle_info(b, trust=TRUST)
        export_onnx(b, root / f"{name}_onnx", progress=False)
        made[name] = (b, root / f"{name}_onnx")
    return made


@pytest.mark.parametrize("kind", ["image", "heatmap", "ensemble", "metablock"])
def test_onnx_probabilities_match_the_bundle_view_by_view_and_averaged(exported, kind):
    path, out = exported[kind]
    bundle = load_bundle(path)
    images, meta = _inputs(bundle)
    onnx = OnnxPredictor(out)
    names = [v["name"] for v in onnx.spec["views"]["list"]]
    assert len(names) == (5 if bundle.tta else 1)
    x = onnx.to_input(onnx.render(images))
    ours = [onnx.run_view(v, meta)["probabilities"] for v in onnx.views(x, names)]
    ref = _torch_views(bundle, images, meta)[: len(names)]
    for name, a, b in zip(names, ours, ref):
        assert np.abs(a - b).max() < TOL, name
    final, expected = onnx.predict(images, meta), predict_arrays(bundle, images, meta)
    assert np.abs(final - expected).max() < TOL
    assert (final.argmax(1) == expected.argmax(1)).all()
    assert not np.allclose(onnx.predict(images, meta, calibrated=False), expected) or bundle.calibration.is_identity


@pytest.mark.parametrize("kind", ["image", "ensemble", "metablock"])
def test_onnx_heatmaps_match_grad_cam_of_every_class(exported, kind):
    path, out = exported[kind]
    bundle = load_bundle(path)
    images, meta = _inputs(bundle)
    onnx = OnnxPredictor(out)
    maps = onnx.run_view(onnx.to_input(images), meta)["heatmaps"]  # (N, C, S, S)
    assert maps.shape == (len(images), len(bundle.classes), SIZE, SIZE)
    peaks = []
    for c in (0, 4, 5):  # explain_arrays: Grad-CAM with backward passes (members averaged)
        ref = explain_arrays(bundle, images, meta, targets=[c] * len(images))
        assert np.abs(maps[:, c] - ref).max() < TOL, c
        peaks.append(ref.max())
    # real maps, not zero maps agreeing (one class's map may be all zero after the ReLU, and an
    # ensemble's mean of min-max scaled maps may peak below 1)
    assert max(peaks) > 0.3 and sum(p > 0 for p in peaks) >= 2


def test_cam_graph_gives_the_bundles_heatmap_input(exported):
    path, out = exported["heatmap"]
    bundle = load_bundle(path)
    images, _ = _inputs(bundle)
    onnx = OnnxPredictor(out)
    assert onnx.spec["render"]["mode"] == "heatmap" and len(onnx.spec["render"]["jet_lut"]) == 256
    ref_maps = compute_maps(bundle.cam_model, images)  # quantised to 256 levels
    from dermfuse.explain.gradcam import GradCAM

    with GradCAM(bundle.cam_model) as cam:
        raw = cam(to_input(images), None).numpy()  # before quantisation
    ours = onnx.cam_maps(images)
    assert np.abs(ours - raw).max() < TOL
    # the rendered classifier input: dermfuse's own pixels, but for a map value that float
    # rounding puts on the other side of a 1/255 step (at most one pixel in a thousand)
    differ = (onnx.render(images) != render_input("heatmap", images, ref_maps)).any(axis=-1)
    assert differ.mean() < 1e-3


def test_export_json_has_what_a_non_python_user_needs(exported):
    path, out = exported["image"]
    bundle = load_bundle(path)
    spec = json.loads((out / "export.json").read_text())
    assert spec["model_id"] == bundle.model_id and spec["classes"] == bundle.classes
    assert spec["trust"] == TRUST  # copied verbatim
    assert spec["preprocessing"]["resize"]["size"] == [SIZE, SIZE]
    assert [v["name"] for v in spec["views"]["list"]] == ["identity", "hflip", "vflip", "hvflip", "transpose"]
    meta = spec["metadata"]
    assert meta["features"] == bundle.encoder.feature_names and meta["sex"]["levels"] == bundle.encoder.sexes
    assert meta["age"]["mean"] == bundle.encoder.age_mean
    assert spec["calibration"]["temperature"] == bundle.calibration.temperature
    inputs = {i["name"]: i["shape"] for i in spec["graphs"]["classifier"]["inputs"]}
    assert inputs == {"image": ["batch", 3, SIZE, SIZE], "meta": ["batch", bundle.model_meta_dim]}
    # dynamic batch: one image and nine images through the same graph
    sess = ort.InferenceSession(str(out / "classifier.onnx"))
    for n in (1, 9):
        p, h = sess.run(None, {"image": np.random.rand(n, 3, SIZE, SIZE).astype(np.float32),
                               "meta": np.zeros((n, bundle.model_meta_dim), np.float32)})
        assert p.shape == (n, 7) and h.shape == (n, 7, SIZE, SIZE)


def test_int8_export_writes_smaller_graphs_that_mostly_agree(tmp_path):
    bundle = make_image_bundle(tmp_path / "b")
    assert main(["-q", "export", str(bundle), "--format", "onnx", "--out", str(tmp_path / "o"), "--int8"]) == 0
    fp32, int8 = tmp_path / "o" / "classifier.onnx", tmp_path / "o" / "classifier.int8.onnx"
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    b = load_bundle(bundle)
    images, meta = _inputs(b)
    p32 = OnnxPredictor(tmp_path / "o").predict(images, meta)
    p8 = OnnxPredictor(tmp_path / "o", int8=True).predict(images, meta)
    assert p8.shape == p32.shape and np.allclose(p8.sum(1), 1, atol=1e-4)


def test_export_of_a_missing_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "bundle not found" in capsys.readouterr().err


@pytest.mark.realdata
def test_onnx_parity_on_real_images(tmp_path):
    root = os.environ.get("DERMFUSE_HAM10000")
    if not root:
        pytest.skip("set DERMFUSE_HAM10000 to the real HAM10000 folder")
    import pandas as pd

    from dermfuse.data.cache import load_image

    table = pd.read_csv(Path(root) / "metadata.csv").head(24)
    files = [next((Path(root) / "images").glob(f"{i}.*")) for i in table["image_id"]]
    for kind, make in (("image", make_image_bundle), ("heatmap", make_heatmap_bundle)):
        b = make(tmp_path / kind)
        export_onnx(b, tmp_path / f"{kind}_onnx", progress=False)
        bundle = load_bundle(b)
        images = np.stack([resize_image(load_image(f), SIZE) for f in files])
        meta = bundle.encoder.transform(table.rename(columns={"localization": "site"}))[:, : bundle.model_meta_dim]
        ours, ref = OnnxPredictor(tmp_path / f"{kind}_onnx").predict(images, meta), predict_arrays(bundle, images, meta)
        assert np.abs(ours - ref).max() < TOL and (ours.argmax(1) == ref.argmax(1)).all()


def test_score_export_measures_int8_on_the_split_files_test_rows(tmp_path):
    import pandas as pd

    from dermfuse.data.synth import make_synthetic
    from dermfuse.export.score import score_export

    data = make_synthetic(tmp_path / "data", n=40, seed=5)
    ids = pd.read_csv(next(data.glob("*metadata*.csv")))["image_id"]
    parts = np.where(np.arange(len(ids)) % 4 == 0, "test", "train")
    pd.DataFrame({"image_id": ids, "part": parts}).to_csv(tmp_path / "split.csv", index=False)
    bundle = make_image_bundle(tmp_path / "b")
    export_onnx(bundle, tmp_path / "o", int8=True, progress=False)
    res = score_export(bundle, tmp_path / "o", data, tmp_path / "split.csv")
    assert res["rows"] == (parts == "test").sum() and res["part"] == "test"
    assert set(res["scores"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert res["scores"]["pytorch"] == res["scores"]["onnx_fp32"] and res["fp32_max_abs_diff_vs_pytorch"] < TOL
    d = res["int8_minus_fp32"]["balanced_accuracy"]
    assert d == res["scores"]["onnx_int8"]["balanced_accuracy"] - res["scores"]["onnx_fp32"]["balanced_accuracy"]
    assert res["file_bytes"]["classifier.int8.onnx"] < res["file_bytes"]["classifier.onnx"]
