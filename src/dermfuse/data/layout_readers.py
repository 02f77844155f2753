"""One reader per data set layout: each reads its CSV(s) into the canonical raw columns
(image_id, label, lesion_id, patient_id, age, sex, site), the columns it leaves over, its
class list and the rows it leaves out on purpose. `READERS` maps a layout name to its reader.

`text_values` and `image_stem` are the small normalisers every reader (and
`dermfuse.data.formats`) applies to ids and labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from dermfuse import HAM10000_CLASSES
from dermfuse.data.csv_files import read_csv
from dermfuse.data.layouts import (
    GENERIC_KEYS,
    IMAGE_EXTENSIONS,
    ISIC2019_CLASSES,
    ISIC2019_METADATA,
    ISIC2019_ONEHOT,
    ISIC_ARCHIVE_LABEL_MAP,
    PAD_UFES20_CLASSES,
)
from dermfuse.errors import DataError

__all__ = ["READERS", "image_stem", "text_values"]


# --- small normalisers -------------------------------------------------------------------

def text_values(values: Iterable[Any]) -> list[str | None]:
    """Strip strings; NaN, None and '' become None."""
    out: list[str | None] = []
    for v in values:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            out.append(None)
        else:
            s = str(v).strip()
            out.append(s or None)
    return out


def image_stem(name: str | None) -> str | None:
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


# --- one reader per layout: each returns (raw canonical columns, extras, classes, excluded) --

_Raw = tuple[dict[str, list[Any]], pd.DataFrame, tuple[str, ...], list[dict]]


def _split(frame: pd.DataFrame,
           mapping: dict[str, str | None]) -> tuple[dict[str, list[Any]], pd.DataFrame]:
    """Canonical raw columns per `mapping` (canonical -> CSV column) and the other columns."""
    raw = {key: _column(frame, col) for key, col in mapping.items()}
    used = {c for c in mapping.values() if c is not None}
    return raw, frame[[c for c in frame.columns if c not in used]]


def _read_ham10000(csv: Path, label_map: Mapping | None, **_: Any) -> _Raw:
    frame = read_csv(csv, ["lesion_id", "image_id", "dx", "age", "sex", "localization"])
    raw, extras = _split(frame, {"image_id": "image_id", "label": "dx", "lesion_id": "lesion_id",
                                 "patient_id": None, "age": "age", "sex": "sex",
                                 "site": "localization"})
    raw["label"] = _apply_map([v and v.lower() for v in text_values(raw["label"])], label_map)
    return raw, extras, _mapped_classes(HAM10000_CLASSES, label_map), []


def _read_isic2019(csv: Path, label_map: Mapping | None, **_: Any) -> _Raw:
    truth = read_csv(csv, ["image"])
    meta_path = csv.parent / ISIC2019_METADATA
    if not meta_path.is_file():
        raise DataError(f"{ISIC2019_METADATA} not found beside {csv}; ISIC 2019 needs both files "
                        f"(the metadata one holds age_approx, sex, anatom_site_general, lesion_id)")
    meta = read_csv(meta_path, ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
    if "image" not in meta.columns:
        raise DataError(f"{meta_path} has no 'image' column: found [{', '.join(meta.columns)}]")
    meta = meta.assign(image=text_values(meta["image"])).drop_duplicates("image").set_index("image")
    onehot = [c for c in ISIC2019_ONEHOT if c in truth.columns]
    hits = truth[onehot].apply(pd.to_numeric, errors="coerce").to_numpy(float) >= 0.5
    names = np.array([c.lower() for c in onehot], dtype=object)
    labels = [names[row.argmax()] if row.sum() == 1 else None for row in hits]
    ids = text_values(truth["image"])
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
    frame = read_csv(csv, ["isic_id", "patient_id", "lesion_id", "age_approx", "sex",
                            "anatom_site_general", "image_type", *levels])
    table = {k.strip().lower(): v for k, v in {**ISIC_ARCHIVE_LABEL_MAP, **(label_map or {})}.items()}
    present = [c for c in levels if c in frame.columns]
    labels: list[str | None] = []
    for values in zip(*(text_values(frame[c]) for c in present)):
        # Most specific level first; a subtype the table lacks falls back to its parent.
        # Unmapped diagnoses keep their text, so cleaning drops them as unknown_label.
        named = [v for v in values if v is not None]
        known = [table[v.lower()] for v in named if table.get(v.lower()) is not None]
        labels.append(known[0] if known else (named[0] if named else None))
    excluded: list[dict] = []
    if dermoscopic_only and "image_type" in frame.columns:
        kinds = text_values(frame["image_type"])
        keep = np.array([k is None or k.lower().startswith("dermoscopic") for k in kinds])
        ids = text_values(frame["isic_id"])
        excluded = [{"image_id": image_stem(i), "reason": "not_dermoscopic",
                     "detail": f"image_type '{k}'"} for i, k, ok in zip(ids, kinds, keep) if not ok]
        frame = frame[keep].reset_index(drop=True)
        labels = [lab for lab, ok in zip(labels, keep) if ok]
    raw, extras = _split(frame, {"image_id": "isic_id", "label": None, "lesion_id": "lesion_id",
                                 "patient_id": "patient_id", "age": "age_approx", "sex": "sex",
                                 "site": "anatom_site_general"})
    raw["label"] = labels
    return raw, extras, tuple(sorted({v for v in table.values() if v is not None})), excluded


def _read_pad_ufes20(csv: Path, label_map: Mapping | None, **_: Any) -> _Raw:
    frame = read_csv(csv, ["patient_id", "lesion_id", "img_id", "diagnostic", "age", "gender",
                            "region"])
    raw, extras = _split(frame, {"image_id": "img_id", "label": "diagnostic",
                                 "lesion_id": "lesion_id", "patient_id": "patient_id",
                                 "age": "age", "sex": "gender", "site": "region"})
    raw["label"] = _apply_map([v and v.lower() for v in text_values(raw["label"])], label_map)
    return raw, extras, _mapped_classes(PAD_UFES20_CLASSES, label_map), []


def _read_generic(csv: Path, label_map: Mapping | None, column_map: Mapping | None = None,
                  **_: Any) -> _Raw:
    if not column_map:
        raise DataError(f"format 'generic' needs column_map naming the CSV columns of "
                        f"{', '.join(GENERIC_KEYS)} (image_id and label required)")
    unknown = sorted(set(column_map) - set(GENERIC_KEYS))
    missing = [k for k in ("image_id", "label") if k not in column_map]
    if unknown or missing:
        raise DataError(f"column_map keys must be among {', '.join(GENERIC_KEYS)} and include "
                        f"image_id and label; unknown: {unknown}, missing: {missing}")
    frame = read_csv(csv, list(column_map.values()))
    absent = [f"{k}='{c}'" for k, c in column_map.items() if c not in frame.columns]
    if absent:
        raise DataError(f"column_map names columns not in {csv.name}: {', '.join(absent)}; "
                        f"found [{', '.join(frame.columns)}]")
    raw, extras = _split(frame, {k: column_map.get(k) for k in GENERIC_KEYS})
    raw["label"] = _apply_map(text_values(raw["label"]), label_map, lower=False)
    return raw, extras, tuple(sorted({v for v in raw["label"] if v is not None})), []


READERS = {
    "ham10000": _read_ham10000,
    "isic2019": _read_isic2019,
    "isic_archive": _read_isic_archive,
    "pad_ufes20": _read_pad_ufes20,
    "generic": _read_generic,
}
