"""Data set readers: every supported layout becomes one canonical table, one row per image.

`read_dataset(path)` finds the CSV, detects the layout from its column names (or takes
`format=`), finds the image files anywhere under the data set's folder, and normalises the
metadata. Nothing is dropped here except non-dermoscopic ISIC Archive images, which are
listed in `ReadResult.excluded`; cleaning (`dermfuse.data.clean`) decides the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from dermfuse import HAM10000_CLASSES
from dermfuse.data.vocab import Unrecognised, normalise_sex, normalise_site, parse_age
from dermfuse.errors import DataError

__all__ = [
    "CANONICAL_COLUMNS",
    "FORMATS",
    "FORMAT_CLASSES",
    "IMAGE_EXTENSIONS",
    "ISIC2019_CLASSES",
    "ISIC_ARCHIVE_LABEL_MAP",
    "PAD_UFES20_CLASSES",
    "ReadResult",
    "detect_format",
    "read_dataset",
]

CANONICAL_COLUMNS = ("image_id", "path", "label", "lesion_id", "patient_id", "age", "sex", "site")
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

_ISIC2019_ONEHOT = ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC", "UNK")
_ISIC2019_GT = "ISIC_2019_Training_GroundTruth.csv"
_ISIC2019_META = "ISIC_2019_Training_Metadata.csv"
_PREFERRED_CSVS = ("HAM10000_metadata.csv", _ISIC2019_GT, "metadata.csv")
_GENERIC_KEYS = ("image_id", "label", "lesion_id", "patient_id", "age", "sex", "site")

_NEEDS = {
    "ham10000": "image_id, dx (lesion_id, age, sex, localization used when present)",
    "isic2019": f"{_ISIC2019_GT} with image and one-hot MEL, NV, BCC, AK, BKL, DF, VASC, SCC "
    f"(UNK optional), plus {_ISIC2019_META} beside it",
    "isic_archive": "isic_id and diagnosis (older exports) or diagnosis_1..diagnosis_5",
    "pad_ufes20": "img_id, diagnostic (patient_id, lesion_id, age, gender, region when present)",
    "generic": "any columns, read with format='generic' and column_map={'image_id': ..., "
    "'label': ...} (optional keys: lesion_id, patient_id, age, sex, site)",
}


@dataclass
class ReadResult:
    """A data set read into the canonical table (columns: `CANONICAL_COLUMNS`, `age_raw`,
    then the format's extra columns). `excluded` lists rows left out on purpose, as dicts
    (image_id, reason, detail), e.g. non-dermoscopic ISIC Archive images."""

    table: pd.DataFrame
    format: str
    classes: tuple[str, ...]
    orphan_files: list[str]
    root: Path
    excluded: list[dict] = field(default_factory=list)


# --- small normalisers -------------------------------------------------------------------

def _text(values: Iterable[Any]) -> list[str | None]:
    """Strip strings; NaN, None and '' become None."""
    out: list[str | None] = []
    for v in values:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            out.append(None)
        else:
            s = str(v).strip()
            out.append(s or None)
    return out


def _category(values: Iterable[Any], normalise) -> list[str | None]:
    """Canonical levels (`dermfuse.data.vocab`); missing -> None. A value no vocabulary
    knows keeps its normalised text, so cleaning can count and name it."""
    out: list[str | None] = []
    for v in values:
        level = normalise(v)
        out.append(level.key if isinstance(level, Unrecognised) else level)
    return out


def _stem(name: str | None) -> str | None:
    """'imgs/ISIC_1.jpg' -> 'ISIC_1'; ids without an image extension are kept whole."""
    if name is None:
        return None
    base = os.path.basename(name.replace("\\", "/"))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base


def _column(frame: pd.DataFrame, name: str | None) -> list[Any]:
    """The column's values, or None per row when the column is absent."""
    if name is None or name not in frame.columns:
        return [None] * len(frame)
    return frame[name].tolist()


def _mapped_classes(own: tuple[str, ...], label_map: Mapping[str, str | None] | None) -> tuple[str, ...]:
    """Class list after a user label map: the distinct targets, sorted (as HAM10000's are)."""
    if not label_map:
        return own
    lowered = {k.strip().lower(): v for k, v in label_map.items()}
    return tuple(sorted({lowered.get(c, c) for c in own} - {None}))


def _apply_map(labels: list[str | None], label_map: Mapping[str, str | None] | None,
               lower: bool = True) -> list[str | None]:
    if not label_map:
        return labels
    table = {(k.strip().lower() if lower else k): v for k, v in label_map.items()}
    mapped = [table.get(v) if v is not None else None for v in labels]
    # A label mapped to None keeps its own name, so cleaning reports it as unknown_label.
    return [m if m is not None else v for m, v in zip(mapped, labels)]


# --- CSV discovery and detection ---------------------------------------------------------

_SNIFF_BYTES = 1 << 16
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "vertical bar"}


def _encoding_problem(path: Path, data: bytes, err: UnicodeDecodeError) -> DataError:
    """A DataError naming the byte that is not UTF-8, the likely encoding and the fix."""
    line = data[: err.start].count(b"\n") + 1
    bad = data[err.start: err.start + 1].hex().upper()
    if data.count(b"\x00") > len(data) // 8:
        guess = "UTF-16 without a byte-order mark"
        fix = f"iconv -f utf-16le -t utf-8 {path.name} > {path.stem}-utf8.csv"
    else:
        guess = "Windows-1252 / Latin-1 (as Excel saves 'CSV' on Windows)"
        fix = f"iconv -f cp1252 -t utf-8 {path.name} > {path.stem}-utf8.csv"
    return DataError(f"{path} is not UTF-8 text: byte 0x{bad} on line {line} cannot be decoded; it looks "
                     f"like {guess}. Save it as UTF-8 (in Excel: 'CSV UTF-8'), e.g. {fix}")


def _dialect(path: Path) -> tuple[str, str]:
    """(encoding, delimiter) of a CSV, read where unambiguous: a UTF-8 or UTF-16 byte-order
    mark, and ';' / tab / '|' when the header line holds no comma. Another encoding is a
    DataError that names it and says how to convert the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif head.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    else:
        encoding = "utf-8"
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if not (len(head) == _SNIFF_BYTES and err.start >= len(head) - 3):  # not a cut character
                raise _encoding_problem(path, head, err) from None
    text = head.decode(encoding, errors="ignore")
    header = text.splitlines()[0] if text.strip() else ""
    if "," not in header:
        for sep in _OTHER_DELIMITERS:
            if sep in header:
                return encoding, sep
    return encoding, ","


def _read_csv(path: Path, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV with the named columns as text (so ids and ages keep their spelling)."""
    encoding, sep = _dialect(path)
    try:
        header = _header(path)
        dtype = {c: str for c in text_columns if c in header}
        frame = pd.read_csv(path, dtype=dtype, encoding=encoding, sep=sep)
    except UnicodeDecodeError as err:
        raise _encoding_problem(path, path.read_bytes(), err) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read {path} as CSV: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _header(path: Path) -> list[str]:
    encoding, sep = _dialect(path)
    try:
        return [str(c).strip() for c in pd.read_csv(path, nrows=0, encoding=encoding, sep=sep).columns]
    except UnicodeDecodeError as err:
        raise _encoding_problem(path, path.read_bytes(), err) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read {path} as CSV: {err}") from err


def detect_format(columns: Iterable[str]) -> str | None:
    """The layout a CSV's column names belong to, or None (generic is never detected)."""
    cols = set(columns)
    if "image" in cols and {c for c in _ISIC2019_ONEHOT if c != "UNK"} <= cols:
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
        needs = "; ".join(f"{name} needs {_NEEDS[name]}" for name in FORMATS)
        return DataError(f"no known data set layout in {where}: {found}. Expected one of: {needs}")
    return DataError(f"{where} is not in the {format} layout: {found}. "
                     f"{format} needs {_NEEDS[format]}")


def _locate(path: Path, format: str | None) -> tuple[str, Path]:
    """(format, csv) for a data set folder or CSV file."""
    if not path.exists():
        raise DataError(f"data set path {path} does not exist")
    if path.is_file():
        if path.name == _ISIC2019_META and (path.parent / _ISIC2019_GT).is_file():
            path = path.parent / _ISIC2019_GT
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
    headers = {p: _header(p) for p in csvs}
    for csv, cols in headers.items():
        found = detect_format(cols)
        if found is not None and (format is None or found == format):
            return found, csv
    raise _layout_error(path, headers, format)


def detect_layout(path: str | os.PathLike) -> str | None:
    """The known format whose columns a data set folder's (or CSV's) header matches, or
    None when none does (or there is no CSV to look at)."""
    try:
        return _locate(Path(os.path.abspath(path)), None)[0]
    except DataError:
        return None


# --- one reader per layout: each returns (raw canonical columns, extras, classes, excluded) --

_Raw = tuple[dict[str, list[Any]], pd.DataFrame, tuple[str, ...], list[dict]]


def _split(frame: pd.DataFrame,
           mapping: dict[str, str | None]) -> tuple[dict[str, list[Any]], pd.DataFrame]:
    """Canonical raw columns per `mapping` (canonical -> CSV column) and the other columns."""
    raw = {key: _column(frame, col) for key, col in mapping.items()}
    used = {c for c in mapping.values() if c is not None}
    return raw, frame[[c for c in frame.columns if c not in used]]


def _read_ham10000(csv: Path, label_map: Mapping | None, **_: Any) -> _Raw:
    frame = _read_csv(csv, ["lesion_id", "image_id", "dx", "age", "sex", "localization"])
    raw, extras = _split(frame, {"image_id": "image_id", "label": "dx", "lesion_id": "lesion_id",
                                 "patient_id": None, "age": "age", "sex": "sex",
                                 "site": "localization"})
    raw["label"] = _apply_map([v and v.lower() for v in _text(raw["label"])], label_map)
    return raw, extras, _mapped_classes(HAM10000_CLASSES, label_map), []


def _read_isic2019(csv: Path, label_map: Mapping | None, **_: Any) -> _Raw:
    truth = _read_csv(csv, ["image"])
    meta_path = csv.parent / _ISIC2019_META
    if not meta_path.is_file():
        raise DataError(f"{_ISIC2019_META} not found beside {csv}; ISIC 2019 needs both files "
                        f"(the metadata one holds age_approx, sex, anatom_site_general, lesion_id)")
    meta = _read_csv(meta_path, ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
    if "image" not in meta.columns:
        raise DataError(f"{meta_path} has no 'image' column: found [{', '.join(meta.columns)}]")
    meta = meta.assign(image=_text(meta["image"])).drop_duplicates("image").set_index("image")
    onehot = [c for c in _ISIC2019_ONEHOT if c in truth.columns]
    hits = truth[onehot].apply(pd.to_numeric, errors="coerce").to_numpy(float) >= 0.5
    names = np.array([c.lower() for c in onehot], dtype=object)
    labels = [names[row.argmax()] if row.sum() == 1 else None for row in hits]
    ids = _text(truth["image"])
    frame = meta.reindex(ids).reset_index(drop=True).assign(image=ids)
    raw, extras = _split(frame, {"image_id": "image", "label": None, "lesion_id": "lesion_id",
                                 "patient_id": None, "age": "age_approx", "sex": "sex",
                                 "site": "anatom_site_general"})
    raw["label"] = _apply_map(labels, label_map)
    other = truth.drop(columns=["image", *onehot])
    extras = pd.concat([extras.reset_index(drop=True), other.reset_index(drop=True)], axis=1)
    return raw, extras, _mapped_classes(ISIC2019_CLASSES, label_map), []


def _read_isic_archive(csv: Path, label_map: Mapping | None, dermoscopic_only: bool = True,
                       **_: Any) -> _Raw:
    levels = [f"diagnosis_{i}" for i in range(5, 0, -1)] + ["diagnosis"]
    frame = _read_csv(csv, ["isic_id", "patient_id", "lesion_id", "age_approx", "sex",
                            "anatom_site_general", "image_type", *levels])
    table = {k.strip().lower(): v for k, v in {**ISIC_ARCHIVE_LABEL_MAP, **(label_map or {})}.items()}
    present = [c for c in levels if c in frame.columns]
    labels: list[str | None] = []
    for values in zip(*(_text(frame[c]) for c in present)):
        # Most specific level first; a subtype the table lacks falls back to its parent.
        # Unmapped diagnoses keep their text, so cleaning drops them as unknown_label.
        named = [v for v in values if v is not None]
        known = [table[v.lower()] for v in named if table.get(v.lower()) is not None]
        labels.append(known[0] if known else (named[0] if named else None))
    excluded: list[dict] = []
    if dermoscopic_only and "image_type" in frame.columns:
        kinds = _text(frame["image_type"])
        keep = np.array([k is None or k.lower().startswith("dermoscopic") for k in kinds])
        ids = _text(frame["isic_id"])
        excluded = [{"image_id": _stem(i), "reason": "not_dermoscopic",
                     "detail": f"image_type '{k}'"} for i, k, ok in zip(ids, kinds, keep) if not ok]
        frame = frame[keep].reset_index(drop=True)
        labels = [lab for lab, ok in zip(labels, keep) if ok]
    raw, extras = _split(frame, {"image_id": "isic_id", "label": None, "lesion_id": "lesion_id",
                                 "patient_id": "patient_id", "age": "age_approx", "sex": "sex",
                                 "site": "anatom_site_general"})
    raw["label"] = labels
    return raw, extras, tuple(sorted({v for v in table.values() if v is not None})), excluded


def _read_pad_ufes20(csv: Path, label_map: Mapping | None, **_: Any) -> _Raw:
    frame = _read_csv(csv, ["patient_id", "lesion_id", "img_id", "diagnostic", "age", "gender",
                            "region"])
    raw, extras = _split(frame, {"image_id": "img_id", "label": "diagnostic",
                                 "lesion_id": "lesion_id", "patient_id": "patient_id",
                                 "age": "age", "sex": "gender", "site": "region"})
    raw["label"] = _apply_map([v and v.lower() for v in _text(raw["label"])], label_map)
    return raw, extras, _mapped_classes(PAD_UFES20_CLASSES, label_map), []


def _read_generic(csv: Path, label_map: Mapping | None, column_map: Mapping | None = None,
                  **_: Any) -> _Raw:
    if not column_map:
        raise DataError(f"format 'generic' needs column_map naming the CSV columns of "
                        f"{', '.join(_GENERIC_KEYS)} (image_id and label required)")
    unknown = sorted(set(column_map) - set(_GENERIC_KEYS))
    missing = [k for k in ("image_id", "label") if k not in column_map]
    if unknown or missing:
        raise DataError(f"column_map keys must be among {', '.join(_GENERIC_KEYS)} and include "
                        f"image_id and label; unknown: {unknown}, missing: {missing}")
    frame = _read_csv(csv, list(column_map.values()))
    absent = [f"{k}='{c}'" for k, c in column_map.items() if c not in frame.columns]
    if absent:
        raise DataError(f"column_map names columns not in {csv.name}: {', '.join(absent)}; "
                        f"found [{', '.join(frame.columns)}]")
    raw, extras = _split(frame, {k: column_map.get(k) for k in _GENERIC_KEYS})
    raw["label"] = _apply_map(_text(raw["label"]), label_map, lower=False)
    return raw, extras, tuple(sorted({v for v in raw["label"] if v is not None})), []


_READERS = {
    "ham10000": _read_ham10000,
    "isic2019": _read_isic2019,
    "isic_archive": _read_isic_archive,
    "pad_ufes20": _read_pad_ufes20,
    "generic": _read_generic,
}


# --- images and the final table ----------------------------------------------------------

def _index_images(root: Path) -> dict[str, list[str]]:
    """File stem -> absolute paths of every image file under `root`, in sorted order."""
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                index.setdefault(stem, []).append(os.path.join(dirpath, name))
    return index


def _build_table(raw: dict[str, list[Any]], extras: pd.DataFrame, paths: list[str | None],
                 image_ids: list[str | None]) -> pd.DataFrame:
    # One age rule (dermfuse.data.vocab.parse_age): missing spellings are missing, an
    # unusable value keeps its text in age_raw (cleaning counts it as age_invalid).
    age_text = _text(raw["age"])
    parsed = [parse_age(t) for t in age_text]
    age = pd.Series([a.number for a in parsed], dtype=float)  # out of range: cleaning fixes it
    age_raw = [t if a.problem is not None and np.isnan(a.number) else None
               for t, a in zip(age_text, parsed)]

    def obj(values: list[Any]) -> pd.Series:
        return pd.Series(values, dtype=object)

    table = pd.DataFrame({
        "image_id": obj(image_ids),
        "path": obj(paths),
        "label": obj(raw["label"]),
        "lesion_id": obj(_text(raw["lesion_id"])),
        "patient_id": obj(_text(raw["patient_id"])),
        "age": age.to_numpy(),
        "sex": obj(_category(raw["sex"], normalise_sex)),
        "site": obj(_category(raw["site"], normalise_site)),
        "age_raw": obj(age_raw),
    })
    extras = extras.reset_index(drop=True)
    extras.columns = [f"{c}_orig" if c in table.columns else c for c in extras.columns]
    return pd.concat([table, extras], axis=1)


def read_dataset(path: str | os.PathLike, format: str | None = None,
                 column_map: Mapping[str, str] | None = None,
                 label_map: Mapping[str, str | None] | None = None,
                 dermoscopic_only: bool = True) -> ReadResult:
    """Read a data set folder (or its CSV file) into the canonical table.

    format: one of `FORMATS`, detected from the CSV's columns when None ('generic' when
    only `column_map` is given). column_map: canonical name -> CSV column, for 'generic'.
    label_map: the format's label (lower case; any ISIC Archive diagnosis level) -> class;
    for 'isic_archive' it extends and overrides `ISIC_ARCHIVE_LABEL_MAP`. A label left
    unmapped (or mapped to None) keeps its own text and is no class: cleaning drops it.
    dermoscopic_only: ISIC Archive rows whose image_type is not dermoscopic go to
    `ReadResult.excluded` instead of the table. Images (.jpg/.jpeg/.png) are searched
    recursively under the CSV's folder and matched by file stem. Raises DataError.
    """
    path = Path(os.path.abspath(path))
    if column_map is not None and (not isinstance(column_map, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in column_map.items())):
        raise DataError(f"column_map: expected a mapping of canonical names to CSV column names, "
                        f"e.g. {{'image_id': 'isic_id', 'label': 'diagnosis'}}; got {column_map!r}")
    if format is None and column_map:
        format = "generic"
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown data set format '{format}'; expected one of {', '.join(FORMATS)}")
    if column_map and format != "generic":
        raise DataError(f"column_map applies to format 'generic' only, not '{format}'")
    format, csv = _locate(path, format)
    raw, extras, classes, excluded = _READERS[format](
        csv, label_map, column_map=column_map, dermoscopic_only=dermoscopic_only)
    if len(extras) == 0:
        why = f" after excluding {len(excluded)} non-dermoscopic images" if excluded else ""
        raise DataError(f"{csv} has no rows{why}")
    root = csv.parent
    index = _index_images(root)
    if not index:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) anywhere under {root}")
    image_ids = [_stem(v) for v in _text(raw["image_id"])]
    paths = [index[i][0] if i in index else None for i in image_ids]
    named = set(image_ids) | {e["image_id"] for e in excluded}
    orphans = sorted(p for stem, files in index.items() if stem not in named for p in files)
    table = _build_table(raw, extras, paths, image_ids)
    return ReadResult(table=table, format=format, classes=tuple(classes), orphan_files=orphans,
                      root=root, excluded=excluded)
