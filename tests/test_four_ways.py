"""One run's test rows scored four ways give the same answer: the run's own
predictions.csv, ``evaluate --split-file``, ``predict`` image by image and ``POST /predict``
(the Acceptance check of the one inference engine).

Image-input runs (one model; a two-member seed ensemble): the same probabilities to 1e-5.
Heatmap-input run: the same class for every image, and predict's map and the server's map
on the same 8-bit levels. Its probabilities are compared to 1e-4 only: the maps are
quantised to 8 bits after a min-max over each image, and a batch of 64 (the run, evaluate)
rounds the CAM backbone's float arithmetic differently from a batch of 1 (predict, serve),
which can move a pixel across a level."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermfuse.config import RunConfig
from dermfuse.explain.render import colorize
from dermfuse.inference.bundle import load_bundle
from dermfuse.inference.predict import predict_one
from dermfuse.runs.cohort import load_cohort
from dermfuse.runs.holdout import evaluate_bundle, train_run
from dermfuse.runs.predictions_csv import probabilities, read_predictions
from dermfuse.serve.app import create_app

N_IMAGES = 5


def _cfg(data, out, name="cnn", members=1, input="image") -> RunConfig:
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size, cfg.out = str(data), 48, str(out)
    cfg.model.name, cfg.model.input, cfg.model.pretrained = name, input, False
    cfg.cam.backbone, cfg.cam.epochs = "cnn", 1
    cfg.train.epochs, cfg.train.batch_size, cfg.train.members, cfg.train.tta = 2, 32, members, True
    return cfg


RUNS = {"image": dict(name="cnn"), "ensemble": dict(name="cnn", members=2),
        "heatmap": dict(name="ft_multicnn", input="heatmap")}


@pytest.fixture(scope="module", params=sorted(RUNS))
def scored(request, synth_small, tmp_path_factory):
    """(kind, classes, {way: (N, C) probabilities}, predict's maps, the server's maps)."""
    out = tmp_path_factory.mktemp(request.param)
    run = train_run(_cfg(synth_small, out / "run", **RUNS[request.param]), progress=False)
    bundle = load_bundle(run.bundle)
    classes = bundle.classes
    own = read_predictions(run.run_dir / "predictions.csv").head(N_IMAGES)
    evaluate_bundle(run.bundle, synth_small, progress=False, out=out / "eval", split_file=run.run_dir / "split.csv")
    ev = read_predictions(out / "eval" / "predictions.csv").set_index("image_id").loc[own["image_id"]].reset_index()
    rows = load_cohort(synth_small, progress=False).table.set_index("image_id").loc[own["image_id"]]
    ways = {"run": probabilities(own, classes), "evaluate": probabilities(ev, classes)}
    pred_p, pred_maps, serve_p, serve_maps = [], [], [], []
    with TestClient(create_app(run.bundle)) as client:
        for _, r in rows.iterrows():
            age = None if pd.isna(r["age"]) else float(r["age"])
            sex = None if r["sex"] == "unknown" else r["sex"]
            site = None if r["site"] == "unknown" else r["site"]
            p = predict_one(bundle, r["path"], age=age, sex=sex, site=site)
            pred_p.append([p.probabilities[c] for c in classes])
            pred_maps.append(colorize(p.heatmap[None])[0])
            data = {k: str(v) for k, v in {"age": age, "sex": sex, "site": site}.items() if v is not None}
            with open(r["path"], "rb") as fh:
                res = client.post("/predict", files={"image": ("x.jpg", fh.read(), "image/jpeg")}, data=data)
            assert res.status_code == 200, res.text
            body = res.json()
            serve_p.append([body["probabilities"][c] for c in classes])
            serve_maps.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(body["map_png"]))).convert("RGB")))
    ways["predict"], ways["serve"] = np.array(pred_p), np.array(serve_p)
    return request.param, classes, ways, np.array(pred_maps), np.array(serve_maps)


def test_four_ways_give_the_same_answer(scored):
    kind, classes, ways, pred_maps, serve_maps = scored
    ref = ways["run"]
    assert ref.shape == (N_IMAGES, len(classes))
    tol = 1e-4 if kind == "heatmap" else 1e-5
    for way, p in ways.items():
        np.testing.assert_allclose(p, ref, atol=tol, err_msg=f"{kind}: {way} vs the run's predictions.csv")
        assert (p.argmax(1) == ref.argmax(1)).all(), f"{kind}: {way} answers another class"
    np.testing.assert_array_equal(pred_maps, serve_maps)  # predict and serve: the same 8-bit map
