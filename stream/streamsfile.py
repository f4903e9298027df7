"""What `actstream serve` serves: a streams file (STREAMS.toml), `--stream ID=SOURCE` options and the control
endpoint's `add` requests, all read into `StreamSpec`s and checked whole before anything starts.

A streams file is an array of `[[stream]]` tables:

    [[stream]]
    id = "door"                        # letters, digits, - and _ (1-64): the stream's topics carry it
    camera = "http://10.0.0.7/cam.mjpg"   # a camera: index, /dev/videoN, a part of its name, or a URL
    mic = "default"                    # and/or a microphone: index, a part of its name, or "default"

    [[stream]]
    id = "lab"
    file = "recordings/lab.mp4"        # a recording, paced on the wall clock (relative to this file's folder)
    audio = "recordings/lab.wav"       # optionally with a separate audio file
    loop = true                        # start again at its end (time runs on)

Every problem (an unknown key, a bad or duplicate id, a missing file, a stream with no input) is one line
naming the stream and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actstream.common.errors import ConfigError
from actstream.common.files import check_regular_file, read_small_text, shown_path, show_value

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
KEYS = ("id", "camera", "mic", "file", "audio", "loop")
MAX_STREAMS_FILE_BYTES = 1 << 20
MAX_TEXT = 4096


@dataclass(frozen=True)
class StreamSpec:
    """One stream to serve: `id` and its inputs: live devices (`camera`, `mic`) or a recording (`file`, with
    an optional separate `audio`, `loop`ed or not). Paths are absolute once read."""

    id: str
    camera: str | None = None
    mic: str | None = None
    file: str | None = None
    audio: str | None = None
    loop: bool = False

    @property
    def live(self) -> bool:
        return self.file is None

    @property
    def retry(self) -> bool:
        """Devices and URLs are retried with back-off when they cannot be opened; a file is what it is."""
        return self.live

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, False) or k == "id"}


def _text(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or any(c in value for c in "\x00\n\r"):
        raise ConfigError(f"{where}: {key} = {show_value(value)} is invalid: expected a non-empty string of at most "
                          f"{MAX_TEXT} characters on one line")
    return value


def _recording(where: str, key: str, value: Any, base: Path) -> str:
    path = Path(_text(where, key, value)).expanduser()
    path = path if path.is_absolute() else base / path
    check_regular_file(path, f"{where}: {key}", fix="pass a recording (mp4, mkv, avi, wav, ...)")
    return str(path)


def stream_spec(table: Any, where: str, base: Path) -> StreamSpec:
    """One `[[stream]]` table (or control request) checked: a StreamSpec, or ConfigError naming what is wrong."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of keys ({', '.join(KEYS)}), got {show_value(table)}")
    sid = table.get("id")
    if not isinstance(sid, str) or not STREAM_ID.match(sid):
        raise ConfigError(f"{where}: id = {show_value(sid)} is invalid: expected 1-64 letters, digits, - or _")
    where = f"{where} ({sid})"
    unknown = [k for k in table if k not in KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {show_value(unknown[0])}: expected {', '.join(KEYS)}")
    camera = _text(where, "camera", table["camera"]) if "camera" in table else None
    mic = _text(where, "mic", table["mic"]) if "mic" in table else None
    file = _recording(where, "file", table["file"], base) if "file" in table else None
    audio = _recording(where, "audio", table["audio"], base) if "audio" in table else None
    loop = table.get("loop", False)
    if not isinstance(loop, bool):
        raise ConfigError(f"{where}: loop = {show_value(loop)} is invalid: expected true or false")
    if file is not None and (camera is not None or mic is not None):
        raise ConfigError(f"{where}: a stream is either a recording (file) or live devices (camera, mic), not both")
    if file is None and camera is None and mic is None:
        raise ConfigError(f"{where}: no input: give camera and/or mic, or file")
    if file is None and (audio is not None or loop):
        raise ConfigError(f"{where}: audio and loop go with file (a recording)")
    return StreamSpec(sid, camera, mic, file, audio, loop)


def check_unique(specs: list[StreamSpec], where: str) -> list[StreamSpec]:
    seen: set[str] = set()
    for s in specs:
        if s.id in seen:
            raise ConfigError(f"{where}: stream id {s.id!r} appears twice: ids name topics and must be unique")
        seen.add(s.id)
    return specs


def read_streams_file(path: str | Path, max_streams: int) -> list[StreamSpec]:
    """Every stream of a streams file, checked whole."""
    path = Path(path)
    shown = shown_path(path)
    text = read_small_text(path, MAX_STREAMS_FILE_BYTES, "streams file",
                           fix="pass a TOML file of [[stream]] tables (see `actstream serve --help`)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"streams file {shown} is not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"streams file {shown} nests arrays or tables too deeply to read") from exc
    unknown = [k for k in data if k != "stream"]
    if unknown:
        raise ConfigError(f"streams file {shown}: unknown key {show_value(unknown[0])}: expected [[stream]] tables")
    tables = data.get("stream", [])
    if not isinstance(tables, list):
        raise ConfigError(f"streams file {shown}: `stream` must be an array of tables ([[stream]])")
    if len(tables) > max_streams:
        raise ConfigError(f"streams file {shown}: {len(tables)} streams, more than serve.max_streams = {max_streams}: "
                          f"raise the limit in the config or split the streams over processes")
    base = path.parent
    return check_unique([stream_spec(t, f"streams file {shown}, stream {i + 1}", base)
                         for i, t in enumerate(tables)], f"streams file {shown}")


def parse_stream_option(value: str, base: Path | None = None) -> StreamSpec:
    """`--stream ID=SOURCE`: SOURCE is `key:value` pairs joined by commas (keys as in a streams file: camera,
    mic, file, audio; `loop` alone loops a file), or one bare value: a file that exists is a recording, anything
    else a camera (index, /dev/videoN, name or URL). E.g. `door=http://10.0.0.7/cam.mjpg`,
    `lab=file:lab.mp4,loop`, `desk=camera:0,mic:default`."""
    where = f"--stream {show_value(value, 60)}"
    sid, sep, source = value.partition("=")
    if not sep or not source:
        raise ConfigError(f"{where}: expected ID=SOURCE, e.g. door=http://10.0.0.7/cam.mjpg or lab=file:lab.mp4")
    base = base or Path.cwd()
    table: dict[str, Any] = {"id": sid}
    parts = source.split(",")
    if len(parts) == 1 and not any(source.startswith(k + ":") for k in KEYS):
        candidate = Path(source).expanduser()
        table["file" if (candidate if candidate.is_absolute() else base / candidate).is_file() else "camera"] = source
    else:
        for part in parts:
            if part == "loop":
                table["loop"] = True
                continue
            key, colon, val = part.partition(":")
            if not colon or key not in ("camera", "mic", "file", "audio"):
                raise ConfigError(f"{where}: {show_value(part, 60)} is not key:value with a key of camera, mic, file, "
                                  f"audio (or `loop`)")
            table[key] = val
    return stream_spec(table, where, base)
