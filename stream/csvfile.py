"""Small CSV files a user hands in (truth files, training manifests), read with bounds: a regular file only
(a FIFO or /dev/zero is refused, not read), at most max_bytes, strict UTF-8, at most max_rows rows, a header
naming the columns, every row as long as the header. Errors name the file, the line and what to do."""

from __future__ import annotations

import csv
import io
import math
import unicodedata
from pathlib import Path

from actstream.common.files import read_small_file, shown_path
from actstream.common.errors import ConfigError

MAX_FIELD = 4096  # characters in one field (csv's own limit is 131,072)


def _shown(value: str, limit: int = 40) -> str:
    """A value for an error message: quoted, escapes for control characters, cut to `limit` characters."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def read_csv(path: str | Path, what: str, columns: str, required: set[str], allowed: set[str] | None,
             max_bytes: int, max_rows: int) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each non-empty data row. what: "truth file", "manifest"; columns: the expected
    header, for messages; allowed: the columns accepted (None: any)."""
    hint = f"expected a UTF-8 CSV with columns {columns}"
    shown = shown_path(path)
    raw = read_small_file(path, max_bytes, what, fix=hint)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{what} {shown} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}): save it as UTF-8; {hint}") from exc
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise ConfigError(f"{what} {shown} line {line}: contains a NUL character: {hint}")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue  # blank lines
            for f in fields:
                if len(f) > MAX_FIELD:
                    raise ConfigError(f"{what} {shown} line {line}: a field of {len(f)} characters, more than "
                                      f"{MAX_FIELD}: {hint}")
            if header is None:
                header = [f.strip() for f in fields]
                dup = sorted({h for h in header if header.count(h) > 1})
                if dup:
                    raise ConfigError(f"{what} {shown} line {line}: column {_shown(dup[0])} appears twice: {hint}")
                missing = required - set(header)
                if missing:
                    raise ConfigError(f"{what} {shown}: lacks column(s) {', '.join(sorted(missing))} (header "
                                      f"{_shown(','.join(header), 80)}): {hint}")
                unknown = [h for h in header if allowed is not None and h not in allowed]
                if unknown:
                    raise ConfigError(f"{what} {shown} line {line}: unknown column {_shown(unknown[0])}: {hint}")
                continue
            if len(fields) != len(header):
                raise ConfigError(f"{what} {shown} line {line}: {len(fields)} field(s), the header has "
                                  f"{len(header)} ({_shown(','.join(header), 80)}): {hint}")
            if len(rows) >= max_rows:
                raise ConfigError(f"{what} {shown}: more than {max_rows} rows: split it, or {hint}")
            rows.append((line, dict(zip(header, fields))))
    except csv.Error as exc:
        raise ConfigError(f"{what} {shown} line {reader.line_num}: not valid CSV ({exc}): {hint}") from exc
    if header is None:
        raise ConfigError(f"{what} {shown} is empty: {hint}")
    return rows


def number(value: str, what: str, column: str, hint: str, minimum: float = 0.0) -> float:
    """A finite number >= minimum from a CSV field."""
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{what}: {column} {_shown(value)} is not a number: {hint}") from None
    if not math.isfinite(x) or x < minimum:
        raise ConfigError(f"{what}: {column} {_shown(value)} out of range: expected a finite number >= "
                          f"{minimum:g}; {hint}")
    return x


def name(value: str, what: str, column: str, hint: str, max_len: int = 64) -> str:
    """A class label or group name: 1..max_len characters, no control characters, no surrounding spaces."""
    v = value.strip()
    if not v:
        raise ConfigError(f"{what}: {column} is empty: {hint}")
    if len(v) > max_len:
        raise ConfigError(f"{what}: {column} {_shown(v)} is {len(v)} characters: expected at most {max_len}; {hint}")
    if any(unicodedata.category(c).startswith("C") for c in v):
        raise ConfigError(f"{what}: {column} {_shown(v)} contains control or unprintable characters: {hint}")
    return v
