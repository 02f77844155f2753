"""Property tests (hypothesis): random tables and files through the readers and cleaning
raise nothing but dermfuse's own errors, and rows in = rows kept + rows dropped by reason."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dermfuse.data.clean import clean
from dermfuse.data.formats import read_dataset
from dermfuse.data.vocab import normalise_sex, normalise_site, parse_age
from dermfuse.errors import DermfuseError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _jpeg(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_age = st.one_of(st.none(), st.integers(-50, 300).map(str), st.floats(allow_nan=True).map(str), _text,
                 st.sampled_from(["inf", "nan", "unknown", "", "45.0", " 60 "]))
_sex = st.one_of(st.none(), _text, st.sampled_from(["M", "F", "male", "FEMALE", "unknown", "robot"]))
_site = st.one_of(st.none(), _text, st.sampled_from(["back", "anterior torso", "ARM", "head/neck", "moon"]))
_file = st.one_of(st.tuples(st.just("jpeg"), st.integers(0, 3), st.sampled_from([8, 31, 32, 40])),
                  st.tuples(st.just("junk"), st.binary(max_size=64), st.just(0)),
                  st.tuples(st.just("none"), st.just(0), st.just(0)))
_row = st.fixed_dictionaries({
    "image_id": st.sampled_from([f"img{i}" for i in range(8)] + ["", "x/y.jpg"]),
    "lesion_id": st.sampled_from(["L1", "L2", "L3", ""]),
    "dx": st.one_of(st.sampled_from(["nv", "mel", "bkl", "akiec", "bcc", "df", "vasc", "", "XYZ"]), _text),
    "age": _age, "sex": _sex, "localization": _site, "file": _file,
})


@FUZZ
@given(rows=st.lists(_row, min_size=1, max_size=10), check_images=st.booleans())
def test_readers_and_cleaning_only_raise_dermfuse_errors_and_count_every_row(rows, check_images):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        for row in rows:
            kind, a, b = row.pop("file")
            stem = str(row["image_id"]).replace("/", "_")
            if kind == "jpeg" and stem:
                (root / "images" / f"{stem}.jpg").write_bytes(_jpeg(a, b))
            elif kind == "junk" and stem:
                (root / "images" / f"{stem}.jpg").write_bytes(a)
        # every field quoted: a lone '\r' in a value is then text, not a record break
        pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False, quoting=csv.QUOTE_ALL)
        try:
            result = read_dataset(root)
            table, report = clean(result, check_images=check_images, progress=False)
        except DermfuseError:
            return
        assert report.n_in == len(rows)
        assert report.n_in == report.n_out + sum(report.counts.values()) == len(table) + len(report.dropped)
        assert set(table["sex"]) <= {"male", "female", "unknown"}
        assert all(isinstance(s, str) for s in table["site"])
        ages = table["age"].dropna()
        assert ((ages >= 0) & (ages <= 120)).all()


@FUZZ
@given(data=st.binary(max_size=300), name=st.sampled_from(["HAM10000_metadata.csv", "metadata.csv", "x.csv"]))
def test_random_csv_bytes_give_a_table_or_a_data_error(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / name).write_bytes(data)
        Image.new("RGB", (40, 40)).save(root / "img0.jpg")
        try:
            result = read_dataset(root)
        except DermfuseError:
            return
        clean(result, progress=False)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), st.text(max_size=40), st.floats(allow_nan=True), st.integers()))
def test_vocabularies_never_raise_and_ages_are_in_range_or_nan(value):
    normalise_sex(value)
    normalise_site(value)
    parsed = parse_age(value)
    assert math.isnan(parsed.value) or 0 <= parsed.value <= 120
    assert parsed.problem is None or math.isnan(parsed.value)
