"""Fuzzing the loaders with hypothesis: mutated and random media files through FileSource, random TOML
through the config loader. No crash, no hang: every failure is the loader's own clear error.

The unmarked tests run 150 inputs each; the slow-marked ones 10^5 each (`make test-slow`; set
ACTSTREAM_FUZZ_EXAMPLES to change that)."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import config_from_dict, load_config
from stream.demo import write_media
from stream.errors import ConfigError, SourceError
from stream.sources import FileSource
from tests.conftest import moving_frames, tone_and_noise

HANG_S = 10  # one input taking longer than this is a hang


def _seeds() -> list[bytes]:
    d = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
    files = [write_media(d / "a.wav", None, tone_and_noise(0.5, 16000, 1), 16000, acodec="pcm_s16le"),
             write_media(d / "a.flac", None, tone_and_noise(0.5, 8000, 2), 8000, acodec="flac"),
             write_media(d / "av.mkv", moving_frames(6, 32, 24), tone_and_noise(0.3, 16000, 1), 16000)]
    return [f.read_bytes() for f in files]


SEEDS = _seeds()


@st.composite
def media_bytes(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 4096))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "zero":
            data[i:i + draw(st.integers(1, 64))] = bytes(len(data[i:i + 64]))
    if draw(st.booleans()) and len(data) > 64:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _alarm(*_):
    raise TimeoutError(f"an input took more than {HANG_S} s")


def check_media(data: bytes, suffix: str, tmp: Path) -> None:
    p = tmp / f"fuzz{suffix}"
    p.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        src = FileSource(p)
        try:
            t = 0.1
            while src.snapshot(t) is not None and t < 5.0:
                t = round(t + 0.1, 4)
        finally:
            src.close()
    except SourceError as exc:
        assert str(exc) and "\n" not in str(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


TOML_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                        st.text(max_size=20), st.lists(st.integers(), max_size=3))
KEYS = ["step_ms", "path", "backend", "threads", "smoothing", "enter", "exit", "switch_steps", "min_hold_ms",
        "endpoint", "hwm", "status_every_ms", "keys", "insecure", "realtime", "camera", "mic", "seconds",
        "frame_ring", "audio_ring_s", "audio_block_ms", "stall_s", "nonsense"]
SECTIONS = ["step", "model", "policy", "publish", "replay", "live", "other"]
config_dicts = st.dictionaries(st.sampled_from(SECTIONS),
                               st.one_of(st.dictionaries(st.sampled_from(KEYS), TOML_VALUES, max_size=4), TOML_VALUES),
                               max_size=3)


def check_config_dict(d: dict) -> None:
    try:
        config_from_dict(d)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


def check_config_text(text: str, tmp: Path) -> None:
    p = tmp / "c.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(p)
    except ConfigError as exc:
        assert str(exc)
    except UnicodeEncodeError:
        pass


FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SLOW = settings(max_examples=int(os.environ.get("ACTSTREAM_FUZZ_EXAMPLES", 100_000)), deadline=None, suppress_health_check=list(HealthCheck), database=None)


@FAST
@given(data=media_bytes(), suffix=st.sampled_from([".wav", ".flac", ".mkv", ".mp4", ".bin"]))
def test_fuzz_media_loader(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        check_media(data, suffix, Path(tmp))


@FAST
@given(d=config_dicts)
def test_fuzz_config_values(d):
    check_config_dict(d)


@FAST
@given(text=st.text(alphabet=st.sampled_from(list("[]=\"'.# \n0123456789abcdeflmnoprstuy_-")), max_size=200))
def test_fuzz_config_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        check_config_text(text, Path(tmp))


@pytest.mark.slow
@SLOW
@given(data=media_bytes(), suffix=st.sampled_from([".wav", ".flac", ".mkv", ".mp4", ".bin"]))
def test_fuzz_media_loader_1e5(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        check_media(data, suffix, Path(tmp))


@pytest.mark.slow
@SLOW
@given(d=config_dicts)
def test_fuzz_config_values_1e5(d):
    check_config_dict(d)


@pytest.mark.slow
@SLOW
@given(text=st.text(max_size=300))
def test_fuzz_config_text_1e5(text):
    with tempfile.TemporaryDirectory() as tmp:
        check_config_text(text, Path(tmp))
