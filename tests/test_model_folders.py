"""Crafted model folders (issue 10, item 7): model.json and int8.json checked against their schemas, the ONNX
files against model.json at load, every referenced file kept inside the folder, a corrupt weights.pt one line.
Each bad folder gives one EngineError line naming the file and the bad value; none gives a traceback or runs
with nonsense (no heads, labels made of a string's letters)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from actstream.engines.bundle import MAX_JSON_BYTES, RESERVED_TOPICS, SHIPPED, load_spec, open_engines
from actstream.engines.precision import encoder_file, read_gate
from actstream.common.errors import EngineError
from tests.conftest import run_cli
from tests.test_errors import one_line_error

DEFAULT = SHIPPED / "default"


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(DEFAULT, d)
    return d


class Top:
    """An edit's result that replaces the whole document."""

    def __init__(self, value):
        self.value = value


def write_spec(folder: Path, edit) -> None:
    spec = json.loads((DEFAULT / "model.json").read_text())
    out = edit(spec)
    (folder / "model.json").write_text(json.dumps(out.value if isinstance(out, Top) else spec))


def refused(path, *words) -> str:
    with pytest.raises(EngineError) as exc:
        load_spec(str(path))
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def heads(value):
    return lambda s: s.__setitem__("heads", value)


def heads_and_inputs(value):
    """heads replaced, and head_inputs with them (each head reading what the default's does, else audio)."""
    def edit(s):
        s["head_inputs"] = {h: s["head_inputs"].get(h, ["audio"]) for h in value}
        s["heads"] = value
    return edit


def audio(key, value):
    return lambda s: s["audio"].__setitem__(key, value)


CASES = {
    "heads as a list": (heads(["speech", "activity"]), ["heads", "an object of 1 to 16 heads"]),
    "heads as a string": (heads("speech"), ["heads = 'speech'"]),
    "no heads": (heads({}), ["heads = {}"]),
    "classes as a string": (heads({"speech": "ab"}), ["heads.speech = 'ab'", "list of 2 to 256"]),
    "one class": (heads({"speech": ["speech"]}), ["heads.speech"]),
    "duplicate classes": (heads({"speech": ["a", "b", "a"]}), ["'a'", "distinct"]),
    "empty class": (heads({"speech": ["", "b"]}), ["heads.speech class = ''"]),
    "class not text": (heads({"speech": [1, 2]}), ["heads.speech class = 1"]),
    "class with a newline": (heads({"speech": ["a\nb", "c"]}), ["'a\\nb'"]),
    "head named status": (heads({"status": ["a", "b"]}), ["head name = 'status'"]),
    "empty head name": (heads({"": ["a", "b"]}), ["head name = ''"]),
    "head name with a slash": (heads({"a/b": ["a", "b"]}), ["head name = 'a/b'"]),
    "long head name": (heads({"h" * 33: ["a", "b"]}), ["head name"]),
    "head a prefix of another": (heads({"speech": ["a", "b"], "speech2": ["a", "b"]}), ["'speech2'", "prefix"]),
    "head a prefix of status": (heads({"stat": ["a", "b"]}), ["'stat'", "prefix of 'status'"]),
    "too many classes": (heads({"speech": [f"c{i}" for i in range(300)]}), ["heads.speech"]),
    "zero sample rate": (audio("sample_rate", 0), ["audio.sample_rate = 0", "8000 to 48000"]),
    "sample rate as text": (audio("sample_rate", "16000"), ["audio.sample_rate = '16000'"]),
    "hop 0": (audio("hop", 0), ["audio.hop = 0"]),
    "hop off the 10 ms grid": (audio("hop", 128), ["audio.hop = 128", "10 ms"]),
    "negative mel bands": (audio("n_mels", -64), ["audio.n_mels = -64"]),
    "10^12 frames": (audio("frames", 10**12), ["audio.frames = 1000000000000"]),
    "fmax above Nyquist": (audio("fmax", 9000.0), ["audio.fmax = 9000.0"]),
    "fmin NaN": (audio("fmin", float("nan")), ["audio.fmin = nan"]),
    "n_fft below the window": (audio("n_fft", 256), ["audio.n_fft = 256"]),
    "n_fft too costly for the hop": (audio("n_fft", 4096), ["audio.n_fft = 4096", "at most 2048"]),
    "unknown audio key": (audio("colour", 1), ["audio key = 'colour'"]),
    "audio missing for a model that listens": (lambda s: s.__setitem__("audio", None),
                                               ["audio = None", "arch hybrid reads audio"]),
    "top level a list": (lambda s: Top([s]), ["the top level = [{"]),
    "top level null": (lambda s: Top(None), ["the top level = None"]),
    "format true": (lambda s: s.__setitem__("format", True), ["format True"]),
    "hidden a bool": (lambda s: s.__setitem__("hidden", True), ["hidden = True"]),
    "hidden 10^9": (lambda s: s.__setitem__("hidden", 10**9), ["hidden = 1000000000"]),
    "unknown arch": (lambda s: s.__setitem__("arch", ["audio_lstm"]), ["arch ['audio_lstm'] unknown"]),
    "name not text": (lambda s: s.__setitem__("name", {"a": 1}), ["name = {'a': 1}"]),
    "unknown top-level key": (lambda s: s.__setitem__("extra", 1), ["model.json key = 'extra'"]),
    "missing key": (lambda s: s.pop("hidden"), ["model.json lacks hidden"]),
    "missing audio key": (lambda s: s["audio"].pop("win"), ["audio lacks win"]),
    "card not an object": (lambda s: s.__setitem__("card", []), ["card = []"]),
    "card version a list": (lambda s: s["card"].__setitem__("version", [1]), ["card.version = [1]"]),
    "video size 10^6 on a hybrid": (lambda s: s.update(arch="hybrid", video={"size": 10**6, "mean": 127.0,
                                                                                "std": 128.0}), ["video.size"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_json_is_one_line(folder, case):
    edit, words = CASES[case]
    write_spec(folder, edit)
    refused(folder, "model.json", *words)


def test_the_shipped_model_passes_the_schema():
    spec = load_spec("default")
    assert list(spec.heads) == ["speech", "activity", "action"] and spec.audio.frames == 96
    assert spec.head_inputs == {"speech": ("audio",), "activity": ("audio",), "action": ("video",)}
    assert spec.arch == "hybrid" and spec.flow is not None and spec.tag == "default@5"


def test_the_reserved_topics_are_the_ones_the_loop_publishes_itself(media, tmp_path):
    """A head may not be named like a topic the step loop sends on its own: every topic of a replay that is no
    head of the model is reserved."""
    import json

    r = run_cli("replay", str(media["wav"]), "--publish", "none", "--out", str(tmp_path / "topics.jsonl"))
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "topics.jsonl").read_text().splitlines()
    topics = {json.loads(x)["topic"] for x in lines}
    assert topics - set(load_spec("default").heads) == set(RESERVED_TOPICS)


def test_a_crafted_model_on_the_command_line_is_one_line(folder, media):
    write_spec(folder, heads({"speech": "ab"}))
    one_line_error(run_cli("replay", str(media["wav"]), "--model", str(folder), "--publish", "none"),
                   "model.json", "heads.speech = 'ab'")


@pytest.mark.parametrize("body, words", [
    (b"\xff\xfe not utf-8", ["not UTF-8 text (byte 0xff at offset 0)"]),
    (b"[" * 100_000 + b"]" * 100_000, ["nests too deeply"]),
    (b'{"format": 1, "format": 1}', ["not valid JSON", "'format' appears twice"]),
    (b"{not json", ["not valid JSON"]),
    (b" " * (MAX_JSON_BYTES + 1), [f"more than the {MAX_JSON_BYTES} bytes allowed"]),
])
def test_model_json_bytes_are_bounded(folder, body, words):
    (folder / "model.json").write_bytes(body)
    refused(folder, "model.json", *words)


def test_model_json_fifo_does_not_hang(folder):
    (folder / "model.json").unlink()
    os.mkfifo(folder / "model.json")
    refused(folder, "model.json", "not a regular file")


# the ONNX files against model.json, at load

@pytest.mark.parametrize("edit, engine, words", [
    (heads_and_inputs({"speech": ["no_speech", "speech"]}), "temporal",
     ["outputs are ['speech', 'activity', 'action', 'hn', 'cn']"]),
    (heads_and_inputs({"talk": ["no_speech", "speech"], "activity": [f"c{i}" for i in range(12)]}), "temporal",
     ["'speech'", "'talk'"]),
    (lambda s: s["heads"]["activity"].pop(), "temporal", ["output 'activity' has shape [?, ?, 12]",
                                                           "implies [?, ?, 11]"]),
    (lambda s: s.__setitem__("hidden", 64), "temporal", ["input 'h0' has shape [1, ?, 128]"]),
    (audio("frames", 95), "audio", ["audio_encoder.onnx", "'logmel' has shape [?, 96, 64]"]),
    (audio("n_mels", 40), "audio", ["'logmel'"]),
    (lambda s: s.__setitem__("audio_dim", 64), "audio", ["'embedding' has shape [?, 128]"]),
])
def test_onnx_files_must_match_model_json(folder, edit, engine, words):
    write_spec(folder, edit)
    spec = load_spec(str(folder))  # a valid description on its own
    engines = open_engines(spec, "onnxruntime", threads=1)
    target = engines.temporal if engine == "temporal" else engines.encoders[engine]
    with pytest.raises(EngineError) as exc:
        target.load()
    assert "\n" not in str(exc.value) and "does not match model.json" in str(exc.value)
    for w in words:
        assert w in str(exc.value)


def test_heads_that_disagree_with_the_onnx_file_on_the_command_line(folder, media):
    write_spec(folder, lambda s: s["heads"]["activity"].pop())
    one_line_error(run_cli("replay", str(media["wav"]), "--model", str(folder), "--publish", "none"),
                   "temporal.onnx does not match model.json")


def test_referenced_files_stay_inside_the_folder(folder, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(folder / "temporal.onnx", outside)
    (folder / "temporal.onnx").unlink()
    (folder / "temporal.onnx").symlink_to(outside)
    engines = open_engines(load_spec(str(folder)), "onnxruntime", threads=1)
    with pytest.raises(EngineError, match="leads out of the model folder"):
        engines.temporal.load()
    # a link inside the folder is fine
    (folder / "temporal.onnx").unlink()
    shutil.move(outside, folder / "t.onnx")
    (folder / "temporal.onnx").symlink_to("t.onnx")
    engines = open_engines(load_spec(str(folder)), "onnxruntime", threads=1)
    engines.temporal.load()
    assert engines.temporal.output_names == ["speech", "activity", "action", "hn", "cn"]


def test_a_symlink_loop_is_one_line(folder):
    (folder / "temporal.onnx").unlink()
    (folder / "temporal.onnx").symlink_to("temporal.onnx")
    engines = open_engines(load_spec(str(folder)), "onnxruntime", threads=1)
    with pytest.raises(EngineError, match="cannot be resolved"):
        engines.temporal.load()


def test_a_fifo_as_an_onnx_file_does_not_hang(folder):
    (folder / "audio_encoder.onnx").unlink()
    os.mkfifo(folder / "audio_encoder.onnx")
    engines = open_engines(load_spec(str(folder)), "onnxruntime", threads=1)
    with pytest.raises(EngineError, match="not a regular file"):
        engines.encoders["audio"].load()


# int8.json

def gate(folder: Path, record) -> None:
    (folder / "int8.json").write_text(json.dumps(record))


@pytest.mark.parametrize("record, words", [
    ([1, 2], ["the top level = [1, 2]"]),
    ({"encoders": ["audio"]}, ["encoders = ['audio']"]),
    ({"encoders": {"audio": "x.onnx"}}, ["encoders.audio = 'x.onnx'"]),
    ({"encoders": {"audio": {"file": "../../etc/passwd", "passed": True}}}, ["points outside the model folder"]),
    ({"encoders": {"audio": {"file": "/etc/passwd", "passed": True}}}, ["points outside the model folder"]),
    ({"encoders": {"audio": {"file": 3, "passed": True}}}, ["audio INT8 encoder (int8.json) 3"]),
    ({"encoders": {"audio": {"passed": True}}}, ["audio INT8 encoder (int8.json) None"]),
    ({"encoders": {"audio": {"file": "audio_encoder.onnx", "passed": "yes"}}}, ["encoders.audio.passed = 'yes'"]),
    ({"encoders": {"audio": {"file": "audio_encoder.onnx", "source": 5}}}, ["encoders.audio.source = 5"]),
    ({"encoders": {"speech": {}}}, ["encoder = 'speech'"]),
])
def test_bad_int8_json_is_one_line(folder, record, words):
    gate(folder, record)
    for precision in ("auto", "int8"):
        with pytest.raises(EngineError) as exc:
            encoder_file(folder, "audio", folder / "audio_encoder.onnx", precision)
        assert "\n" not in str(exc.value) and "int8.json" in str(exc.value)
        for w in words:
            assert w in str(exc.value)


def test_int8_json_bytes_are_bounded(folder):
    (folder / "int8.json").write_bytes(b"\x80abc")
    with pytest.raises(EngineError, match="not UTF-8"):
        read_gate(folder)
    (folder / "int8.json").write_bytes(b"{}" + b" " * MAX_JSON_BYTES)
    with pytest.raises(EngineError, match="allowed"):
        read_gate(folder)
    (folder / "int8.json").unlink()
    os.mkfifo(folder / "int8.json")
    with pytest.raises(EngineError, match="not a regular file"):
        read_gate(folder)


def test_int8_file_symlinked_out_is_refused(folder, tmp_path):
    outside = tmp_path / "int8.onnx"
    shutil.copy(folder / "audio_encoder.onnx", outside)
    (folder / "audio_encoder.int8.onnx").symlink_to(outside)
    gate(folder, {"encoders": {"audio": {"file": "audio_encoder.int8.onnx", "passed": True, "source": "x"}}})
    with pytest.raises(EngineError, match="leads out of the model folder"):
        encoder_file(folder, "audio", folder / "audio_encoder.onnx", "int8")


def test_a_good_int8_json_still_works(folder):
    shutil.copy(folder / "audio_encoder.onnx", folder / "audio_encoder.int8.onnx")
    gate(folder, {"encoders": {"audio": {"file": "audio_encoder.int8.onnx", "passed": False, "reason": "r",
                                         "source": "0" * 16, "cosine_mean": 0.9}}})
    assert encoder_file(folder, "audio", folder / "audio_encoder.onnx", "int8") == folder / "audio_encoder.int8.onnx"
    assert encoder_file(folder, "audio", folder / "audio_encoder.onnx", "auto") == folder / "audio_encoder.onnx"


# weights.pt under --backend torch

@pytest.mark.parametrize("body", [os.urandom(4096), b"", b"PK\x03\x04" + bytes(500), b"\x80\x02}q\x00."])
def test_corrupt_weights_are_one_line(folder, body):
    from actstream.engines.bundle import load_torch_modules

    (folder / "weights.pt").write_bytes(body)
    with pytest.raises(EngineError) as exc:
        load_torch_modules(load_spec(str(folder)))
    assert "\n" not in str(exc.value) and "weights.pt cannot be loaded" in str(exc.value)


def test_corrupt_weights_on_the_command_line(folder, media):
    (folder / "weights.pt").write_bytes(os.urandom(4096))
    one_line_error(run_cli("replay", str(media["wav"]), "--model", str(folder), "--backend", "torch",
                           "--publish", "none"), "weights.pt cannot be loaded")


def test_a_model_name_too_long_for_the_file_system_is_one_line():
    refused("m" * 300, "cannot be looked up", "File name too long")


def test_heads_that_disagree_with_the_weights_are_one_line(folder):
    from actstream.engines.bundle import load_torch_modules

    write_spec(folder, lambda s: s["heads"]["activity"].pop())
    with pytest.raises(EngineError) as exc:
        load_torch_modules(load_spec(str(folder)))
    assert "\n" not in str(exc.value) and "weights.pt cannot be loaded" in str(exc.value)
