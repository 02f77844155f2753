"""Cleaning: every drop reason, the fixes, the report, the memo of image checks."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile
from rich.table import Table

from dermfuse.data.clean import CleaningReport, clean, summarize
from dermfuse.data.formats import read_dataset


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DERMFUSE_CACHE", str(cache))
    return cache


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]


def _row(image_id: str, dx: str = "nv", age: object = 40, sex: str = "male",
         site: str = "back", lesion: str | None = None) -> dict:
    return dict(lesion_id=lesion or f"HAM_{image_id}", image_id=image_id, dx=dx,
                dx_type="histo", age=age, sex=sex, localization=site)


def _dataset(root: Path) -> Path:
    """A HAM10000-layout folder holding one of every defect cleaning knows."""
    rows = [
        _row("ok1", "mel"), _row("ok2", "nv", age=50),
        _row("ok1", "mel"),                      # exact repeat of ok1's row
        _row("ok2", "bkl", age=51),              # same id, different values
        _row("same"), _row("text"), _row("empty"), _row("trunc"),
        _row("badlabel", "xyz"), _row("nolabel", ""), _row("nofile"),
        _row("neg", age=-5), _row("old", age=130), _row("abc", age="abc"),
        _row("unk", age=None, sex="unknown", site="unknown"),
    ]
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    images = root / "images"
    images.mkdir()
    files = {"ok1": _jpeg((200, 0, 0)), "ok2": _jpeg((0, 200, 0)), "same": _jpeg((200, 0, 0)),
             "text": b"this is not an image", "empty": b"", "trunc": _truncated_jpeg(),
             "badlabel": _jpeg((1, 2, 3)), "nolabel": _jpeg((4, 5, 6)), "neg": _jpeg((7, 8, 9)),
             "old": _jpeg((10, 11, 12)), "abc": _jpeg((13, 14, 15)), "unk": _jpeg((16, 17, 18)),
             "orphan": _jpeg((19, 20, 21))}
    for name, data in files.items():
        (images / f"{name}.jpg").write_bytes(data)
    return root


@pytest.fixture
def cleaned(tmp_path: Path) -> tuple[pd.DataFrame, CleaningReport]:
    return clean(read_dataset(_dataset(tmp_path)), progress=False)


def _reasons(report: CleaningReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in report.dropped:
        out.setdefault(entry["reason"], []).append(entry["image_id"])
    return out


@pytest.mark.parametrize("reason, image_ids", [
    ("duplicate_row", ["ok1", "ok2"]),
    ("duplicate_image", ["same"]),
    ("unreadable_image", ["text"]),
    ("empty_image", ["empty"]),
    ("truncated_image", ["trunc"]),
    ("unknown_label", ["badlabel"]),
    ("missing_label", ["nolabel"]),
    ("missing_image_file", ["nofile"]),
])
def test_each_drop_reason_names_its_rows(cleaned, reason: str, image_ids: list[str]) -> None:
    table, report = cleaned
    assert _reasons(report)[reason] == image_ids
    assert report.counts[reason] == len(image_ids)
    assert not set(image_ids) - {"ok1", "ok2"} & set(table["image_id"])


def test_kept_rows_and_totals(cleaned) -> None:
    table, report = cleaned
    assert list(table["image_id"]) == ["ok1", "ok2", "neg", "old", "abc", "unk"]
    assert report.n_in == 15 and report.n_out == 6
    assert report.n_in - report.n_out == len(report.dropped) == sum(report.counts.values())
    assert table.loc[1, "label"] == "nv"  # the first of the two differing rows is kept
    assert table["sha1"].str.fullmatch("[0-9a-f]{40}").all()


def test_duplicate_row_detail_says_whether_values_differ(cleaned) -> None:
    details = {e["image_id"]: e["detail"] for e in cleaned[1].dropped
               if e["reason"] == "duplicate_row"}
    assert details["ok1"] == "exact repeat of an earlier row"
    assert "values differ" in details["ok2"]
    assert "label 'nv' vs 'bkl'" in details["ok2"] and "age 50.0 vs 51.0" in details["ok2"]


def test_unreadable_and_truncated_details_say_why(cleaned) -> None:
    details = {e["image_id"]: e["detail"] for e in cleaned[1].dropped}
    assert "text.jpg" in details["text"] and "not a readable image" in details["text"]
    assert "truncated" in details["trunc"] and "empty.jpg' is empty (0 bytes)" in details["empty"]


def test_duplicate_image_detail_names_kept_image(cleaned) -> None:
    entry = next(e for e in cleaned[1].dropped if e["reason"] == "duplicate_image")
    assert entry["detail"] == "same bytes as kept image ok1"


def test_truncated_image_found_even_when_pillow_allows_truncation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _, report = clean(read_dataset(_dataset(tmp_path)), progress=False)
    assert _reasons(report)["truncated_image"] == ["trunc"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global setting is restored


def test_invalid_ages_become_nan_and_are_counted_as_fixed(cleaned) -> None:
    table, report = cleaned
    ages = dict(zip(table["image_id"], table["age"]))
    assert all(math.isnan(ages[i]) for i in ("neg", "old", "abc"))
    assert ages["ok1"] == 40.0
    assert report.fixed == {"age_invalid": 3}


def test_missing_values_counted_after_cleaning(cleaned) -> None:
    table, report = cleaned
    assert report.missing == {"age": 4, "sex": 1, "site": 1}
    assert table.loc[table["image_id"] == "unk", ["sex", "site"]].values.tolist() == [
        ["unknown", "unknown"]]


def test_orphan_files_listed_and_counted(cleaned, tmp_path: Path) -> None:
    _, report = cleaned
    assert report.orphan_files == [str(tmp_path / "images" / "orphan.jpg")]


def test_second_clean_decodes_nothing(tmp_path: Path, _cache: Path) -> None:
    result = read_dataset(_dataset(tmp_path))
    first_table, first = clean(result, progress=False)
    assert first.decoded == 10  # each file named by a row that passed the label checks
    assert list((_cache / "image_checks").glob("*.json"))
    second_table, second = clean(result, progress=False)
    assert second.decoded == 0
    assert second.to_dict()["dropped"] == first.to_dict()["dropped"]
    pd.testing.assert_frame_equal(first_table, second_table)


def test_changed_file_is_checked_again(tmp_path: Path) -> None:
    result = read_dataset(_dataset(tmp_path))
    clean(result, progress=False)
    target = tmp_path / "images" / "trunc.jpg"
    target.write_bytes(_jpeg((99, 99, 99), size=40))
    os.utime(target, ns=(1, 1))
    table, report = clean(result, progress=False)
    assert report.decoded == 1
    assert "trunc" in set(table["image_id"])


def test_check_images_false_reads_no_files(tmp_path: Path) -> None:
    table, report = clean(read_dataset(_dataset(tmp_path)), check_images=False, progress=False)
    assert report.decoded == 0
    assert table["sha1"].isna().all()
    assert set(_reasons(report)) == {"duplicate_row", "unknown_label", "missing_label",
                                     "missing_image_file"}


def test_report_is_json_and_renders_a_table(cleaned, tmp_path: Path) -> None:
    _, report = cleaned
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    report.save_json(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["n_out"] == 6
    table = report.render()
    assert isinstance(table, Table)
    assert [c.header for c in table.columns] == ["reason", "count"]


def test_summarize_gives_the_data_check_object(cleaned) -> None:
    table, report = cleaned
    summary = summarize(table, report, "ham10000")
    assert json.loads(json.dumps(summary)) == summary
    assert summary["format"] == "ham10000" and summary["images"] == 6
    assert summary["lesions"] == 6 and summary["patients"] is None
    assert summary["classes"] == {"akiec": 0, "bcc": 0, "bkl": 0, "df": 0, "mel": 1, "nv": 5,
                                  "vasc": 0}
    assert summary["missing"] == {"age": 4, "sex": 1, "site": 1}
    assert summary["dropped"]["duplicate_row"] == 2 and summary["fixed"] == {"age_invalid": 3}
    assert summary["orphan_files"] == 1


def test_non_dermoscopic_rows_are_reported_as_dropped(tmp_path: Path) -> None:
    rows = [dict(isic_id=f"ISIC_{i}", patient_id="IP_1", lesion_id=f"IL_{i}", age_approx=40,
                 sex="female", anatom_site_general="head/neck", diagnosis="nevus",
                 image_type=kind) for i, kind in enumerate(["dermoscopic", "clinical: overview"])]
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    for i in range(2):
        (tmp_path / f"ISIC_{i}.jpg").write_bytes(_jpeg((i, 50, 50)))
    table, report = clean(read_dataset(tmp_path), progress=False)
    assert list(table["image_id"]) == ["ISIC_0"]
    assert report.counts["not_dermoscopic"] == 1 and report.n_in == 2
    assert report.dropped[0]["detail"] == "image_type 'clinical: overview'"


HAM_ENV = "DERMFUSE_HAM10000"


@pytest.mark.skipif(not os.environ.get(HAM_ENV), reason=f"set {HAM_ENV} to a HAM10000 folder")
def test_real_ham10000_folder() -> None:
    result = read_dataset(os.environ[HAM_ENV])
    read = result.table
    assert result.format == "ham10000" and len(read) == 8585
    assert read["lesion_id"].nunique() == 6403
    assert read["label"].value_counts().to_dict() == {
        "nv": 5747, "mel": 954, "bkl": 942, "bcc": 441, "akiec": 280, "vasc": 122, "df": 99}

    table, report = clean(result, progress=False)
    # The folder holds two byte-identical nevus images (each pair from one lesion).
    assert _reasons(report) == {"duplicate_image": ["ISIC_0024366", "ISIC_0024777"]}
    summary = summarize(table, report, result.format)
    assert summary["images"] == 8583 and summary["lesions"] == 6403
    assert summary["classes"]["nv"] == 5745
    assert summary["missing"] == {"age": 51, "sex": 51, "site": 205}
    assert summary["orphan_files"] == 0 and summary["fixed"] == {"age_invalid": 0}
    assert clean(result, progress=False)[1].decoded == 0
