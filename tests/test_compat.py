"""Bundles written by dermfuse 0.1.0 (tests/fixtures, see make_fixtures.py there) load with
today's code and give the same answers for the same images: probabilities to 1e-5, the
same class, and the same explanation map (its sum to 1e-3 of a 32×32 map)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dermfuse.inference.bundle import load_bundle
from dermfuse.inference.predict import predict_one

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected_predictions.json").read_text())


def test_the_fixtures_were_written_by_an_older_version():
    assert EXPECTED["written_by"].startswith("dermfuse 0.1.0")
    for name in EXPECTED["cases"]:
        info = json.loads((FIXTURES / name / "bundle.json").read_text())
        assert info["versions"]["dermfuse"] == "0.1.0"


@pytest.mark.parametrize("name", sorted(EXPECTED["cases"]))
def test_an_old_bundle_gives_its_old_answers(name):
    bundle = load_bundle(FIXTURES / name)
    for row in EXPECTED["cases"][name]:
        p = predict_one(bundle, FIXTURES / row["image"], age=row["age"], sex=row["sex"], site=row["site"])
        got = np.array([p.probabilities[c] for c in bundle.classes])
        want = np.array([row["probabilities"][c] for c in bundle.classes])
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{name} {row['image']}")
        assert p.top_class == row["top_class"]
        if row["explained_class"] == row["top_class"]:
            assert p.explained_class == row["explained_class"]
            assert float(np.round(p.heatmap, 6).sum()) == pytest.approx(row["heatmap_sum"], rel=1e-3)
        else:  # changed on purpose in 0.2: 0.1's predict showed a heatmap-input model's CAM-backbone
            # class, the web service the answered class; both now explain the answered class
            assert p.explained_class == p.top_class


def test_the_fixtures_cover_the_explained_class_change():
    rows = EXPECTED["cases"]["bundle_0_1_heatmap32"]
    assert any(r["explained_class"] != r["top_class"] for r in rows)
    assert any(r["explained_class"] == r["top_class"] for r in rows)


def test_the_0_1_import_paths_still_work():
    import dermfuse.experiment
    import dermfuse.inference.predict
    import dermfuse.predict
    import dermfuse.runs.holdout

    assert dermfuse.experiment.train_run is dermfuse.runs.holdout.train_run
    assert dermfuse.experiment.evaluate_bundle is dermfuse.runs.holdout.evaluate_bundle
    assert dermfuse.predict.predict_one is dermfuse.inference.predict.predict_one
