"""Metrics by subgroup (dermfuse.evaluation.subgroups)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermfuse import HAM10000_CLASSES
from dermfuse.evaluation.subgroups import (AGE_BANDS, SUBGROUP_METRICS, age_band, parse_by, subgroup_frame,
                                           subgroup_metrics)
from dermfuse.evaluation import subgroups as sg
from dermfuse.evaluation.metrics import auc_macro

CLASSES = list(HAM10000_CLASSES)


def _scored(n_lesions: int = 150, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A table of lesions with 1-3 images each, and probabilities that are right ~70% of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for les in range(n_lesions):
        label = CLASSES[int(rng.choice(len(CLASSES), p=[.08, .1, .15, .06, .15, .4, .06]))]
        meta = {"lesion_id": f"L{les}", "label": label, "age": float(rng.choice([np.nan, *range(5, 90, 5)])),
                "sex": str(rng.choice(["male", "female", "unknown"], p=[.5, .45, .05])),
                "site": str(rng.choice(["back", "face", "trunk", "lower extremity", "ear"], p=[.3, .2, .25, .22, .03]))}
        rows += [{**meta, "image_id": f"I{les}_{k}"} for k in range(int(rng.integers(1, 4)))]
    table = pd.DataFrame(rows)
    y = table["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    logits = rng.normal(0, 1, (len(table), len(CLASSES)))
    logits[np.arange(len(y)), y] += 1.8
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return table, proba


@pytest.fixture(scope="module")
def result():
    table, proba = _scored()
    return table, proba, subgroup_metrics(table, proba, CLASSES, by=["sex", "age_band", "site"], n_boot=300)


def test_counts_of_each_key_add_up_to_the_whole(result):
    table, _, r = result
    assert r["overall"]["n_images"] == len(table)
    for key in ("sex", "age_band", "site"):
        rows = [g for g in r["subgroups"] if g["by"] == key]
        assert sum(g["n_images"] for g in rows) == len(table)
        assert sum(g["n_lesions"] for g in rows) >= table["lesion_id"].nunique()  # a lesion is in one group per key
    assert {g["group"] for g in r["subgroups"] if g["by"] == "sex"} == set(table["sex"])


def test_intervals_contain_the_point_estimate(result):
    _, _, r = result
    checked = 0
    for g in [r["overall"], *r["subgroups"]]:
        for m in SUBGROUP_METRICS:
            v = g[m]
            if v["value"] is None or v["low"] is None:
                continue
            assert v["low"] <= v["value"] <= v["high"], (g.get("group"), m, v)
            checked += 1
    assert checked > 20


def test_point_estimates_and_gaps_match_the_metrics_module(result):
    table, proba, r = result
    y = table["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert r["overall"]["auc_macro"]["value"] == pytest.approx(auc_macro(y, proba))
    face = next(g for g in r["subgroups"] if g["by"] == "site" and g["group"] == "face")
    mask = (table["site"] == "face").to_numpy()
    assert face["auc_macro"]["value"] == pytest.approx(auc_macro(y[mask], proba[mask]))
    assert face["accuracy"]["gap"] == pytest.approx(face["accuracy"]["value"] - r["overall"]["accuracy"]["value"])


def test_small_groups_are_flagged(result):
    _, _, r = result
    for g in r["subgroups"]:
        small = g["n_images"] < 30 or g["n_classes"] < 2
        assert g["too_small"] == small
        assert (g["why"] is not None) == small
    assert any(g["too_small"] for g in r["subgroups"])  # 'ear' (3 % of lesions) and 'unknown' sex
    assert any(not g["too_small"] for g in r["subgroups"])


def test_one_class_group_is_flagged_even_when_large():
    table, proba = _scored(seed=1)
    table.loc[table["label"] == "nv", "site"] = "acral"  # every acral image is a naevus
    r = subgroup_metrics(table, proba, CLASSES, by="site", n_boot=50)
    acral = next(g for g in r["subgroups"] if g["group"] == "acral")
    assert acral["n_images"] >= 30 and acral["n_classes"] == 1 and acral["too_small"]
    assert "class" in acral["why"]


def test_weighted_auc_equals_sklearn_with_unit_weights_and_with_repeats():
    table, proba = _scored(n_lesions=60, seed=2)
    y = table["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    proba = np.round(proba, 2)  # ties
    w = np.ones((1, len(y)))
    assert sg._weighted_auc_macro(y, proba, w)[0] == pytest.approx(auc_macro(y, proba))
    counts = np.random.default_rng(0).integers(0, 3, len(y))
    rep = np.repeat(np.arange(len(y)), counts)
    assert sg._weighted_auc_macro(y, proba, counts[None].astype(float))[0] == pytest.approx(
        auc_macro(y[rep], proba[rep]))


def test_age_bands_are_one_stated_definition():
    assert [age_band(a) for a in (0, 29.9, 30, 44, 45, 60, 74, 75, 85)] == [
        "<30", "<30", "30-44", "30-44", "45-59", "60-74", "60-74", "75+", "75+"]
    assert age_band(None) == age_band(float("nan")) == age_band("abc") == "unknown"
    assert [b[2] for b in AGE_BANDS][-1] == "75+"


def test_frame_and_bad_input(result):
    _, _, r = result
    frame = subgroup_frame(r)
    assert frame.iloc[0]["group"] == "overall" and len(frame) == len(r["subgroups"]) + 1
    with pytest.raises(ValueError, match="expected a comma-separated list"):
        parse_by("sex,colour")
    table, proba = _scored(n_lesions=10)
    with pytest.raises(ValueError, match="expected"):
        subgroup_metrics(table, proba[:, :3], CLASSES)


def test_evaluate_by_gives_json_text_and_report(synth_small, tmp_path, capsys):
    from _bundles import make_bundle
    from dermfuse.cli import main

    bundle = make_bundle(tmp_path / "b", model="ft_multicnn", image_size=32)
    args = ["-q", "evaluate", str(bundle), str(synth_small), "--by", "sex,age_band,site"]
    assert main(args + ["--json", "--out", str(tmp_path / "ev")]) == 0
    m = json.loads(capsys.readouterr().out)
    sub = m["subgroups"]
    assert sub["overall"]["n_images"] == m["n_images"]
    assert sub["overall"]["accuracy"]["value"] == pytest.approx(m["accuracy"])
    assert {g["by"] for g in sub["subgroups"]} == {"sex", "age_band", "site"}
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "Metrics by subgroup" in page and "too small" in page and "SYNTHETIC" in page
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "overall" in text and "age_band=" in text and "gap = subgroup - overall" in text
    assert main(["-q", "evaluate", str(bundle), str(synth_small), "--by", "colour"]) == 2
    assert "expected a comma-separated list of sex, age_band, site" in capsys.readouterr().err
