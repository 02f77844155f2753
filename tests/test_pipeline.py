"""End to end on small synthetic data: train → run directory → bundle → evaluate / predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermfuse.inference.bundle import load_bundle
from dermfuse.config import RunConfig
from dermfuse.runs.holdout import evaluate_bundle, train_run
from dermfuse.inference.predict import predict_one


def _cfg(data, out, **model) -> RunConfig:
    cfg = RunConfig()
    cfg.data.path = str(data)
    cfg.data.image_size = 48
    cfg.model.pretrained = False
    for k, v in model.items():
        setattr(cfg.model, k, v)
    cfg.train.epochs = 2
    cfg.train.batch_size = 32
    cfg.cam.backbone = "cnn"
    cfg.cam.epochs = 1
    cfg.out = str(out)
    return cfg


@pytest.fixture(scope="module")
def image_run(synth_small, tmp_path_factory):
    cfg = _cfg(synth_small, tmp_path_factory.mktemp("run") / "cnn", name="cnn")
    cfg.train.tta = True
    return train_run(cfg, progress=False)


@pytest.fixture(scope="module")
def heatmap_run(synth_small, tmp_path_factory):
    cfg = _cfg(synth_small, tmp_path_factory.mktemp("run") / "hm", name="ft_multicnn", input="heatmap")
    return train_run(cfg, progress=False)


def test_run_directory_holds_everything(image_run):
    d = image_run.run_dir
    for name in ("config.yaml", "cleaning_report.json", "split.csv", "history.json", "metrics.json",
                 "predictions.csv", "report.html", "bundle/model.safetensors", "bundle/bundle.json",
                 "plots/curves.png", "plots/confusion_counts.png", "plots/roc.png", "plots/reliability.png"):
        assert (d / name).is_file(), name
    history = json.loads((d / "history.json").read_text())
    assert [h["epoch"] for h in history][:2] == [1, 2]  # counted from 1, as the progress bar shows
    html = (d / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # curves, 2 confusion matrices, ROC, reliability
    assert "SYNTHETIC" in html and "Cleaning report" in html and "balanced_accuracy" in html


def test_split_is_lesion_grouped(image_run, synth_small):
    split = pd.read_csv(image_run.run_dir / "split.csv")
    meta = pd.read_csv(synth_small / "metadata.csv").drop_duplicates("image_id")
    df = split.merge(meta[["image_id", "lesion_id"]], on="image_id")
    parts_per_lesion = df.groupby("lesion_id")["part"].nunique()
    assert (parts_per_lesion == 1).all()
    assert set(df["part"]) == {"train", "val", "test"}


def test_predictions_match_metrics(image_run):
    pred = pd.read_csv(image_run.run_dir / "predictions.csv")
    acc = float((pred["pred"] == pred["label"]).mean())
    assert acc == pytest.approx(image_run.metrics["accuracy"])
    p = pred.filter(like="p_").to_numpy()
    assert np.allclose(p.sum(1), 1, atol=1e-4)


def test_cleaning_report_names_planted_defects(image_run):
    rep = json.loads((image_run.run_dir / "cleaning_report.json").read_text())
    reasons = {d["reason"] for d in rep["dropped"]}
    assert {"duplicate_row", "duplicate_image"} <= reasons
    assert reasons & {"unreadable_image", "truncated_image"}


def test_evaluate_bundle_on_the_data(image_run, synth_small, tmp_path):
    m = evaluate_bundle(image_run.bundle, synth_small, progress=False, out=tmp_path)
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "melanoma_sensitivity", "per_class", "n_images"):
        assert k in m
    assert (tmp_path / "predictions.csv").is_file()


def test_evaluate_on_the_runs_test_part_reproduces_its_metrics(image_run, synth_small, tmp_path):
    """`evaluate --split-file RUN/split.csv` scores exactly the held-out rows: the run's own numbers."""
    split = image_run.run_dir / "split.csv"
    m = evaluate_bundle(image_run.bundle, synth_small, progress=False, out=tmp_path, split_file=split)
    ref = json.loads((image_run.run_dir / "metrics.json").read_text())
    assert m["n_images"] == ref["n_images"] == (pd.read_csv(split)["part"] == "test").sum()
    for k in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert m[k] == pytest.approx(ref[k], abs=1e-9)
    assert m["auc_macro"] == pytest.approx(ref["auc_macro"], abs=1e-4)
    val = evaluate_bundle(image_run.bundle, synth_small, progress=False, split_file=split, part="val")
    assert val["n_images"] == (pd.read_csv(split)["part"] == "val").sum()


def test_evaluate_split_file_errors(image_run, synth_small, tmp_path):
    from dermfuse.errors import DataError

    bad = tmp_path / "bad.csv"
    bad.write_text("id,fold\nx,1\n")
    with pytest.raises(DataError, match="expected columns image_id, part"):
        evaluate_bundle(image_run.bundle, synth_small, progress=False, split_file=bad)
    with pytest.raises(DataError, match="no rows in part 'holdout'"):
        evaluate_bundle(image_run.bundle, synth_small, progress=False, split_file=image_run.run_dir / "split.csv",
                        part="holdout")
    with pytest.raises(DataError, match="split file not found"):
        evaluate_bundle(image_run.bundle, synth_small, progress=False, split_file=tmp_path / "nope.csv")


def _first_rows(synth_small, n=4):
    from dermfuse.runs.holdout import load_cohort

    return load_cohort(synth_small, progress=False).table.head(n)


@pytest.mark.parametrize("run_name", ["image_run", "heatmap_run"])
def test_predict_equals_evaluation_path(run_name, request, synth_small, tmp_path):
    run = request.getfixturevalue(run_name)
    evaluate_bundle(run.bundle, synth_small, progress=False, out=tmp_path)
    pred = pd.read_csv(tmp_path / "predictions.csv").set_index("image_id")
    bundle = load_bundle(run.bundle)
    for _, row in _first_rows(synth_small).iterrows():
        age = None if pd.isna(row["age"]) else row["age"]
        p = predict_one(bundle, row["path"], age, row["sex"], row["site"], explain=False)
        expected = pred.loc[row["image_id"], [f"p_{c}" for c in bundle.classes]].to_numpy(float)
        # Same code path; only the batch size differs (64 vs 1), which moves float rounding.
        assert np.allclose([p.probabilities[c] for c in bundle.classes], expected, atol=1e-4)


def test_heatmap_bundle_holds_cam_backbone(heatmap_run):
    bundle = load_bundle(heatmap_run.bundle)
    assert bundle.input_mode == "heatmap" and bundle.cam_model is not None
    assert (heatmap_run.run_dir / "cam_training_ids.csv").is_file()
    row = _first_rows_path(heatmap_run)
    p = predict_one(bundle, row, 50, "male", "back", explain=True)
    assert p.overlay is not None and p.overlay.shape == (48, 48, 3) and p.overlay.dtype == np.uint8


def _first_rows_path(run):
    split = pd.read_csv(run.run_dir / "split.csv")
    cfg_path = run.run_dir / "config.yaml"
    import yaml

    data = yaml.safe_load(cfg_path.read_text())["data"]["path"]
    from pathlib import Path

    return next(Path(data, "images").glob(f"{split['image_id'].iloc[0]}.*"))


def test_bundle_reproduces_the_runs_reported_predictions(image_run, synth_small, tmp_path):
    """The run's test predictions (TTA on) come out of the saved bundle unchanged."""
    evaluate_bundle(image_run.bundle, synth_small, progress=False, out=tmp_path)
    ours = pd.read_csv(image_run.run_dir / "predictions.csv").set_index("image_id")
    again = pd.read_csv(tmp_path / "predictions.csv").set_index("image_id").loc[ours.index]
    cols = [c for c in ours.columns if c.startswith("p_")]
    assert load_bundle(image_run.bundle).tta
    assert np.allclose(ours[cols].to_numpy(), again[cols].to_numpy(), atol=1e-5)
