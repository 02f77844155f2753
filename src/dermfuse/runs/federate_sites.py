"""Federated sites from one data set (`assign_sites`: by body site, age band or at random,
lesions whole) and the one metadata encoder all sites share, built from per-site
summaries only (`site_summary`, `encoder_from_summaries`), never from pooled rows."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.encode import UNKNOWN, MetadataEncoder, category_level, parse_ages
from ..data.splits import group_ids
from ..errors import ConfigError, DataError

__all__ = ["SITE_RULES", "assign_sites", "site_summary", "encoder_from_summaries"]

SITE_RULES = ("site", "age", "random")


# --- sites ----------------------------------------------------------------------------------


def assign_sites(table: pd.DataFrame, k: int, rule: str = "site", seed: int = 0) -> np.ndarray:
    """Site index (N,) in 0..k-1 for every row; the rows of one lesion (or patient) share one.

    rule ``site``: the body sites (each lesion's most common one) are dealt, largest first,
    to the centre with the fewest images so far; ``age``: lesions sorted by age (missing
    last) cut into k runs of about equal image count; ``random``: lesions shuffled, then cut
    the same way."""
    if rule not in SITE_RULES:
        raise ConfigError(f"federate --site-rule {rule!r}: expected one of {SITE_RULES}")
    if k < 2:
        raise ConfigError(f"federate --sites {k}: expected 2 or more sites")
    groups = pd.Series(group_ids(table)).astype(str)
    sizes = groups.value_counts()
    if len(sizes) < k:
        raise DataError(f"{len(sizes)} lesions cannot make {k} sites")
    out = np.zeros(len(table), np.int64)
    if rule == "site":
        column = table["site"] if "site" in table else pd.Series([None] * len(table))
        site_of = pd.Series([category_level(v) for v in column]).groupby(groups.values).agg(lambda s: s.mode().iloc[0])
        per_site = groups.map(site_of).value_counts()  # images per body site
        if len(per_site) < k:
            raise DataError(f"--site-rule site: the data have {len(per_site)} body sites, fewer than {k} sites")
        load, centre = np.zeros(k), {}
        for name, count in sorted(per_site.items(), key=lambda kv: (-kv[1], kv[0])):
            c = int(np.argmin(load))
            centre[name], load[c] = c, load[c] + count
        return groups.map(site_of).map(centre).to_numpy(np.int64)
    if rule == "age":
        age = pd.Series(parse_ages(table["age"] if "age" in table else [None] * len(table)))
        lesion_age = age.groupby(groups.values).mean()
        order = lesion_age.sort_values(na_position="last", kind="stable").index
    else:
        order = sizes.index[np.random.default_rng(seed).permutation(len(sizes))]
    cum = sizes.reindex(order).cumsum().to_numpy()
    band = np.minimum((cum - 1) * k // cum[-1], k - 1)  # k runs of about equal image count
    centre = dict(zip(order, band))
    out[:] = groups.map(centre).to_numpy(np.int64)
    return out


# --- one feature layout from per-site summaries ------------------------------------------------


def site_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """What one site shares to build the common metadata encoder: age count, sum, sum of
    squares and histogram {age: count}, and the sex and body-site levels it has seen."""
    age = parse_ages(rows["age"] if "age" in rows else [None] * len(rows))
    seen = age[~np.isnan(age)]
    return {"n_age": int(len(seen)), "age_sum": float(seen.sum()), "age_sumsq": float((seen ** 2).sum()),
            "age_hist": {float(a): int(c) for a, c in Counter(seen.tolist()).items()},
            "sexes": sorted({category_level(v) for v in (rows["sex"] if "sex" in rows else [])} - {UNKNOWN}),
            "sites": sorted({category_level(v) for v in (rows["site"] if "site" in rows else [])} - {UNKNOWN})}


def _median(hist: Counter) -> float:
    values = sorted(hist)
    counts = np.cumsum([hist[v] for v in values])
    n = int(counts[-1])
    lo = values[int(np.searchsorted(counts, (n - 1) // 2 + 1))]
    hi = values[int(np.searchsorted(counts, n // 2 + 1))]
    return (lo + hi) / 2


def encoder_from_summaries(summaries: Sequence[dict[str, Any]]) -> MetadataEncoder:
    """The MetadataEncoder that `MetadataEncoder.fit` would give on all the sites' rows
    pooled, made from their `site_summary` dicts alone."""
    enc = MetadataEncoder()
    n = sum(s["n_age"] for s in summaries)
    if n:
        mean = sum(s["age_sum"] for s in summaries) / n
        var = max(0.0, sum(s["age_sumsq"] for s in summaries) / n - mean * mean)
        hist: Counter = Counter()
        for s in summaries:
            hist.update({float(a): c for a, c in s["age_hist"].items()})
        std = math.sqrt(var)
        enc.age_mean, enc.age_median, enc.age_std = mean, _median(hist), std if std > 0 else 1.0
    else:
        enc.age_mean, enc.age_median, enc.age_std = 0.0, 0.0, 1.0
    enc.sexes = sorted(set().union(*(s["sexes"] for s in summaries))) + [UNKNOWN]
    enc.sites = sorted(set().union(*(s["sites"] for s in summaries))) + [UNKNOWN]
    return enc
