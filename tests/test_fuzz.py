"""Fuzzing the loaders with hypothesis: mutated and random media files through FileSource, random TOML
through the config loader, mutated model folders through load_spec and the ONNX IO check. No crash, no hang:
every failure is the loader's own clear error.

The unmarked tests run 150 inputs each; the slow-marked ones 10^5 each (`make test-slow`; set
ACTSTREAM_FUZZ_EXAMPLES to change that)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actstream.engines.bundle import SHIPPED, expected_io, load_spec
from actstream.engines.onnxrt import check_io
from actstream.engines.precision import encoder_file
from actstream.stream.config import config_from_dict, load_config
from actstream.views.demo import write_media
from actstream.common.errors import ConfigError, EngineError, SourceError
from actstream.stream.frontend import logmel
from actstream.stream.sources import FileSource
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


# Model folders (issue 10): model.json and int8.json of the shipped default model, mutated as JSON values and
# as bytes, in a copy of its folder. load_spec, the ONNX input/output check against the real files' IO and the
# INT8 file choice must each succeed or give one EngineError line: never another exception, never a hang.

MODEL_DIR = Path(tempfile.mkdtemp(prefix="fuzz-model-")) / "model"
shutil.copytree(SHIPPED / "default", MODEL_DIR)
shutil.copy(MODEL_DIR / "audio_encoder.onnx", MODEL_DIR / "audio_encoder.int8.onnx")
(MODEL_DIR / "outside.onnx").symlink_to(SHIPPED / "default" / "audio_encoder.onnx")
SPEC_SEED = json.loads((SHIPPED / "default" / "model.json").read_text())
GATE_SEED = {"format": 1, "encoders": {"audio": {"file": "audio_encoder.int8.onnx", "source": "0" * 16,
                                                  "passed": True, "reason": "within margin", "cosine_mean": 0.99}}}


@functools.cache
def real_io() -> dict[str, tuple[list, list]]:
    """The shipped ONNX files' inputs and outputs as ONNX Runtime reports them (one session each, once)."""
    import onnxruntime as ort

    out = {}
    for name in ("audio_encoder", "temporal"):
        s = ort.InferenceSession(str(MODEL_DIR / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        out[name] = ([(i.name, i.shape, i.type) for i in s.get_inputs()],
                     [(o.name, o.shape, o.type) for o in s.get_outputs()])
    return out


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, -1, 16000,
                        160, 96, 64, 10**12, 2**63]), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=12), st.sampled_from(["status", "", "speech", "a/b", "../x", "/etc/passwd",
                                                               "outside.onnx", "audio_encoder.int8.onnx", "ab"]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4)), max_leaves=12)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_json(draw, seed) -> bytes:
    doc = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(0, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["set", "delete", "add"]))
        if not path:
            if op == "set":
                doc = draw(JSON_VALUES)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if op == "set":
            parent[path[-1]] = draw(JSON_VALUES)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        else:
            parent.append(draw(JSON_VALUES))
    data = bytearray(json.dumps(doc).encode())
    for _ in range(draw(st.integers(0, 2))):  # and a few byte-level edits on top
        i = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 64))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def check_model_folder(spec_bytes: bytes, gate_bytes: bytes | None) -> None:
    (MODEL_DIR / "model.json").write_bytes(spec_bytes)
    if gate_bytes is None:
        (MODEL_DIR / "int8.json").unlink(missing_ok=True)
    else:
        (MODEL_DIR / "int8.json").write_bytes(gate_bytes)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        spec = load_spec(str(MODEL_DIR))
        for name, expect in expected_io(spec).items():
            if name in real_io():
                check_io(MODEL_DIR / f"{name}.onnx", *real_io()[name], expect)
        if spec.audio is not None:  # the front end a passing spec implies runs within its bounds
            logmel(np.zeros(spec.audio.window_samples, np.float32), spec.audio)
        for precision in ("auto", "int8"):
            try:
                encoder_file(MODEL_DIR, "audio", MODEL_DIR / "audio_encoder.onnx", precision)
            except EngineError as exc:
                assert str(exc) and "\n" not in str(exc)
    except EngineError as exc:
        assert str(exc) and "\n" not in str(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


model_cases = st.tuples(mutated_json(SPEC_SEED), st.one_of(st.none(), mutated_json(GATE_SEED)))


def test_the_fuzz_seeds_load():
    check_model_folder(json.dumps(SPEC_SEED).encode(), json.dumps(GATE_SEED).encode())
    assert load_spec(str(MODEL_DIR)).heads == SPEC_SEED["heads"]


@FAST
@given(case=model_cases)
def test_fuzz_model_folder(case):
    check_model_folder(*case)


@pytest.mark.slow
@SLOW
@given(case=model_cases)
def test_fuzz_model_folder_1e5(case):
    check_model_folder(*case)


# Config files as bytes (issue 10): random bytes and byte-mutated copies of the shipped config.toml.
CONFIG_SEED = (Path(__file__).resolve().parents[1] / "config.toml").read_bytes()


@st.composite
def config_bytes(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(CONFIG_SEED)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        op = draw(st.sampled_from(["flip", "cut", "insert", "nest"]))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 200))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        else:
            n = draw(st.integers(1, 5000))
            data[i:i] = b"\nx = " + b"[" * n + b"]" * n + b"\n"
    return bytes(data)


def check_config_bytes(data: bytes, tmp: Path) -> None:
    p = tmp / "c.toml"
    p.write_bytes(data)
    try:
        load_config(p)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


@FAST
@given(data=config_bytes())
def test_fuzz_config_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        check_config_bytes(data, Path(tmp))


@pytest.mark.slow
@SLOW
@given(data=config_bytes())
def test_fuzz_config_bytes_1e5(data):
    with tempfile.TemporaryDirectory() as tmp:
        check_config_bytes(data, Path(tmp))
