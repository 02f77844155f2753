"""Metadata encoder: training statistics, unknown levels, strict single inputs, JSON state."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dermfuse.data.encode import MetadataEncoder
from dermfuse.errors import InputError


@pytest.fixture
def train() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [30.0, 50.0, np.nan, 70.0, 40.0],
        "sex": ["male", "female", "unknown", "male", "female"],
        "site": ["back", "face", "back", "unknown", "trunk"],
    })


@pytest.fixture
def encoder(train: pd.DataFrame) -> MetadataEncoder:
    return MetadataEncoder().fit(train)


def test_features_are_named_with_unknown_levels(encoder: MetadataEncoder) -> None:
    assert encoder.sexes == ["female", "male", "unknown"]
    assert encoder.sites == ["back", "face", "trunk", "unknown"]
    assert encoder.feature_names == ["age", "age_missing", "sex=female", "sex=male",
                                     "sex=unknown", "site=back", "site=face", "site=trunk",
                                     "site=unknown"]
    assert encoder.n_features == 9


def test_age_standardised_with_training_stats_and_median_for_missing(
        encoder: MetadataEncoder, train: pd.DataFrame) -> None:
    x = encoder.transform(train)
    assert x.dtype == np.float32 and x.shape == (5, 9)
    seen = np.array([30.0, 50.0, 70.0, 40.0])
    assert encoder.age_mean == pytest.approx(seen.mean())
    assert encoder.age_std == pytest.approx(seen.std())
    assert x[0, 0] == pytest.approx((30.0 - seen.mean()) / seen.std())
    assert x[2, 0] == pytest.approx((np.median(seen) - seen.mean()) / seen.std())
    assert x[:, 1].tolist() == [0, 0, 1, 0, 0]
    assert x[:, 2:5].sum(axis=1).tolist() == [1] * 5 and x[:, 5:].sum(axis=1).tolist() == [1] * 5
    assert x[2, 4] == 1.0 and x[3, 8] == 1.0  # 'unknown' levels


def test_unseen_categories_become_unknown_and_are_counted(encoder: MetadataEncoder) -> None:
    test = pd.DataFrame({"age": [20.0, 200.0, np.nan], "sex": ["Other", "male", None],
                         "site": ["acral", "acral", "BACK "]})
    x = encoder.transform(test)
    assert x[0, 4] == 1.0 and x[0, 8] == 1.0 and x[1, 8] == 1.0
    assert x[2, 4] == 1.0 and x[2, 5] == 1.0  # missing sex -> unknown; 'BACK ' -> back
    assert x[1, 1] == 1.0  # an impossible age counts as missing
    assert encoder.unseen_counts == {"sex": {"other": 1}, "site": {"acral": 2}}


def test_json_round_trip_gives_identical_transform(encoder: MetadataEncoder,
                                                   train: pd.DataFrame) -> None:
    state = json.loads(json.dumps(encoder.to_dict()))
    restored = MetadataEncoder.from_dict(state)
    assert restored.feature_names == encoder.feature_names
    np.testing.assert_array_equal(restored.transform(train), encoder.transform(train))
    np.testing.assert_array_equal(restored.encode_one(33, "Female", "face"),
                                  encoder.encode_one(33, "Female", "face"))
    with pytest.raises(ValueError, match="missing keys \\['sites'\\]"):
        MetadataEncoder.from_dict({k: v for k, v in state.items() if k != "sites"})


def test_encode_one_matches_transform(encoder: MetadataEncoder) -> None:
    table = pd.DataFrame({"age": [45.0, np.nan], "sex": ["female", "unknown"],
                          "site": ["trunk", "unknown"]})
    x = encoder.transform(table)
    np.testing.assert_array_equal(encoder.encode_one("45", "FEMALE", " Trunk "), x[0])
    np.testing.assert_array_equal(encoder.encode_one(None, None, "unknown"), x[1])
    np.testing.assert_array_equal(encoder.encode_one("", "", ""), x[1])
    assert encoder.encode_one(0, "male", "back").shape == (9,)
    assert encoder.encode_one(120.0, "male", "back")[1] == 0.0


@pytest.mark.parametrize("age", [-1, 121, 200.5, "abc", "12 years", True, [40], float("inf")])
def test_encode_one_rejects_bad_age_naming_it(encoder: MetadataEncoder, age: object) -> None:
    with pytest.raises(InputError, match=f"age {repr(age).replace('[', '.').replace(']', '.')}"):
        encoder.encode_one(age, "male", "back")


def test_encode_one_rejects_unknown_sex_and_site_listing_accepted(
        encoder: MetadataEncoder) -> None:
    with pytest.raises(InputError, match="sex 'other'.*female, male, unknown"):
        encoder.encode_one(40, "other", "back")
    with pytest.raises(InputError, match="site 'acral'.*back, face, trunk, unknown"):
        encoder.encode_one(40, "male", "acral")
    with pytest.raises(InputError, match="sex 1 is not text"):
        encoder.encode_one(40, 1, "back")


def test_unfitted_encoder_says_so() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        MetadataEncoder().transform(pd.DataFrame({"age": [1.0]}))


def test_fit_without_any_age_still_encodes() -> None:
    enc = MetadataEncoder().fit(pd.DataFrame({"age": [np.nan, np.nan], "sex": ["male", None],
                                              "site": [None, None]}))
    x = enc.transform(pd.DataFrame({"age": [np.nan], "sex": ["male"], "site": ["back"]}))
    assert not math.isnan(float(x[0, 0])) and x[0, 1] == 1.0
    assert enc.sites == ["unknown"]
