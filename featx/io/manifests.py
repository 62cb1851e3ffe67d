"""CSV and Parquet manifests: one row per image with `path` and optional `label`, `split` and
`group` columns (other columns are ignored). Every cell is read as text, so labels stay exactly
as written ('0' stays '0', 'NA' stays 'NA'); every problem is an InputError naming the file,
the line and the fix."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from featx.errors import InputError

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "split", "group")
SPLIT_NAMES = ("train", "val", "test")
# other spellings of the three splits, mapped with a logged note; any other value is refused
SPLIT_ALIASES = {"training": "train", "trn": "train", "validation": "val", "valid": "val", "dev": "val",
                 "testing": "test", "tst": "test"}
_FORMAT_HINT = "a header line 'path[,label][,split][,group]' and one row per image"


@dataclass(frozen=True)
class ManifestRow:
    line: int  # the file's line (CSV) or row (Parquet, 1-based after the header) for messages
    path: str
    label: str | None
    split: str | None
    group: str | None


def read_manifest_rows(path: Path) -> list[ManifestRow]:
    """The rows of a .csv or .parquet manifest, paths normalised against the manifest's folder."""
    if path.suffix.lower() == ".parquet":
        rows, where = _parquet_cells(path), "row"
    else:
        rows, where = _csv_cells(path), "line"
    base = path.resolve().parent
    splits_mapped: Counter = Counter()
    out = []
    for line, cells in rows:
        file = cells.get("path")
        if not file:
            raise InputError(f"manifest '{path}' {where} {line}: the 'path' cell is empty; give each image's path "
                             "(relative to the manifest's folder, or absolute), or delete the row")
        split = _split(cells.get("split"), path, where, line, splits_mapped)
        out.append(ManifestRow(line, normalise_path(file, base), cells.get("label"), split, cells.get("group")))
    for (given, mapped), count in splits_mapped.items():
        log.warning("manifest %s: split '%s' read as '%s' (%d rows)", path, given, mapped, count)
    return out


def normalise_path(file: str, base: Path) -> str:
    """One spelling per file: absolute, '..' and '.' removed, symlinks resolved. A link whose
    target is missing (or a link loop) keeps its own path, so its error row names it."""
    absolute = os.path.abspath(os.path.join(base, os.path.expanduser(file)))
    try:
        return str(Path(absolute).resolve(strict=True))
    except (OSError, RuntimeError):  # missing, dangling link, loop: the error row comes at read time
        return absolute


def _split(value: str | None, path: Path, where: str, line: int, mapped: Counter) -> str | None:
    if value is None:
        return None
    key = value.strip().lower()
    if key in SPLIT_NAMES:
        return key
    if key in SPLIT_ALIASES:
        if value != SPLIT_ALIASES[key]:
            mapped[(value, SPLIT_ALIASES[key])] += 1
        return SPLIT_ALIASES[key]
    aliases = ", ".join(f"{a}→{s}" for a, s in SPLIT_ALIASES.items())
    raise InputError(f"manifest '{path}' {where} {line}: split '{value}' is not allowed; allowed: "
                     f"{', '.join(SPLIT_NAMES)} (also read: {aliases}) or an empty cell; fix the value in the manifest")


def _csv_cells(path: Path) -> list[tuple[int, dict[str, str | None]]]:
    data = path.read_bytes()
    if not data:
        raise InputError(f"manifest '{path}' is empty (0 bytes); it needs {_FORMAT_HINT}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:start].count(b"\n") + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise InputError(f"manifest '{path}' line {line} is not UTF-8 text (byte 0x{data[start]:02x} at column "
                         f"{column}); save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 '{path}' > fixed.csv`"
                         ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise _csv_error(path, 1, exc) from None
    if not header or not any(h.strip() for h in header):
        raise InputError(f"manifest '{path}' has an empty first line; it needs {_FORMAT_HINT}")
    header = [h.strip() for h in header]
    _check_header(header, path)
    rows, line = [], 1
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _csv_error(path, start, exc) from None
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        if len(fields) > len(header):
            raise InputError(f"manifest '{path}' line {start} has {len(fields)} fields, the header has {len(header)} "
                             f"({', '.join(header)}); quote values that contain a comma (\"a,b\") or add a column "
                             "name to the header")
        cells = {name: (value.strip() or None) for name, value in zip(header, fields)}
        rows.append((start, cells))
    if not rows:
        raise InputError(f"manifest '{path}' has a header but no rows; add one row per image")
    return rows


def _csv_error(path: Path, line: int, exc: csv.Error) -> InputError:
    message = str(exc)
    if "end of data" in message or "quote" in message.lower():
        return InputError(f"manifest '{path}' line {line}: unbalanced quote (a field opens a \" that is never closed, "
                          f"or a quote appears inside an unquoted field: {message}); close the quote, or write a "
                          "literal quote inside a quoted field as \"\"")
    return InputError(f"manifest '{path}' line {line} is not valid CSV ({message}); fix the line")


def _check_header(header: list[str], path: Path) -> None:
    if "path" not in header:
        raise InputError(f"manifest '{path}' has columns {header}; it needs a 'path' column "
                         "(optional: 'label', 'split', 'group'; other columns are ignored)")
    doubled = sorted(name for name, n in Counter(header).items() if n > 1 and name in COLUMNS)
    if doubled:
        raise InputError(f"manifest '{path}' names the column(s) {doubled} twice; keep one of each")


def _parquet_cells(path: Path) -> list[tuple[int, dict[str, str | None]]]:
    import pandas as pd

    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"manifest '{path}' is not a readable Parquet file ({type(exc).__name__}: {exc}); "
                         f"write it again, or use a CSV with {_FORMAT_HINT}") from None
    header = [str(c).strip() for c in table.columns]
    _check_header(header, path)
    table.columns = header
    if table.empty:
        raise InputError(f"manifest '{path}' has no rows; add one row per image")
    columns = {name: [_text(v) for v in table[name].astype(object).where(table[name].notna(), None).tolist()]
               for name in COLUMNS if name in table.columns}
    return [(i + 1, {name: values[i] for name, values in columns.items()}) for i in range(len(table))]


def _text(value) -> str | None:
    """A Parquet cell as text: missing is None; a float that holds an integer loses its '.0'
    (a label column with gaps is stored as float, and 1.0 was written as 1)."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    return text or None
