"""Clear messages for the weak cases: another text encoding or delimiter, a body that is not
multipart/form-data, long values echoed back, the one rule for odd ages."""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _bundles import jpeg_bytes, lesion_image, make_bundle, make_encoder
from dermfuse.inference.bundle import load_bundle
from dermfuse.data.formats import read_dataset
from dermfuse.errors import DataError, InputError
from dermfuse.serve.app import create_app

ROWS = [dict(lesion_id="L1", image_id="img1", dx="nv", age=45, sex="male", localization="back"),
        dict(lesion_id="L2", image_id="img2", dx="mel", age=60, sex="female", localization="trunk")]


def _folder(tmp_path):
    (tmp_path / "images").mkdir()
    for i, r in enumerate(ROWS):
        Image.new("RGB", (40, 40), (i * 90, 50, 50)).save(tmp_path / "images" / f"{r['image_id']}.jpg")
    return tmp_path


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(create_app(load_bundle(make_bundle(tmp_path_factory.mktemp("b") / "b")))) as c:
        yield c


def test_a_latin1_csv_names_the_encoding_and_the_fix(tmp_path):
    root = _folder(tmp_path)
    rows = [dict(r, localization="épaule") for r in ROWS]
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False, encoding="cp1252")
    with pytest.raises(DataError, match=r"not UTF-8 text: byte 0xE9 on line 2.*Windows-1252.*iconv -f cp1252"):
        read_dataset(root)


def test_utf16_with_a_byte_order_mark_is_read(tmp_path):
    root = _folder(tmp_path)
    pd.DataFrame(ROWS).to_csv(root / "HAM10000_metadata.csv", index=False, encoding="utf-16")
    assert list(read_dataset(root).table["sex"]) == ["male", "female"]


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_semicolon_or_tab_csv_is_read(tmp_path, sep):
    root = _folder(tmp_path)
    pd.DataFrame(ROWS).to_csv(root / "HAM10000_metadata.csv", index=False, sep=sep)
    result = read_dataset(root)
    assert result.format == "ham10000" and list(result.table["label"]) == ["nv", "mel"]


@pytest.mark.parametrize("body, ctype", [
    (b'{"age": 40}', "application/json"), (b"age=40", "application/x-www-form-urlencoded"),
    (b"\x89PNG...", "image/png"), (b"", None)])
def test_a_body_that_is_not_multipart_is_415_naming_multipart(client, body, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert "multipart/form-data" in r.json()["detail"]
    assert (ctype or "no Content-Type") in r.json()["detail"]


@pytest.mark.parametrize("field", ["sex", "site", "age"])
def test_a_10kb_value_is_not_echoed_back_whole(client, field):
    value = "x" * 10_000
    data = {"age": "40", "sex": "male", "site": "back", field: value}
    r = client.post("/predict", files={"image": ("a.jpg", jpeg_bytes(lesion_image(0)), "image/jpeg")}, data=data)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) < 400 and "(10000 characters)" in detail and field in detail


def test_long_filenames_are_cut_in_messages(client):
    r = client.post("/predict", files={"image": ("n" * 600 + ".jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 422 and len(r.json()["detail"]) < 250, r.text


def test_shorten_keeps_short_values_and_cuts_long_ones():
    from dermfuse.data.vocab import shorten

    assert shorten("back") == "'back'"
    cut = shorten("y" * 500)
    assert len(cut) < 110 and cut.endswith("(500 characters)")


@pytest.mark.parametrize("age", ["", "unknown", "nan", "NA", None])
def test_missing_age_spellings_mean_unknown_in_predict(age):
    enc = make_encoder()
    assert enc.encode_one(age, "male", "back")[1] == 1.0  # age_missing flag


@pytest.mark.parametrize("age, why", [("inf", "not a finite number"), ("-inf", "not a finite number"),
                                      ("forty", "not a number"), ("200", "outside 0..120")])
def test_other_ages_are_refused_in_predict_and_fixed_in_readers(tmp_path, age, why):
    with pytest.raises(InputError, match=why):
        make_encoder().encode_one(age, "male", "back")
    root = _folder(tmp_path)
    pd.DataFrame([dict(ROWS[0], age=age), ROWS[1]]).to_csv(root / "HAM10000_metadata.csv", index=False)
    from dermfuse.data.clean import clean

    table, report = clean(read_dataset(root), check_images=False, progress=False)
    assert report.fixed["age_invalid"] == 1 and pd.isna(table["age"].iloc[0])


@pytest.mark.parametrize("k, rule, needle", [(1, "site", "--sites 1: expected 2 or more"),
                                             (3, "zodiac", "--site-rule 'zodiac'")])
def test_federated_site_assignment_refuses_bad_settings_with_a_config_error(k, rule, needle):
    from dermfuse.errors import ConfigError
    from dermfuse.runs.federate_sites import assign_sites

    table = pd.DataFrame({"image_id": ["a", "b"], "lesion_id": ["l1", "l2"], "site": ["back", "face"], "age": [40, 50]})
    with pytest.raises(ConfigError, match=needle):
        assign_sites(table, k, rule)
