"""Output paths checked before any work starts: an output never lands on an input, two outputs never share a
file, and a missing folder, a folder in the file's place or a device that refuses every write is reported
before the run rather than after it.

Inputs and outputs are compared by resolved path (os.path.realpath: symlinks) and by (st_dev, st_ino) (hard
links, bind mounts). The check runs before the run, so a file swapped in between is not caught; it guards
against mistakes and careless scripts, not against a process racing this one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from actstream.common.errors import ConfigError
from actstream.common.files import shown_path

MAX_FOLDER_FILES = 10_000  # files of an input folder (a model folder) compared against the outputs
_DEV_FULL = os.makedev(1, 7)  # Linux /dev/full: every write fails with ENOSPC


def _ident(path: str) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (st_dev, st_ino) or None when it does not exist)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return real, None
    return real, (st.st_dev, st.st_ino)


def folder_inputs(folder: str | Path | None) -> list[str]:
    """The files of an input folder (not recursive, at most MAX_FOLDER_FILES): outputs must not overwrite them."""
    if folder is None:
        return []
    try:
        with os.scandir(folder) as it:
            files = []
            for entry in it:
                if len(files) >= MAX_FOLDER_FILES:
                    break
                files.append(entry.path)
            return files
    except (OSError, ValueError):
        return []


def _check_parent(flag: str, path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    shown, parent_shown = shown_path(path), shown_path(parent)
    if not os.path.exists(parent):
        raise ConfigError(f"{flag} {shown}: folder {parent_shown} does not exist: create it first or choose another "
                          f"path")
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {shown}: {parent_shown} is not a folder: choose a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {shown}: folder {parent_shown} is not writable: choose a writable folder")


def check_output_file(flag: str, path: str, regular_only: bool) -> None:
    """One output file: its folder exists and is writable; the path is not a folder; it is a regular file (or
    does not exist yet), or for regular_only=False also a pipe, FIFO or terminal (--out /dev/stdout)."""
    shown = shown_path(path)
    if not path or "\0" in path:
        raise ConfigError(f"{flag} {shown}: is empty or contains a NUL character: choose another path")
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {shown}: is a folder: give a file name, e.g. "
                          f"{shown_path(os.path.join(path, 'out'))}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_parent(flag, path)
        return
    except OSError as exc:
        raise ConfigError(f"{flag} {shown}: cannot be used ({exc.strerror}): choose another path") from exc
    if stat.S_ISREG(st.st_mode):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{flag} {shown}: the file is not writable: choose another path")
        return
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_FULL:
        raise ConfigError(f"{flag} {shown}: is /dev/full, which fails every write: choose a file")
    if regular_only:
        raise ConfigError(f"{flag} {shown}: is not a regular file (a device, pipe or socket): "
                          f"it writes a file, choose a file path")
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        raise ConfigError(f"{flag} {shown}: is not a file, pipe or terminal: choose a file path")


def check_output_folder(flag: str, path: str | Path) -> None:
    """An output folder (made with its parents if missing): not a file, inside something writable."""
    path = str(path)
    shown = shown_path(path)
    if "\0" in path:
        raise ConfigError(f"{flag} {shown}: contains a NUL character: choose another path")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        up = os.path.dirname(probe)
        if up == probe:
            break
        probe = up
    if not os.path.isdir(probe):
        what = "is a file" if probe == os.path.abspath(path) else f"is inside {shown_path(probe)}, which is a file"
        raise ConfigError(f"{flag} {shown}: {what}, not a folder: choose a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {shown}: {shown_path(probe)} is not writable: choose a writable folder")


def check_outputs(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | list | None],
                  regular_only: frozenset[str] = frozenset({"--stats", "--plot", "--annotate"})) -> None:
    """Refuse before any work: an output that is an input (also via symlinks and hard links), two outputs that
    are one file, and outputs that cannot be written (see check_output_file).

    outputs: flag -> path; inputs: what it is -> a path or a list of paths (None: absent)."""
    seen: dict[tuple, str] = {}
    ins: list[tuple[str, str, str, tuple[int, int] | None]] = []  # (what, path, resolved, (dev, ino))
    for what, value in inputs.items():
        for p in (value if isinstance(value, list) else [value]):
            if p is not None and "\0" not in str(p):
                ins.append((what, str(p), *_ident(str(p))))
    for flag, path in outputs.items():
        if path is None:
            continue
        path = str(path)
        shown = shown_path(path)
        check_output_file(flag, path, flag in regular_only)
        real, ino = _ident(path)
        for what, p, ireal, iino in ins:
            if real == ireal or (ino is not None and ino == iino):
                raise ConfigError(f"{flag} {shown}: is the same file as {what} {shown_path(p)}: writing it would "
                                  f"destroy the input: choose another output path")
        for key in (real, ino):
            if key is not None and key in seen:
                raise ConfigError(f"{flag} {shown}: is the same file as {seen[key]}: give each output its own path")
        if not os.path.exists(path) or os.path.isfile(path):
            # a pipe or terminal (--out /dev/stdout) may be shared on purpose; a file may not
            seen[real] = f"{flag} {shown}"
            if ino is not None:
                seen[ino] = f"{flag} {shown}"
