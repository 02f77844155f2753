"""Readers: every layout into the canonical table, and the errors for layouts that fit none."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dermfuse import HAM10000_CLASSES
from dermfuse.data.formats import (
    CANONICAL_COLUMNS,
    ISIC2019_CLASSES,
    PAD_UFES20_CLASSES,
    read_dataset,
)
from dermfuse.errors import DataError


def _image(path: Path, color: tuple[int, int, int] = (120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _ham_rows() -> list[dict]:
    return [
        dict(lesion_id="HAM_1", image_id="ISIC_1", dx="mel", dx_type="histo", age=45.0,
             sex="male", localization="back"),
        dict(lesion_id="HAM_1", image_id="ISIC_2", dx="mel", dx_type="histo", age=45.0,
             sex="male", localization="back"),
        dict(lesion_id="HAM_2", image_id="ISIC_3", dx=" NV ", dx_type="follow_up", age="abc",
             sex="unknown", localization="Unknown"),
        dict(lesion_id="HAM_3", image_id="ISIC_4", dx="bkl", dx_type="consensus", age=None,
             sex="Female ", localization="lower extremity"),
    ]


def test_reads_ham10000_with_two_image_folders(tmp_path: Path) -> None:
    _csv(tmp_path / "HAM10000_metadata.csv", _ham_rows())
    _image(tmp_path / "HAM10000_images_part_1" / "ISIC_1.jpg")
    _image(tmp_path / "HAM10000_images_part_2" / "ISIC_2.png")
    _image(tmp_path / "HAM10000_images_part_2" / "ISIC_3.jpg")
    _image(tmp_path / "HAM10000_images_part_2" / "ISIC_99.jpg")  # no row names it

    result = read_dataset(tmp_path)
    t = result.table
    assert result.format == "ham10000"
    assert result.classes == HAM10000_CLASSES
    assert list(t.columns[: len(CANONICAL_COLUMNS)]) == list(CANONICAL_COLUMNS)
    assert "dx_type" in t.columns and "age_raw" in t.columns
    assert list(t["image_id"]) == ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4"]
    assert t.loc[0, "path"] == str(tmp_path / "HAM10000_images_part_1" / "ISIC_1.jpg")
    assert t.loc[1, "path"].endswith("ISIC_2.png")
    assert t.loc[3, "path"] is None  # no file: cleaning reports it
    assert list(t["label"]) == ["mel", "mel", "nv", "bkl"]
    assert list(t["sex"]) == ["male", "male", None, "female"]
    assert list(t["site"]) == ["back", "back", None, "lower extremity"]
    assert t.loc[0, "age"] == 45.0 and math.isnan(t.loc[2, "age"]) and math.isnan(t.loc[3, "age"])
    assert list(t["age_raw"]) == [None, None, "abc", None]
    assert t["patient_id"].isna().all()
    assert result.orphan_files == [str(tmp_path / "HAM10000_images_part_2" / "ISIC_99.jpg")]
    assert result.root == tmp_path


def test_reads_ham10000_from_csv_path_named_metadata(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "metadata.csv", _ham_rows()[:2])
    _image(tmp_path / "images" / "ISIC_1.jpg")
    _image(tmp_path / "images" / "ISIC_2.jpg")
    result = read_dataset(csv)
    assert result.format == "ham10000"
    assert result.table["path"].notna().all()


def test_duplicate_image_ids_are_kept_for_cleaning(tmp_path: Path) -> None:
    rows = _ham_rows()[:1] * 2
    _csv(tmp_path / "metadata.csv", rows)
    _image(tmp_path / "images" / "ISIC_1.jpg")
    assert list(read_dataset(tmp_path).table["image_id"]) == ["ISIC_1", "ISIC_1"]


def test_reads_isic2019_onehot_and_metadata(tmp_path: Path) -> None:
    names = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]

    def onehot(name: str) -> dict:
        return {n: float(n == name) for n in names}

    _csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", [
        {"image": "ISIC_0000000", **onehot("NV")},
        {"image": "ISIC_0000001", **onehot("AK")},
        {"image": "ISIC_0000002_downsampled", **onehot("SCC")},
    ])
    _csv(tmp_path / "ISIC_2019_Training_Metadata.csv", [
        dict(image="ISIC_0000001", age_approx=70, anatom_site_general="Head/Neck",
             lesion_id="BCN_1", sex="female"),
        dict(image="ISIC_0000000", age_approx=55, anatom_site_general="anterior torso",
             lesion_id=None, sex="male"),
        dict(image="ISIC_0000002_downsampled", age_approx=None, anatom_site_general=None,
             lesion_id="HAM_9", sex=None),
    ])
    for name in ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002_downsampled"):
        _image(tmp_path / "ISIC_2019_Training_Input" / f"{name}.jpg")

    result = read_dataset(tmp_path)
    t = result.table
    assert result.format == "isic2019"
    assert result.classes == ISIC2019_CLASSES
    assert list(t["label"]) == ["nv", "ak", "scc"]
    assert list(t["lesion_id"]) == [None, "BCN_1", "HAM_9"]
    assert list(t["site"]) == ["trunk", "head/neck", None]  # ISIC spellings, canonical levels (vocab)
    assert list(t["sex"]) == ["male", "female", None]
    assert t.loc[1, "age"] == 70.0 and math.isnan(t.loc[2, "age"])
    assert t["path"].notna().all()


def _archive_rows() -> list[dict]:
    base = dict(patient_id="IP_1", lesion_id="IL_1", age_approx=50, sex="male",
                anatom_site_general="posterior torso", image_type="dermoscopic",
                diagnosis_1="Malignant", diagnosis_2=None, diagnosis_3=None, diagnosis_4=None,
                diagnosis_5=None)
    return [
        {**base, "isic_id": "ISIC_A1", "diagnosis_2": "Malignant melanocytic proliferations "
         "(Melanoma)", "diagnosis_3": "Melanoma Invasive",
         "diagnosis_4": "Melanoma Invasive, Superficial spreading"},
        {**base, "isic_id": "ISIC_A2", "diagnosis_1": "Benign", "diagnosis_3": "Nevus",
         "lesion_id": "IL_2"},
        {**base, "isic_id": "ISIC_A3", "diagnosis_3": "Squamous cell carcinoma, Invasive",
         "patient_id": "IP_2", "lesion_id": "IL_3"},
        {**base, "isic_id": "ISIC_A4", "image_type": "clinical: close-up",
         "diagnosis_3": "Nevus", "lesion_id": "IL_4"},
        {**base, "isic_id": "ISIC_A5", "diagnosis_1": "Benign", "diagnosis_3": "Solar lentigo",
         "age_approx": None, "sex": None},
    ]


def test_reads_isic_archive_hierarchical_diagnoses(tmp_path: Path) -> None:
    _csv(tmp_path / "metadata.csv", _archive_rows())
    for i in range(1, 6):
        _image(tmp_path / f"ISIC_A{i}.jpg")
    result = read_dataset(tmp_path)
    t = result.table
    assert result.format == "isic_archive"
    assert result.classes == HAM10000_CLASSES
    assert list(t["image_id"]) == ["ISIC_A1", "ISIC_A2", "ISIC_A3", "ISIC_A5"]
    # Subtype falls back to its parent; unmapped keeps its text (no class: unknown_label).
    assert list(t["label"]) == ["mel", "nv", "Squamous cell carcinoma, Invasive", "bkl"]
    assert list(t["patient_id"]) == ["IP_1", "IP_1", "IP_2", "IP_1"]
    assert "diagnosis_3" in t.columns and "image_type" in t.columns
    assert result.excluded == [{"image_id": "ISIC_A4", "reason": "not_dermoscopic",
                                "detail": "image_type 'clinical: close-up'"}]
    assert result.orphan_files == []  # the excluded row still names its file


def test_isic_archive_keeps_clinical_images_when_asked(tmp_path: Path) -> None:
    _csv(tmp_path / "metadata.csv", _archive_rows())
    _image(tmp_path / "ISIC_A1.jpg")
    result = read_dataset(tmp_path, dermoscopic_only=False)
    assert len(result.table) == 5 and result.excluded == []


def test_isic_archive_label_map_overrides_defaults(tmp_path: Path) -> None:
    _csv(tmp_path / "metadata.csv", _archive_rows())
    _image(tmp_path / "ISIC_A1.jpg")
    result = read_dataset(tmp_path, label_map={"Squamous cell carcinoma, Invasive": "akiec",
                                               "Solar lentigo": None})
    assert list(result.table["label"]) == ["mel", "nv", "akiec", "Solar lentigo"]


def test_reads_isic_archive_older_diagnosis_column(tmp_path: Path) -> None:
    _csv(tmp_path / "metadata.csv", [
        dict(isic_id="ISIC_B1", lesion_id=None, patient_id=None, age_approx=35, sex="female",
             anatom_site_general="lower extremity", diagnosis="nevus", image_type="dermoscopic"),
        dict(isic_id="ISIC_B2", lesion_id=None, patient_id=None, age_approx=60, sex="male",
             anatom_site_general="head/neck", diagnosis="actinic keratosis",
             image_type="dermoscopic"),
    ])
    _image(tmp_path / "images" / "ISIC_B1.jpg")
    result = read_dataset(tmp_path)
    assert result.format == "isic_archive"
    assert list(result.table["label"]) == ["nv", "akiec"]


def test_reads_pad_ufes20(tmp_path: Path) -> None:
    base = dict(smoke=False, drink=False, background_father="POMERANIA", fitspatrick=2.0,
                itch="True", grew="UNK", hurt="False", changed="False", bleed="False",
                elevation="True", biopsed=True, diameter_1=6.0)
    _csv(tmp_path / "metadata.csv", [
        {**base, "patient_id": "PAT_1", "lesion_id": 10, "img_id": "PAT_1_10_100.png",
         "diagnostic": "ACK", "age": 55, "gender": "FEMALE", "region": "ARM"},
        {**base, "patient_id": "PAT_1", "lesion_id": 11, "img_id": "PAT_1_11_101.png",
         "diagnostic": "SEK", "age": 55, "gender": "FEMALE", "region": "FACE"},
        {**base, "patient_id": "PAT_2", "lesion_id": 12, "img_id": "PAT_2_12_102.png",
         "diagnostic": "MEL", "age": 71, "gender": None, "region": "CHEST"},
    ])
    for i in range(3):
        _image(tmp_path / "images" / f"imgs_part_{i + 1}" / ["PAT_1_10_100.png",
               "PAT_1_11_101.png", "PAT_2_12_102.png"][i])
    result = read_dataset(tmp_path)
    t = result.table
    assert result.format == "pad_ufes20"
    assert result.classes == PAD_UFES20_CLASSES
    assert list(t["image_id"]) == ["PAT_1_10_100", "PAT_1_11_101", "PAT_2_12_102"]
    assert list(t["label"]) == ["ack", "sek", "mel"]
    assert list(t["lesion_id"]) == ["10", "11", "12"]
    assert list(t["sex"]) == ["female", "female", None]
    assert list(t["site"]) == ["upper extremity", "face", "chest"]  # PAD ARM -> canonical
    assert t["path"].notna().all()
    assert {"fitspatrick", "itch", "grew", "elevation", "biopsed"} <= set(t.columns)
    assert "img_id" not in t.columns and "gender" not in t.columns


def test_reads_generic_csv_with_column_map(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "labels.csv", [
        dict(file="a.jpg", diagnosis="Melanoma", subject="S1", years=40, gender="F",
             body_part="Arm", scanner="X"),
        dict(file="b.jpg", diagnosis="Benign", subject="S2", years="", gender="M",
             body_part="", scanner="Y"),
    ])
    _image(tmp_path / "pics" / "a.jpg")
    _image(tmp_path / "pics" / "b.jpg")
    column_map = {"image_id": "file", "label": "diagnosis", "patient_id": "subject",
                  "age": "years", "sex": "gender", "site": "body_part"}
    result = read_dataset(csv, column_map=column_map)
    t = result.table
    assert result.format == "generic"
    assert result.classes == ("Benign", "Melanoma")
    assert list(t["image_id"]) == ["a", "b"]
    assert list(t["patient_id"]) == ["S1", "S2"]
    assert list(t["sex"]) == ["female", "male"] and list(t["site"]) == ["upper extremity", None]
    assert t["lesion_id"].isna().all() and list(t["scanner"]) == ["X", "Y"]
    assert t["path"].notna().all()


def test_generic_column_map_errors_name_the_problem(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "labels.csv", [dict(file="a.jpg", diagnosis="x")])
    _image(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="missing: \\['label'\\]"):
        read_dataset(csv, column_map={"image_id": "file"})
    with pytest.raises(DataError, match="label='dx'.*found \\[file, diagnosis\\]"):
        read_dataset(csv, column_map={"image_id": "file", "label": "dx"})
    with pytest.raises(DataError, match="needs column_map"):
        read_dataset(csv, format="generic")


def test_unknown_layout_error_names_found_columns(tmp_path: Path) -> None:
    _csv(tmp_path / "data.csv", [dict(filename="a.jpg", klass="mel", years=3)])
    _image(tmp_path / "a.jpg")
    with pytest.raises(DataError) as err:
        read_dataset(tmp_path)
    message = str(err.value)
    assert "data.csv has columns [filename, klass, years]" in message
    for name in ("ham10000 needs image_id, dx", "isic2019 needs", "isic_archive needs isic_id",
                 "pad_ufes20 needs img_id, diagnostic", "generic needs"):
        assert name in message


def test_named_format_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    _csv(tmp_path / "metadata.csv", _ham_rows())
    _image(tmp_path / "ISIC_1.jpg")
    with pytest.raises(DataError, match="not in the pad_ufes20 layout.*lesion_id, image_id, dx"):
        read_dataset(tmp_path, format="pad_ufes20")
    with pytest.raises(DataError, match="unknown data set format 'ham'"):
        read_dataset(tmp_path, format="ham")


def test_folder_without_images_or_csv_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no CSV file"):
        read_dataset(tmp_path)
    _csv(tmp_path / "metadata.csv", _ham_rows())
    with pytest.raises(DataError, match="no image files"):
        read_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("bad", ["image_id=file", {"image_id": 3, "label": "diagnosis"}, ["file", "diagnosis"]])
def test_column_map_of_the_wrong_type_is_refused(tmp_path: Path, bad) -> None:
    csv = _csv(tmp_path / "labels.csv", [dict(file="a.jpg", diagnosis="x")])
    _image(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="column_map: expected a mapping of canonical names to CSV column names"):
        read_dataset(csv, column_map=bad)
