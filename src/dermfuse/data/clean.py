"""Cleaning: drop the rows a model must not see, fix impossible values, and say so.

`clean(result)` takes a `ReadResult` and returns the cohort table plus a `CleaningReport`
naming every dropped row and its reason. Image files are fully decoded once; the outcome is
memoised in the cache (`image_checks/`) by (path, size, mtime), so a second clean of the same
folder decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import ImageFile
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dermfuse.data.cache import cache_root, load_image
from dermfuse.data.formats import FORMAT_CLASSES, ReadResult
from dermfuse.data.vocab import Unrecognised, normalise_sex, normalise_site
from dermfuse.errors import InputError
from dermfuse.io import atomic_write_text

__all__ = ["DROP_REASONS", "FIX_REASONS", "CleaningReport", "clean", "summarize"]

DROP_REASONS = (
    "duplicate_row", "duplicate_image", "unreadable_image", "empty_image", "truncated_image",
    "image_too_small", "image_too_large", "unsupported_image", "unknown_label", "missing_label", "missing_image_file",
    "not_dermoscopic",  # rows a reader left out on purpose (ReadResult.excluded)
)
FIX_REASONS = ("age_invalid",)
from ..constants import AGE_RANGE  # noqa: E402
_MEMO_VERSION = 2  # 2: statuses are the drop reasons of load_image
_IMAGE_REASONS = ("empty_image", "unreadable_image", "truncated_image", "missing_image_file",
                  "image_too_small", "image_too_large", "unsupported_image")


@dataclass
class CleaningReport:
    """What cleaning did. `dropped`: one dict (image_id, reason, detail) per dropped row;
    `counts`: dropped rows per reason (every reason, zeros included); `fixed`: values changed
    in kept rows; `missing`: age/sex/site values missing after cleaning (unrecognised ones
    included); `unrecognised`: per field, each value no vocabulary (`dermfuse.data.vocab`)
    knows -> rows, set to 'unknown'; `decoded`: image files decoded by this call (0 when
    every check came from the memo)."""

    dropped: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    fixed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIX_REASONS, 0))
    missing: dict[str, int] = field(default_factory=lambda: {"age": 0, "sex": 0, "site": 0})
    unrecognised: dict[str, dict[str, int]] = field(default_factory=lambda: {"sex": {}, "site": {}})
    orphan_files: list[str] = field(default_factory=list)
    n_in: int = 0
    n_out: int = 0
    decoded: int = 0

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return json.loads(json.dumps(asdict(self)))

    def save_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def render(self) -> Table:
        """A rich table: rows per drop reason, fixes, orphan files and the totals."""
        table = Table(title=f"Cleaning: {self.n_in} rows in, {self.n_out} kept")
        table.add_column("reason")
        table.add_column("count", justify="right")
        for reason, n in self.counts.items():
            if reason != "not_dermoscopic" or n:
                table.add_row(f"dropped: {reason}", str(n))
        table.add_section()
        for reason, n in self.fixed.items():
            table.add_row(f"fixed: {reason}", str(n))
        for name, n in self.missing.items():
            table.add_row(f"missing: {name}", str(n))
        for name, values in self.unrecognised.items():
            for value, n in sorted(values.items(), key=lambda kv: (-kv[1], kv[0])):
                table.add_row(f"unrecognised {name} (now unknown): {value[:80]!r}", str(n))
        table.add_row("orphan files (no row)", str(len(self.orphan_files)))
        return table


# --- image checks -------------------------------------------------------------------------



@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make Pillow raise on truncated files while checking, whatever the global setting."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _check_file(path: str) -> list[str]:
    """[sha1, status, detail] of one file; status is 'ok' or the drop reason `load_image`
    gives (the decoder every later step uses, so a kept row is one the cache can read)."""
    with open(path, "rb") as f:
        data = f.read()
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        load_image(data)
    except InputError as err:
        reason = getattr(err, "reason", "unreadable_image")
        detail = str(err).replace("'<uploaded bytes>'", repr(os.path.basename(path)))
        return [sha1, reason if reason in _IMAGE_REASONS else "unreadable_image", detail]
    return [sha1, "ok", ""]


def _memo_path(root: Path) -> Path:
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return cache_root() / "image_checks" / f"{digest}.json"


def _load_memo(path: Path) -> dict[str, list[str]]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo.get("entries", {}) if memo.get("version") == _MEMO_VERSION else {}


def _save_memo(path: Path, entries: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"version": _MEMO_VERSION, "entries": entries}))


def _check_images(paths: Sequence[str], root: Path, progress: bool) -> tuple[list[list[str]], int]:
    """[sha1, status, detail] per path (status 'missing' where the file is gone) and the
    number of files decoded; results are memoised by (path, size, mtime_ns)."""
    memo_file = _memo_path(root)
    memo = _load_memo(memo_file)
    results: list[list[str]] = [[] for _ in paths]
    keys: list[str | None] = [None] * len(paths)
    todo: list[int] = []
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except OSError:
            results[i] = ["", "missing_image_file", f"file {path} is gone"]
            continue
        keys[i] = f"{path}\t{st.st_size}\t{st.st_mtime_ns}"
        if keys[i] in memo:
            results[i] = memo[keys[i]]
        else:
            todo.append(i)
    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar, \
            _strict_decoding():
        task = bar.add_task("check", total=len(paths), completed=len(paths) - len(todo))
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            for i, outcome in zip(todo, pool.map(_check_file, [paths[i] for i in todo])):
                results[i] = outcome
                bar.advance(task)
    if todo:
        checked = set(paths)
        kept = {k: v for k, v in memo.items() if k.split("\t", 1)[0] not in checked}
        kept.update({keys[i]: results[i] for i in range(len(paths)) if keys[i] is not None})
        _save_memo(memo_file, kept)
    return results, len(todo)


# --- cleaning -----------------------------------------------------------------------------

def _is_missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _same(a: Any, b: Any) -> bool:
    if _is_missing(a) or _is_missing(b):
        return _is_missing(a) and _is_missing(b)
    return bool(a == b)


def _show(value: Any) -> str:
    if _is_missing(value):
        return "missing"
    return repr(value) if isinstance(value, str) else str(value)


def _duplicate_rows(table: pd.DataFrame) -> dict[int, str]:
    """Row position -> detail for every repeat of an image_id (the first row is kept)."""
    compare = [c for c in table.columns if c != "path"]
    records = table[compare].to_dict("records")
    first: dict[str, int] = {}
    repeats: dict[int, str] = {}
    for i, image_id in enumerate(table["image_id"]):
        if image_id is None:
            continue
        j = first.setdefault(image_id, i)
        if j == i:
            continue
        diffs = [f"{c} {_show(records[j][c])} vs {_show(records[i][c])}" for c in compare
                 if not _same(records[j][c], records[i][c])]
        repeats[i] = ("exact repeat of an earlier row" if not diffs else
                      "same image_id as an earlier row but the values differ: " + ", ".join(diffs))
    return repeats


def clean(result: ReadResult, check_images: bool = True,
          progress: bool = True) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop unusable rows, fix impossible ages, fill missing sex/site with 'unknown'.

    Returns the cohort (the canonical and extra columns plus `sha1`, the hex digest of the
    image file; None when check_images is False) and the report. check_images=False skips
    reading image files: only their existence is checked, so empty, unreadable, truncated
    and byte-identical files go undetected.
    """
    table = result.table.reset_index(drop=True)
    reason: list[str | None] = [None] * len(table)
    detail: list[str] = [""] * len(table)

    def drop(i: int, why: str, text: str) -> None:  # the first reason found for a row is kept
        if reason[i] is None:
            reason[i], detail[i] = why, text

    for i, text in _duplicate_rows(table).items():
        drop(i, "duplicate_row", text)
    for i, why, text in _row_problems(table, result, check_images):
        drop(i, why, text)
    sha1: list[str | None] = [None] * len(table)
    decoded = 0
    if check_images:
        alive = [i for i in range(len(table)) if reason[i] is None]
        decoded = _check_files(table, alive, result.root, sha1, drop, progress)

    keep = np.array([r is None for r in reason], dtype=bool)
    out = table.assign(sha1=pd.Series(sha1, dtype=object))[keep].reset_index(drop=True)
    invalid = _blank_invalid_ages(out)
    unrecognised = _normalise_categories(out)
    report = CleaningReport(orphan_files=list(result.orphan_files), decoded=decoded,
                            unrecognised=unrecognised)
    for entry in result.excluded:
        report.dropped.append(dict(entry))
    report.dropped += [{"image_id": table.at[i, "image_id"], "reason": r, "detail": d}
                       for i, (r, d) in enumerate(zip(reason, detail)) if r is not None]
    for entry in report.dropped:
        report.counts[entry["reason"]] = report.counts.get(entry["reason"], 0) + 1
    report.fixed["age_invalid"] = int(invalid.sum())
    report.missing = {"age": int(out["age"].isna().sum()),
                      "sex": int((out["sex"] == "unknown").sum()),
                      "site": int((out["site"] == "unknown").sum())}
    report.n_in = len(table) + len(result.excluded)
    report.n_out = len(out)
    return out, report


def _row_problems(table: pd.DataFrame, result: ReadResult, check_images: bool) -> Iterator[tuple[int, str, str]]:
    """(row, reason, detail) for a row without a usable label, image id or image file."""
    classes = set(result.classes)
    for i, (image_id, label, path) in enumerate(zip(table["image_id"], table["label"], table["path"])):
        if _is_missing(label):
            yield i, "missing_label", "no label"
        elif label not in classes:
            yield i, "unknown_label", f"label '{label}' is not one of {', '.join(result.classes)}"
        elif image_id is None:
            yield i, "missing_image_file", "row has no image id"
        elif path is None or not isinstance(path, str):
            yield i, "missing_image_file", f"no image file named {image_id} under {result.root}"
        elif not check_images and not os.path.isfile(path):
            yield i, "missing_image_file", f"file {path} is gone"


def _check_files(table: pd.DataFrame, alive: list[int], root: Any, sha1: list[str | None],
                 drop: Callable[[int, str, str], None], progress: bool) -> int:
    """Read the image files of rows ``alive``: fill ``sha1`` in, drop the unusable files and
    the byte-identical repeats of a kept image. Returns the number of files decoded."""
    outcomes, decoded = _check_images([table.at[i, "path"] for i in alive], root, progress)
    kept_by_hash: dict[str, str] = {}
    for i, (digest, status, text) in zip(alive, outcomes):
        sha1[i] = digest or None
        if status != "ok":
            drop(i, status, text)
        elif digest in kept_by_hash:
            drop(i, "duplicate_image", f"same bytes as kept image {kept_by_hash[digest]}")
        else:
            kept_by_hash[digest] = table.at[i, "image_id"]
    return decoded


def _blank_invalid_ages(out: pd.DataFrame) -> pd.Series:
    """In place: ages outside AGE_RANGE or that were not numbers (``age_raw``) become missing.
    Returns the mask of the ages blanked."""
    age = pd.to_numeric(out["age"], errors="coerce").astype(float)
    raw = out["age_raw"] if "age_raw" in out.columns else pd.Series([None] * len(out), dtype=object)
    invalid = (age < AGE_RANGE[0]) | (age > AGE_RANGE[1]) | raw.notna().to_numpy()
    out["age"] = age.mask(invalid)
    return invalid


def _normalise_categories(out: pd.DataFrame) -> dict[str, dict[str, int]]:
    """In place: sex and site as their canonical levels ('unknown' where missing or not
    recognised). Returns column -> unrecognised text -> rows."""
    unrecognised: dict[str, dict[str, int]] = {}
    for column, normalise in (("sex", normalise_sex), ("site", normalise_site)):
        levels, counts = [], unrecognised.setdefault(column, {})
        for v in out[column]:
            level = normalise(v)
            if isinstance(level, Unrecognised):
                counts[level.text] = counts.get(level.text, 0) + 1
            levels.append(level if isinstance(level, str) else "unknown")
        out[column] = pd.Series(levels, dtype=object)
    return unrecognised


def summarize(table: pd.DataFrame, report: CleaningReport, format: str,
              classes: Sequence[str] | None = None, raw: pd.DataFrame | None = None) -> dict:
    """The `data check --json` object: format, images, lesions, patients (None where the
    data set has no such ids), classes (class -> images, every class in order), missing,
    dropped (reason -> rows), fixed, orphan_files (a count).

    With ``raw`` (the table as read), images/lesions/patients/classes describe the data set
    as found and ``after_cleaning`` holds the same counts for the cleaned ``table``; without
    it they describe ``table``. classes: defaults to the format's own list, or the labels
    present for 'generic'."""
    if classes is None:
        classes = FORMAT_CLASSES.get(format) or sorted(set(table["label"].dropna()))

    def counts(t: pd.DataFrame) -> dict:
        def distinct(column: str) -> int | None:
            if column not in t.columns or t[column].isna().all():
                return None
            return int(t[column].nunique(dropna=True))

        per_class = t["label"].value_counts()
        return {
            "images": int(t["image_id"].nunique()) if raw is not None else int(len(t)),
            "lesions": distinct("lesion_id"),
            "patients": distinct("patient_id"),
            "classes": {c: int(per_class.get(c, 0)) for c in classes},
        }

    head = counts(raw.drop_duplicates("image_id") if raw is not None else table)
    out = {"format": format, **head}
    if raw is not None:
        out["after_cleaning"] = counts(table)
        out["after_cleaning"]["images"] = int(len(table))
    out.update({
        "missing": {k: int(v) for k, v in report.missing.items()},
        "dropped": {k: int(v) for k, v in report.counts.items()},
        "fixed": {k: int(v) for k, v in report.fixed.items()},
        "unrecognised": {k: dict(v) for k, v in report.unrecognised.items()},
        "orphan_files": len(report.orphan_files),
    })
    return out
