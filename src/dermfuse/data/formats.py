"""Data set readers: every supported layout becomes one canonical table, one row per image.

`read_dataset(path)` finds the CSV, detects the layout from its column names (or takes
`format=`), finds the image files anywhere under the data set's folder, and normalises the
metadata. Nothing is dropped here except non-dermoscopic ISIC Archive images, which are
listed in `ReadResult.excluded`; cleaning (`dermfuse.data.clean`) decides the rest.

The pieces: `dermfuse.data.layouts` (layout names, classes, finding the CSV and its layout),
`dermfuse.data.csv_files` (encoding and delimiter), `dermfuse.data.layout_readers` (one
reader per layout); the layout names and detectors are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from dermfuse.data.layout_readers import READERS, image_stem, text_values
from dermfuse.data.layouts import (
    FORMAT_CLASSES,
    FORMATS,
    IMAGE_EXTENSIONS,
    ISIC2019_CLASSES,
    ISIC_ARCHIVE_LABEL_MAP,
    PAD_UFES20_CLASSES,
    detect_format,
    detect_layout,
    locate_csv,
)
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
    "detect_layout",
    "read_dataset",
]

CANONICAL_COLUMNS = ("image_id", "path", "label", "lesion_id", "patient_id", "age", "sex", "site")


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


# --- the canonical table -----------------------------------------------------------------

def _category(values: Iterable[Any], normalise) -> list[str | None]:
    """Canonical levels (`dermfuse.data.vocab`); missing -> None. A value no vocabulary
    knows keeps its normalised text, so cleaning can count and name it."""
    out: list[str | None] = []
    for v in values:
        level = normalise(v)
        out.append(level.key if isinstance(level, Unrecognised) else level)
    return out


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
    age_text = text_values(raw["age"])
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
        "lesion_id": obj(text_values(raw["lesion_id"])),
        "patient_id": obj(text_values(raw["patient_id"])),
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
    format, csv = locate_csv(path, format)
    raw, extras, classes, excluded = READERS[format](
        csv, label_map, column_map=column_map, dermoscopic_only=dermoscopic_only)
    if len(extras) == 0:
        why = f" after excluding {len(excluded)} non-dermoscopic images" if excluded else ""
        raise DataError(f"{csv} has no rows{why}")
    root = csv.parent
    index = _index_images(root)
    if not index:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) anywhere under {root}")
    image_ids = [image_stem(v) for v in text_values(raw["image_id"])]
    paths = [index[i][0] if i in index else None for i in image_ids]
    named = set(image_ids) | {e["image_id"] for e in excluded}
    orphans = sorted(p for stem, files in index.items() if stem not in named for p in files)
    table = _build_table(raw, extras, paths, image_ids)
    return ReadResult(table=table, format=format, classes=tuple(classes), orphan_files=orphans,
                      root=root, excluded=excluded)
