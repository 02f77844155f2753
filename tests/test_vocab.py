"""Metadata vocabularies: each data set's spellings map to the encoder's levels, the
readers and the single-input path (predict / serve) agree, and whatever is still unknown
is counted and named (cleaning report, data check, evaluate, predict errors)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _bundles import make_encoder
from dermfuse.data.clean import clean, summarize
from dermfuse.data.formats import read_dataset
from dermfuse.errors import InputError

def _vocab():
    from dermfuse.data import vocab  # imported per test: the reader tests also run on older code

    return vocab


HAM_SITES = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
             "lower extremity", "neck", "scalp", "trunk", "upper extremity")


def test_canonical_levels_are_ham10000s_so_existing_bundles_keep_theirs():
    assert set(HAM_SITES) <= set(_vocab().SITE_LEVELS) and set(_vocab().SEX_LEVELS) == {"male", "female"}
    assert set(_vocab().SITE_SYNONYMS.values()) <= set(_vocab().SITE_LEVELS)
    assert set(_vocab().SEX_SYNONYMS.values()) <= set(_vocab().SEX_LEVELS)
    for level in HAM_SITES:
        assert _vocab().normalise_site(level) == level


@pytest.mark.parametrize("raw, level", [
    ("M", "male"), ("F", "female"), ("Male", "male"), ("FEMALE", "female"), (" f ", "female"),
])
def test_sex_spellings(raw, level):
    assert _vocab().normalise_sex(raw) == level


@pytest.mark.parametrize("raw, level", [
    ("anterior torso", "trunk"), ("posterior torso", "back"), ("lateral torso", "trunk"),
    ("lower extremity", "lower extremity"), ("Lower_Extremity", "lower extremity"),
    ("upper-extremity", "upper extremity"), ("palms/soles", "acral"), ("head / neck", "head/neck"),
    ("oral/genital", "oral/genital"),  # ISIC 2019 / Archive
    ("ARM", "upper extremity"), ("FOREARM", "upper extremity"), ("THIGH", "lower extremity"),
    ("NOSE", "face"), ("LIP", "face"), ("CHEST", "chest"), ("BACK", "back"), ("SCALP", "scalp"),
    ("EAR", "ear"), ("NECK", "neck"), ("HAND", "hand"), ("FOOT", "foot"), ("ABDOMEN", "abdomen"),
    ("FACE", "face"),  # PAD-UFES-20 region
])
def test_site_spellings(raw, level):
    assert _vocab().normalise_site(raw) == level


@pytest.mark.parametrize("raw", [None, "", " ", "unknown", "UNK", "nan", "NA", "n/a", float("nan")])
def test_missing_spellings_are_missing_everywhere(raw):
    assert _vocab().normalise_sex(raw) is None and _vocab().normalise_site(raw) is None
    assert math.isnan(_vocab().parse_age(raw).value) and _vocab().parse_age(raw).problem is None


def test_one_age_rule_numbers_non_numbers_and_non_finite():
    assert _vocab().parse_age("45").value == 45 and _vocab().parse_age(" 45.0 ").value == 45 and _vocab().parse_age(60).value == 60
    for bad, why in [("inf", "not a finite number"), ("-Infinity", "not a finite number"),
                     (float("inf"), "not a finite number"), ("forty", "not a number"),
                     ("12 years", "not a number"), ("-3", "outside 0..120"), (121, "outside 0..120")]:
        parsed = _vocab().parse_age(bad)
        assert math.isnan(parsed.value) and why in parsed.problem, (bad, parsed)


def test_unrecognised_values_come_back_as_such():
    assert _vocab().normalise_site("left knee") == _vocab().Unrecognised("left knee", "left knee")
    assert isinstance(_vocab().normalise_sex("robot"), _vocab().Unrecognised)


# --- readers and the single-input path agree ------------------------------------------------

def _ham(root: Path, rows: list[dict]) -> Path:
    (root / "images").mkdir(parents=True)
    for i, row in enumerate(rows):
        row.setdefault("image_id", f"img{i}")
        row.setdefault("lesion_id", f"L{i}")
        row.setdefault("dx", "nv")
        Image.new("RGB", (40, 40), (i * 20, 80, 90)).save(root / "images" / f"{row['image_id']}.jpg")
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def test_reader_and_encode_one_give_the_same_features_for_alternative_spellings(tmp_path):
    """The defect: 'M' / 'Lower Extremity' reached the encoder as unseen categories from a
    CSV, while `predict --sex M` refused it; now both mean male / lower extremity."""
    enc = make_encoder()
    root = _ham(tmp_path / "d", [dict(age=45, sex="M", localization="Lower Extremity"),
                                 dict(age="", sex="F", localization="posterior torso")])
    table, report = clean(read_dataset(root), progress=False)
    assert list(table["sex"]) == ["male", "female"]
    assert list(table["site"]) == ["lower extremity", "back"]
    x = enc.transform(table)
    assert enc.unseen_counts == {"sex": {}, "site": {}}
    np.testing.assert_array_equal(enc.encode_one("45", "M", "Lower Extremity"), x[0])
    np.testing.assert_array_equal(enc.encode_one("", "F", "posterior torso"), x[1])
    assert report.unrecognised == {"sex": {}, "site": {}}


def test_values_unknown_after_mapping_are_counted_and_named(tmp_path):
    root = _ham(tmp_path / "d", [dict(age=45, sex="robot", localization="left knee"),
                                 dict(age=50, sex="male", localization="left knee"),
                                 dict(age=50, sex="male", localization="back")])
    table, report = clean(read_dataset(root), progress=False)
    assert report.unrecognised == {"sex": {"robot": 1}, "site": {"left knee": 2}}
    assert list(table["site"]) == ["unknown", "unknown", "back"]
    assert report.missing["site"] == 2 and report.missing["sex"] == 1
    summary = summarize(table, report, "ham10000")
    assert summary["unrecognised"] == {"sex": {"robot": 1}, "site": {"left knee": 2}}
    rendered = " ".join(str(c) for col in report.render().columns for c in col._cells)
    assert "left knee" in rendered and "robot" in rendered
    with pytest.raises(InputError, match="site 'left knee' is not accepted; expected one of back"):
        make_encoder().encode_one(40, "male", "left knee")


def test_a_bundles_own_levels_are_kept_as_spelled():
    """A bundle fitted on a level the vocabulary would rename still matches it."""
    enc = make_encoder()
    enc.sites = ["anterior torso", "back", "unknown"]
    x = enc.encode_one(40, "male", "anterior torso")
    assert x[2 + len(enc.sexes)] == 1.0  # its own 'anterior torso', not 'trunk'


def test_isic_and_pad_readers_map_their_spellings(tmp_path):
    root = tmp_path / "pad"
    (root / "imgs").mkdir(parents=True)
    for i, name in enumerate(("a", "b")):
        Image.new("RGB", (40, 40), (i * 90, 40, 40)).save(root / "imgs" / f"{name}.png")
    pd.DataFrame({"patient_id": ["P1", "P2"], "lesion_id": ["1", "2"], "img_id": ["a.png", "b.png"],
                  "diagnostic": ["MEL", "NEV"], "age": ["55", "inf"], "gender": ["MALE", "FEMALE"],
                  "region": ["FOREARM", "THIGH"]}).to_csv(root / "metadata.csv", index=False)
    table, report = clean(read_dataset(root), progress=False)
    assert list(table["sex"]) == ["male", "female"]
    assert list(table["site"]) == ["upper extremity", "lower extremity"]
    assert table["age"].iloc[0] == 55 and math.isnan(table["age"].iloc[1])
    assert report.fixed["age_invalid"] == 1  # 'inf' is invalid, as predict refuses it
