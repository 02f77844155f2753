"""The data set layouts dermfuse reads: their names, their own classes, the columns each
needs, and finding a data set's CSV and its layout (`locate_csv`, `detect_layout`).

`dermfuse.data.layout_readers` reads each layout; `dermfuse.data.formats.read_dataset`
puts the pieces together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from dermfuse import HAM10000_CLASSES
from dermfuse.data.csv_files import read_header
from dermfuse.errors import DataError

__all__ = [
    "FORMATS",
    "FORMAT_CLASSES",
    "GENERIC_KEYS",
    "IMAGE_EXTENSIONS",
    "ISIC2019_CLASSES",
    "ISIC2019_GROUND_TRUTH",
    "ISIC2019_METADATA",
    "ISIC2019_ONEHOT",
    "ISIC_ARCHIVE_LABEL_MAP",
    "PAD_UFES20_CLASSES",
    "detect_format",
    "detect_layout",
    "locate_csv",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FORMATS = ("ham10000", "isic2019", "isic_archive", "pad_ufes20", "generic")

ISIC2019_CLASSES = ("ak", "bcc", "bkl", "df", "mel", "nv", "scc", "vasc", "unk")
"""ISIC 2019's own diagnoses: the eight named ones alphabetically, then 'unk'."""
PAD_UFES20_CLASSES = ("ack", "bcc", "mel", "nev", "scc", "sek")
FORMAT_CLASSES: dict[str, tuple[str, ...]] = {
    "ham10000": HAM10000_CLASSES,
    "isic2019": ISIC2019_CLASSES,
    "isic_archive": HAM10000_CLASSES,
    "pad_ufes20": PAD_UFES20_CLASSES,
}

ISIC_ARCHIVE_LABEL_MAP: dict[str, str | None] = {
    # ISIC Archive diagnosis (any level, matched case-insensitively) -> HAM10000 class.
    # Older exports ('diagnosis') use lower-case names, newer ones ('diagnosis_1'..'_5') the
    # hierarchy's names. A diagnosis absent here keeps its own text as label, which is no
    # class, so cleaning drops the row as unknown_label.
    "melanoma": "mel", "melanoma invasive": "mel", "melanoma in situ": "mel",
    "melanoma, nos": "mel",
    "nevus": "nv",
    "basal cell carcinoma": "bcc",
    "seborrheic keratosis": "bkl", "solar lentigo": "bkl", "lichen planus like keratosis": "bkl",
    "lichenoid keratosis": "bkl", "pigmented benign keratosis": "bkl",
    "dermatofibroma": "df",
    "solar or actinic keratosis": "akiec", "actinic keratosis": "akiec",
    "squamous cell carcinoma in situ": "akiec", "bowen's disease": "akiec",
    "hemangioma": "vasc", "angioma": "vasc", "angiokeratoma": "vasc",
    "pyogenic granuloma": "vasc", "vascular lesion": "vasc", "hemorrhage": "vasc",
}

ISIC2019_ONEHOT = ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC", "UNK")
ISIC2019_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_METADATA = "ISIC_2019_Training_Metadata.csv"
_PREFERRED_CSVS = ("HAM10000_metadata.csv", ISIC2019_GROUND_TRUTH, "metadata.csv")
GENERIC_KEYS = ("image_id", "label", "lesion_id", "patient_id", "age", "sex", "site")

_LAYOUT_NEEDS = {
    "ham10000": "image_id, dx (lesion_id, age, sex, localization used when present)",
    "isic2019": f"{ISIC2019_GROUND_TRUTH} with image and one-hot MEL, NV, BCC, AK, BKL, DF, VASC, SCC "
    f"(UNK optional), plus {ISIC2019_METADATA} beside it",
    "isic_archive": "isic_id and diagnosis (older exports) or diagnosis_1..diagnosis_5",
    "pad_ufes20": "img_id, diagnostic (patient_id, lesion_id, age, gender, region when present)",
    "generic": "any columns, read with format='generic' and column_map={'image_id': ..., "
    "'label': ...} (optional keys: lesion_id, patient_id, age, sex, site)",
}


def detect_format(columns: Iterable[str]) -> str | None:
    """The layout a CSV's column names belong to, or None (generic is never detected)."""
    cols = set(columns)
    if "image" in cols and {c for c in ISIC2019_ONEHOT if c != "UNK"} <= cols:
        return "isic2019"
    if "isic_id" in cols and ("diagnosis" in cols or any(c.startswith("diagnosis_") for c in cols)):
        return "isic_archive"
    if {"img_id", "diagnostic"} <= cols:
        return "pad_ufes20"
    if {"image_id", "dx"} <= cols:
        return "ham10000"
    return None


def _csvs_in(folder: Path) -> list[Path]:
    found = sorted(folder.glob("*.csv"))
    if not found:
        found = sorted(p for p in folder.rglob("*.csv")
                       if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    rank = {name: i for i, name in enumerate(_PREFERRED_CSVS)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(rank)), str(p)))


def _layout_error(where: Path, headers: dict[Path, list[str]], format: str | None) -> DataError:
    found = "; ".join(f"{p.name} has columns [{', '.join(cols)}]" for p, cols in headers.items())
    if format is None:
        needs = "; ".join(f"{name} needs {_LAYOUT_NEEDS[name]}" for name in FORMATS)
        return DataError(f"no known data set layout in {where}: {found}. Expected one of: {needs}")
    return DataError(f"{where} is not in the {format} layout: {found}. "
                     f"{format} needs {_LAYOUT_NEEDS[format]}")


def locate_csv(path: Path, format: str | None) -> tuple[str, Path]:
    """(format, csv) for a data set folder or CSV file."""
    if not path.exists():
        raise DataError(f"data set path {path} does not exist")
    if path.is_file():
        if path.name == ISIC2019_METADATA and (path.parent / ISIC2019_GROUND_TRUTH).is_file():
            path = path.parent / ISIC2019_GROUND_TRUTH
        csvs = [path]
    else:
        csvs = _csvs_in(path)
        if not csvs:
            raise DataError(f"no CSV file in {path}; a data set folder holds a metadata CSV "
                            f"and the images")
    if format == "generic":
        if len(csvs) > 1:
            named = [p for p in csvs if p.name == "metadata.csv"]
            if len(named) != 1:
                raise DataError(f"several CSV files in {path} ({', '.join(p.name for p in csvs)}); "
                                f"pass the CSV file itself")
            csvs = named
        return "generic", csvs[0]
    headers = {p: read_header(p) for p in csvs}
    for csv, cols in headers.items():
        found = detect_format(cols)
        if found is not None and (format is None or found == format):
            return found, csv
    raise _layout_error(path, headers, format)


def detect_layout(path: str | os.PathLike) -> str | None:
    """The known format whose columns a data set folder's (or CSV's) header matches, or
    None when none does (or there is no CSV to look at)."""
    try:
        return locate_csv(Path(os.path.abspath(path)), None)[0]
    except DataError:
        return None
