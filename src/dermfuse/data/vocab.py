"""Metadata vocabularies: every supported data set's spellings of sex, body site and age,
mapped to the canonical levels the metadata encoder uses.

The canonical levels are HAM10000's own (so bundles trained before this module keep their
levels): sex `male` / `female`; site one of `SITE_LEVELS`. Spellings from ISIC 2019, the
ISIC Archive and PAD-UFES-20 (and common variants: case, underscores, abbreviations such as
'M' / 'F') map onto them. A coarse ISIC site that no HAM10000 level equals ('head/neck',
'oral/genital') is a canonical level of its own rather than a guess.

The readers, cleaning, the encoder and the single-input path of `predict` / `serve` all
call `normalise_sex`, `normalise_site` and `parse_age`, so a spelling means the same thing
everywhere. A value none of the tables knows comes back as `Unrecognised`: cleaning counts
and names it, the strict single-input path refuses it.

Age: one rule everywhere. A missing-value spelling (`MISSING_WORDS`: empty, 'unknown',
'nan', 'NA', ...) is unknown; a number in `AGE_RANGE` is an age; anything else, non-finite numbers ('inf') included, is invalid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AGE_RANGE", "MISSING_WORDS", "SEX_LEVELS", "SITE_LEVELS", "SEX_SYNONYMS", "SITE_SYNONYMS",
    "Unrecognised", "AgeParse", "is_missing", "normalise_sex", "normalise_site", "parse_age",
    "shorten",
]

from ..constants import AGE_RANGE  # noqa: E402  (the one home; re-exported)

MISSING_WORDS = frozenset({
    "", "unknown", "unk", "nan", "-nan", "na", "n/a", "<na>", "#n/a", "#na", "null", "none",
    "not provided", "missing",
})
"""Spellings of 'no value' (compared lower-cased): pandas' default NA strings plus the data
sets' own ('unknown', 'unk')."""

SEX_LEVELS = ("female", "male")
SITE_LEVELS = (
    # HAM10000's localization levels ...
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "upper extremity",
    # ... and the coarse ISIC sites that none of them equals
    "head/neck", "oral/genital",
)

SEX_SYNONYMS: dict[str, str] = {
    "male": "male", "m": "male", "man": "male", "masculine": "male", "masculino": "male",
    "female": "female", "f": "female", "woman": "female", "feminine": "female",
    "feminino": "female",
}

SITE_SYNONYMS: dict[str, str] = {
    **{level: level for level in SITE_LEVELS},
    # ISIC 2019 / ISIC Archive anatom_site_general
    "anterior torso": "trunk", "lateral torso": "trunk", "torso": "trunk",
    "posterior torso": "back", "palms/soles": "acral", "palms and soles": "acral",
    "head and neck": "head/neck", "oral and genital": "oral/genital",
    "upper extremities": "upper extremity", "lower extremities": "lower extremity",
    "upper limb": "upper extremity", "lower limb": "lower extremity",
    # PAD-UFES-20 region
    "arm": "upper extremity", "forearm": "upper extremity", "thigh": "lower extremity",
    "leg": "lower extremity", "nose": "face", "lip": "face", "lips": "face", "cheek": "face",
    "forehead": "face",
    # common variants
    "genitals": "genital", "genitalia": "genital", "palm": "acral", "sole": "acral",
    "palms": "acral", "soles": "acral", "feet": "foot", "hands": "hand", "ears": "ear",
    "belly": "abdomen", "thorax": "chest",
}


@dataclass(frozen=True)
class Unrecognised:
    """A value none of the vocabularies knows: `text` as given, `key` its normalised form."""

    text: str
    key: str


def is_missing(value: Any) -> bool:
    """None, NaN or a `MISSING_WORDS` spelling (any case, surrounding space ignored)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        return value.strip().lower() in MISSING_WORDS
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def spelling_key(text: str) -> str:
    """Lower case, '_' and '-' as spaces, runs of space collapsed, none around '/'."""
    key = re.sub(r"[_\-]+", " ", text.strip().lower())
    key = re.sub(r"\s*/\s*", "/", key)
    return re.sub(r"\s+", " ", key).strip()


def _normalise(value: Any, table: dict[str, str]) -> str | None | Unrecognised:
    if is_missing(value):
        return None
    text = str(value)
    key = spelling_key(text)
    if key in table:
        return table[key]
    return Unrecognised(text.strip(), key)


def normalise_sex(value: Any) -> str | None | Unrecognised:
    """'M', 'Male', 'FEMALE', 'f' ... -> 'male' / 'female'; missing -> None; else Unrecognised."""
    return _normalise(value, SEX_SYNONYMS)


def normalise_site(value: Any) -> str | None | Unrecognised:
    """'anterior torso' -> 'trunk', 'posterior torso' -> 'back', PAD's 'FOREARM' ->
    'upper extremity', 'Lower_Extremity' -> 'lower extremity' ...; missing -> None; else
    Unrecognised."""
    return _normalise(value, SITE_SYNONYMS)


@dataclass(frozen=True)
class AgeParse:
    """`value`: the age in years, NaN when missing or invalid; `problem`: why an age that was
    given is unusable (None when it is a valid age or missing); `number`: the finite number
    read, even outside the range (NaN when there is none)."""

    value: float
    problem: str | None = None
    number: float = math.nan


_AGE_MAX_CHARS = 32  # no age needs more characters; longer text is not read as a number
_AGE_TEXT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*$", re.IGNORECASE)


def parse_age(value: Any) -> AgeParse:
    """The one age rule (see the module docstring)."""
    if isinstance(value, bool):
        return AgeParse(math.nan, f"{shorten(value)} is not a number")
    if is_missing(value):
        return AgeParse(math.nan)
    if isinstance(value, str):
        match = _AGE_TEXT.match(value) if len(value) <= _AGE_MAX_CHARS else None
        if match is None:
            lowered = value[:_AGE_MAX_CHARS + 1].strip().lower().lstrip("+-")
            what = "not a finite number" if lowered in ("inf", "infinity") else "not a number"
            return AgeParse(math.nan, f"{shorten(value)} is {what}")
        number = float(match.group(1))
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return AgeParse(math.nan, f"{shorten(value)} is not a number")
    if not math.isfinite(number):
        return AgeParse(math.nan, f"{shorten(value)} is not a finite number")
    if not AGE_RANGE[0] <= number <= AGE_RANGE[1]:
        return AgeParse(math.nan, f"{shorten(value)} is outside {AGE_RANGE[0]:g}..{AGE_RANGE[1]:g}", number)
    return AgeParse(number, None, number)


def shorten(value: Any, limit: int = 80) -> str:
    """repr of a value for a message, cut to `limit` characters with its full length named:
    'aaaa…' (10000 characters)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        cut = repr(value[: limit - 3])
        return f"{cut[:-1]}…{cut[-1]} ({len(value)} characters)"
    return f"{text[: limit - 1]}… ({len(text)} characters)"
