"""Metadata encoder: age, sex and body site as a float vector, fitted on training rows only.

Features, in order: `age` (standardised with the training mean/std; missing -> training
median), `age_missing` (1.0 where age was missing), one-hot `sex=*` and one-hot `site=*`,
each with an explicit 'unknown' level (missing values and categories unseen in fit).
Spellings are normalised by `dermfuse.data.vocab` ('M' -> 'male', 'posterior torso' ->
'back', ...) unless a bundle's own levels hold the spelling as it is.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..constants import AGE_RANGE
from ..errors import InputError
from .vocab import Unrecognised, is_missing, normalise_sex, normalise_site, parse_age, shorten, spelling_key

__all__ = ["MetadataEncoder", "UNKNOWN", "AGE_RANGE"]

UNKNOWN = "unknown"
_STATE_VERSION = 1


_NORMALISE = {"sex": normalise_sex, "site": normalise_site}


def category_level(value: Any, field: str = "site", levels: Iterable[str] = ()) -> str:
    """The canonical level of a value (`dermfuse.data.vocab`); missing values become
    'unknown'. A spelling that is itself one of `levels` (a bundle's own) is kept as it is;
    a value no vocabulary knows becomes its normalised text (counted as unseen)."""
    if is_missing(value):
        return UNKNOWN
    key = spelling_key(str(value))
    if key in levels:
        return key
    level = _NORMALISE[field](value)
    if level is None:
        return UNKNOWN
    return level.key if isinstance(level, Unrecognised) else level


def parse_ages(values: Iterable[Any]) -> np.ndarray:
    """Float ages with NaN where missing, not a number, not finite or outside AGE_RANGE."""
    return np.array([parse_age(v).value for v in values], dtype=float)


def _levels(values: Iterable[Any], field: str) -> list[str]:
    """Sorted distinct categories, 'unknown' last and always present."""
    return sorted({category_level(v, field) for v in values} - {UNKNOWN}) + [UNKNOWN]


class MetadataEncoder:
    """Encodes `age`, `sex`, `site` columns into `(N, n_features)` float32."""

    def __init__(self) -> None:
        self.age_mean: float | None = None
        self.age_std: float = 1.0
        self.age_median: float = 0.0
        self.sexes: list[str] = []
        self.sites: list[str] = []
        self.unseen_counts: dict[str, dict[str, int]] = {"sex": {}, "site": {}}

    # -- fitting and encoding tables --

    def fit(self, table: pd.DataFrame) -> MetadataEncoder:
        """Learn age statistics and category levels from training rows only."""
        age = parse_ages(self._column(table, "age"))
        seen = age[~np.isnan(age)]
        if len(seen):
            self.age_mean = float(seen.mean())
            self.age_median = float(np.median(seen))
            std = float(seen.std())
            self.age_std = std if std > 0 else 1.0
        else:
            self.age_mean, self.age_median, self.age_std = 0.0, 0.0, 1.0
        self.sexes = _levels(self._column(table, "sex"), "sex")
        self.sites = _levels(self._column(table, "site"), "site")
        self.unseen_counts = {"sex": {}, "site": {}}
        return self

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Features of every row: (N, n_features) float32. Categories unseen in fit are
        encoded as 'unknown' and counted in `unseen_counts`."""
        self._require_fit()
        age = parse_ages(self._column(table, "age"))
        sexes = self._known(self._column(table, "sex"), self.sexes, "sex")
        sites = self._known(self._column(table, "site"), self.sites, "site")
        return self._encode(age, sexes, sites)

    def fit_transform(self, table: pd.DataFrame) -> np.ndarray:
        return self.fit(table).transform(table)

    # -- one strict input (predict, serve) --

    def encode_one(self, age: Any = None, sex: Any = None, site: Any = None) -> np.ndarray:
        """Features of one input: (n_features,) float32. age: a number or numeric string in
        0..120, or None/'' for missing; sex, site: one of `.sexes` / `.sites` (any case;
        None/'' mean 'unknown'). Raises InputError naming the bad value."""
        self._require_fit()
        value = self._strict_age(age)
        sex_level = self._strict_category(sex, self.sexes, "sex")
        site_level = self._strict_category(site, self.sites, "site")
        return self._encode(np.array([value]), [sex_level], [site_level])[0]

    # -- description and state --

    @property
    def n_features(self) -> int:
        return 2 + len(self.sexes) + len(self.sites)

    @property
    def feature_names(self) -> list[str]:
        return (["age", "age_missing"] + [f"sex={s}" for s in self.sexes]
                + [f"site={s}" for s in self.sites])

    def to_dict(self) -> dict:
        """Fitted state as plain JSON types (what `from_dict` needs, nothing else)."""
        self._require_fit()
        return {"version": _STATE_VERSION, "age_mean": self.age_mean, "age_std": self.age_std,
                "age_median": self.age_median, "sexes": list(self.sexes),
                "sites": list(self.sites)}

    @classmethod
    def from_dict(cls, state: dict) -> MetadataEncoder:
        """An encoder whose transform equals the one `to_dict` was called on."""
        needed = ("age_mean", "age_std", "age_median", "sexes", "sites")
        missing = [k for k in needed if k not in state]
        if missing or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a MetadataEncoder state (version {_STATE_VERSION}): "
                             f"missing keys {missing}, version {state.get('version')!r}")
        enc = cls()
        enc.age_mean = float(state["age_mean"])
        enc.age_std = float(state["age_std"])
        enc.age_median = float(state["age_median"])
        enc.sexes = [str(s) for s in state["sexes"]]
        enc.sites = [str(s) for s in state["sites"]]
        for name, levels in (("sexes", enc.sexes), ("sites", enc.sites)):
            if not levels or levels[-1] != UNKNOWN:
                raise ValueError(f"MetadataEncoder state: {name} must end with '{UNKNOWN}', "
                                 f"got {levels}")
        return enc

    def __repr__(self) -> str:
        if self.age_mean is None:
            return "MetadataEncoder(unfitted)"
        return (f"MetadataEncoder(n_features={self.n_features}, age_mean={self.age_mean:.1f}, "
                f"sexes={self.sexes}, sites={len(self.sites)} levels)")

    # -- helpers --

    def _require_fit(self) -> None:
        if self.age_mean is None:
            raise ValueError("MetadataEncoder is not fitted; call fit(train_table) first")

    @staticmethod
    def _column(table: pd.DataFrame, name: str) -> list[Any]:
        return table[name].tolist() if name in table.columns else [None] * len(table)

    def _known(self, values: list[Any], levels: list[str], field: str) -> list[str]:
        out = [category_level(v, field, levels) for v in values]
        unseen = Counter(v for v in out if v not in levels)
        counts = self.unseen_counts.setdefault(field, {})
        for value, n in unseen.items():
            counts[value] = counts.get(value, 0) + n
        return [v if v in levels else UNKNOWN for v in out]

    def _encode(self, age: np.ndarray, sexes: list[str], sites: list[str]) -> np.ndarray:
        n = len(age)
        out = np.zeros((n, self.n_features), dtype=np.float32)
        missing = np.isnan(age)
        out[:, 0] = (np.where(missing, self.age_median, age) - self.age_mean) / self.age_std
        out[:, 1] = missing
        sex_index = {s: i for i, s in enumerate(self.sexes)}
        site_index = {s: i for i, s in enumerate(self.sites)}
        rows = np.arange(n)
        out[rows, 2 + np.array([sex_index[s] for s in sexes], dtype=int)] = 1.0
        out[rows, 2 + len(self.sexes) + np.array([site_index[s] for s in sites], dtype=int)] = 1.0
        return out

    @staticmethod
    def _strict_age(age: Any) -> float:
        if not isinstance(age, (str, int, float, np.integer, np.floating)) and age is not None:
            raise InputError(f"age {shorten(age)} is not a number; expected a number in "
                             f"{AGE_RANGE[0]:g}..{AGE_RANGE[1]:g} or empty for unknown")
        parsed = parse_age(age)
        if parsed.problem is not None:
            raise InputError(f"age {parsed.problem}; expected a number in "
                             f"{AGE_RANGE[0]:g}..{AGE_RANGE[1]:g} or empty for unknown")
        return parsed.value

    @staticmethod
    def _strict_category(value: Any, levels: list[str], field: str) -> str:
        if value is None or (isinstance(value, float) and value != value):  # None or NaN: missing
            return UNKNOWN
        if not isinstance(value, str):
            raise InputError(f"{field} {shorten(value)} is not text; expected one of {', '.join(levels)}")
        level = category_level(value, field, levels)
        if level not in levels:
            read_as = f" (read as {level!r})" if level != spelling_key(value) else ""
            raise InputError(f"{field} {shorten(value)}{read_as} is not accepted; expected one of "
                             f"{', '.join(levels)}")
        return level
