"""Bounded, careful reading of the small files a user hands in (config, model descriptions, keys, CSVs),
and how a value or a path is shown in a one-line error. The bottom of the house: imports nothing of ours but
the error types."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

from actstream.common.errors import ConfigError


def escaped(text: str) -> str:
    """`text` safe to print or to carry as UTF-8 text: every character that is not printable written as an
    escape (a newline as \\n, ESC as \\x1b, a bidi override as \\u202e, a C1 control as \\x9b) and every byte
    of a file name that is not UTF-8 (Python holds it as a lone surrogate, os.fsdecode) as \\xNN. Printable
    text, spaces and non-ASCII letters included, is kept as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the raw byte 0x80-0xff of a non-UTF-8 name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])  # '\\n', '\\x1b', '\\u202e', '\\ud800'
    return "".join(out)


def show_value(value: Any, limit: int = 80) -> str:
    """A value for a one-line message: repr (escapes newlines; a string's bytes that are not UTF-8 as \\xNN),
    cut to `limit` characters."""
    r = repr(value) if not isinstance(value, str) or value.isprintable() else f"'{escaped(value)}'"
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


def shown_path(path: str | bytes | Path) -> str:
    """A path for a one-line message: as is when printable, else quoted with escapes (a newline or an escape
    sequence in a file name must neither split the message nor reach the terminal; bytes that are not UTF-8
    show as \\xNN)."""
    text = os.fsdecode(path)
    return text if text.isprintable() else f"'{escaped(text)}'"


def is_int(v: Any) -> bool:
    """An integer, and not a bool (True is an int in Python: `threads = true` is not 1 thread)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite number, and not a bool (`seconds = inf` or `nan` is not a duration)."""
    return (is_int(v) and abs(v) < 2 ** 53) or (isinstance(v, float) and math.isfinite(v))


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for messages: "a FIFO", "a device", "a socket"."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "special"


def check_regular_file(path: str | Path, what: str, error: type[Exception] = ConfigError,
                       fix: str = "pass another file") -> None:
    """`error` naming the file unless it is a regular file this process can open for reading (opened
    non-blocking and closed again: a FIFO or device is refused without waiting or reading)."""
    read_small_file(path, 0, what, error, fix, read=False)


def read_small_file(path: str | Path, limit: int, what: str, error: type[Exception] = ConfigError,
                    fix: str = "pass another file", read: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or `error` naming the file (read=False: only
    check that it is one, whatever its size).

    The file is opened non-blocking and checked with fstat before anything is read: a FIFO would otherwise
    block forever, /dev/zero would be read for ever, and a folder or device is no file. The read itself is
    bounded too (a file can grow between fstat and read). what: the file's role in messages ("config file").
    """
    path = Path(path)
    shown = shown_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise error(f"{what} {shown} not found: check the path, or {fix}") from exc
    except IsADirectoryError as exc:
        raise error(f"{what} {shown} is a folder, not a file: {fix}") from exc
    except OSError as exc:
        raise error(f"{what} {shown} cannot be opened ({exc.strerror}): {fix}") from exc
    except ValueError as exc:  # a NUL in the path
        raise error(f"{what} {shown} is not a usable path ({exc}): {fix}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {shown} is a folder, not a file: {fix}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {shown} is not a regular file ({file_kind(st.st_mode)}): {fix}")
        if not read:
            return b""
        if st.st_size > limit:
            raise error(f"{what} {shown} is {st.st_size} bytes, more than the {limit} bytes allowed: {fix}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise error(f"{what} {shown} grew past {limit} bytes while being read: {fix}")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{what} {shown} cannot be read ({exc.strerror}): {fix}") from exc
    finally:
        os.close(fd)


def decode_utf8(data: bytes, path: str | Path, what: str, error: type[Exception] = ConfigError,
                fix: str = "pass a UTF-8 text file") -> str:
    """Strict UTF-8, or `error` naming the first bad byte and its offset."""
    shown = shown_path(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {shown} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                    f"{fix}") from exc


def read_small_text(path: str | Path, limit: int, what: str, error: type[Exception] = ConfigError,
                    fix: str = "pass another file") -> str:
    """read_small_file, then strict UTF-8 (decode_utf8): the text of a small regular file."""
    return decode_utf8(read_small_file(path, limit, what, error, fix), path, what, error, fix)
