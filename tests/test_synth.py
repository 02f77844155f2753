"""The synthetic HAM10000-layout data set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermfuse import HAM10000_CLASSES
from dermfuse.data.cache import load_image
from dermfuse.data.synth import SITES, make_synthetic
from dermfuse.errors import InputError

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth") / "clean", n=100, seed=0)


@pytest.fixture(scope="module")
def defect_set(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth") / "defects", n=30, seed=5, defects=True)


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = _digests(make_synthetic(tmp_path / "a", n=20, seed=3))
    b = _digests(make_synthetic(tmp_path / "b", n=20, seed=3))
    c = _digests(make_synthetic(tmp_path / "c", n=20, seed=4))
    assert a == b
    assert a["metadata.csv"] != c["metadata.csv"]
    assert not {v for k, v in a.items() if k.endswith(".jpg")} & {v for k, v in c.items() if k.endswith(".jpg")}


def test_layout_is_ham10000(clean_set):
    table = _read(clean_set)
    assert list(table.columns) == HAM_COLUMNS
    assert len(table) == 100
    assert "synthetic" in (clean_set / "SYNTHETIC.txt").read_text().lower()
    assert set(table["dx"]) == set(HAM10000_CLASSES)
    assert table["image_id"].str.fullmatch(r"ISIC_\d{7}").all()
    assert table["lesion_id"].str.fullmatch(r"HAM_\d{7}").all()
    assert set(table["sex"]) <= {"male", "female"}
    assert set(table["localization"]) <= set(SITES)
    ages = pd.to_numeric(table["age"])
    assert ages.between(0, 85).all() and (ages % 5 == 0).all()
    files = sorted(p.stem for p in (clean_set / "images").glob("*.jpg"))
    assert files == sorted(table["image_id"])
    with Image.open(clean_set / "images" / f"{table['image_id'][0]}.jpg") as img:
        assert img.size == (200, 150) and img.format == "JPEG" and img.mode == "RGB"


def test_class_shares_are_imbalanced(clean_set):
    shares = _read(clean_set)["dx"].value_counts(normalize=True)
    assert shares.idxmax() == "nv"
    assert 0.35 <= shares["nv"] <= 0.45 and shares.min() >= 0.04


def test_no_defects_unless_asked(clean_set):
    table = _read(clean_set)
    assert not (clean_set / "defects.json").exists()
    assert (table["age"] != "").all() and "unknown" not in set(table["sex"]) | set(table["localization"])
    assert not table.duplicated().any() and table["image_id"].is_unique
    digests = [hashlib.sha1(p.read_bytes()).hexdigest() for p in (clean_set / "images").glob("*.jpg")]
    assert len(set(digests)) == len(digests)
    for image_id in table["image_id"][:20]:
        load_image(clean_set / "images" / f"{image_id}.jpg")


def test_defects_are_planted(defect_set):
    table = _read(defect_set)
    planted = json.loads((defect_set / "defects.json").read_text())
    by_id = table.drop_duplicates().set_index("image_id")
    assert len(table) == 32 and table.duplicated().sum() == 1
    assert table[table.duplicated()]["image_id"].item() == planted["duplicate_row"]
    assert (by_id.loc[planted["missing_age"], "age"] == "").all() and len(planted["missing_age"]) >= 3
    assert (by_id.loc[planted["unknown_sex"], "sex"] == "unknown").all()
    assert (by_id.loc[planted["unknown_site"], "localization"] == "unknown").all()
    assert sorted(planted["invalid_age"].values()) == ["-3", "abc"]
    for image_id, value in planted["invalid_age"].items():
        assert by_id.loc[image_id, "age"] == value
    images = defect_set / "images"
    with pytest.raises(InputError) as info:
        load_image(images / f"{planted['corrupt_image']}.jpg")
    assert info.value.reason == "unreadable_image"
    with pytest.raises(InputError) as info:
        load_image(images / f"{planted['truncated_image']}.jpg")
    assert info.value.reason == "truncated_image"
    dup = planted["duplicate_image"]
    assert (images / f"{dup['image_id']}.jpg").read_bytes() == (images / f"{dup['same_bytes_as']}.jpg").read_bytes()
    assert dup["image_id"] in set(table["image_id"])


def test_appearance_depends_on_class(clean_set):
    table = _read(clean_set)

    def pixels(image_id: str, half: int) -> np.ndarray:  # float (2 half, 2 half, 3) around the centre
        with Image.open(clean_set / "images" / f"{image_id}.jpg") as img:
            return np.asarray(img, dtype=np.float32)[75 - half : 75 + half, 100 - half : 100 + half]

    groups = table.groupby("dx")["image_id"]
    # vascular lesions (red lagoons) are redder than naevi (brown) where the lesion is
    redness = {c: np.mean([np.mean(pixels(i, 15)[..., 0] - pixels(i, 15)[..., 1]) for i in ids]) for c, ids in groups}
    assert redness["vasc"] > redness["nv"] + 15
    # melanomas (large, dark brown / black / blue-grey) are darker than naevi and keratoses
    brightness = {c: np.mean([pixels(i, 40).mean() for i in ids]) for c, ids in groups}
    assert brightness["mel"] < brightness["nv"] and brightness["mel"] < brightness["bkl"]


def test_lesions_with_several_images_share_metadata(clean_set):
    table = _read(clean_set)
    counts = table["lesion_id"].value_counts()
    assert (counts > 1).any() and (counts == 1).any()
    meta = table.groupby("lesion_id")[["dx", "age", "sex", "localization"]].nunique()
    assert (meta == 1).all().all()
    lesion = counts.index[0]
    ids = table.loc[table["lesion_id"] == lesion, "image_id"].tolist()
    first, second = (np.asarray(Image.open(clean_set / "images" / f"{i}.jpg")) for i in ids[:2])
    assert not np.array_equal(first, second)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic(tmp_path, n=10)
