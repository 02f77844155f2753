"""Reading a data set's CSV file as it was saved: its encoding (UTF-8, or UTF-16 / UTF-8
with a byte-order mark), its delimiter (',' or, where the header holds no comma, ';', tab
or '|'), and the columns that must stay text. A file in another encoding is a DataError that
names the byte, the likely encoding and the command that converts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from dermfuse.errors import DataError

__all__ = ["read_csv", "read_header"]

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


def read_csv(path: Path, text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV with the named columns as text (so ids and ages keep their spelling)."""
    encoding, sep = _dialect(path)
    try:
        header = read_header(path)
        dtype = {c: str for c in text_columns if c in header}
        frame = pd.read_csv(path, dtype=dtype, encoding=encoding, sep=sep)
    except UnicodeDecodeError as err:
        raise _encoding_problem(path, path.read_bytes(), err) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read {path} as CSV: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_header(path: Path) -> list[str]:
    """The CSV's column names, stripped."""
    encoding, sep = _dialect(path)
    try:
        return [str(c).strip() for c in pd.read_csv(path, nrows=0, encoding=encoding, sep=sep).columns]
    except UnicodeDecodeError as err:
        raise _encoding_problem(path, path.read_bytes(), err) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read {path} as CSV: {err}") from err
