"""Faults and bad input at the edges: output on a full or read-only disk, corrupt models, media that is
truncated, uses an unsupported codec or an absurd rate, size or channel count; audio formats that are
handled. Each is one clear line and exit 2, or a normal run."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from actstream.views.demo import write_media
from actstream.common.errors import SourceError
from actstream.stream.sources import FileSource
from tests.conftest import ROOT, moving_frames, run_cli, tone_and_noise
from tests.test_errors import one_line_error

ROOT_MODEL = ROOT / "engines" / "weights" / "default"


def wav_bytes(fmt: int = 1, channels: int = 1, rate: int = 16000, seconds: float = 1.0) -> bytes:
    """A WAV file whose header says what the arguments say (16-bit samples of a tone)."""
    x = (tone_and_noise(seconds, 16000, 1)[:, 0] * 32767).astype("<i2").tobytes()
    fmt_chunk = struct.pack("<IHHIIHH", 16, fmt, channels, rate, rate * 2 * channels, 2 * channels, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(x)) + b"WAVEfmt " + fmt_chunk + b"data" + struct.pack("<I", len(x)) + x


def test_out_on_a_full_disk(media, port, tmp_path):
    """A disk that fills during the run (the child may write 4 KB per file: RLIMIT_FSIZE, EFBIG; Python ignores
    SIGXFSZ). The run completes (the bus keeps publishing) and then says, in one line, that --out is incomplete.
    /dev/full, which fails every write, is refused before the run (issue 10)."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "o.jsonl"
    r = subprocess.run([sys.executable, "-m", "actstream.cli", "replay", str(media["wav"]), "--out", str(out),
                        "--publish", f"tcp://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"actstream: ERROR: writing --out {out} failed")  # logged when it happened
    assert lines[-1] == (f"actstream: error: writing --out {out} failed (File too large): free some "
                         "space or choose another path; the label stream kept publishing")
    r = run_cli("replay", str(media["wav"]), "--out", "/dev/full", "--publish", "none")
    one_line_error(r, "--out /dev/full: is /dev/full, which fails every write")


def test_out_in_a_read_only_location(media):
    r = run_cli("replay", str(media["wav"]), "--out", "/sys/actstream-out.jsonl", "--publish", "none")
    one_line_error(r, "cannot write --out /sys/actstream-out.jsonl", "choose a writable path")


@pytest.mark.parametrize("damage, words", [
    ("audio_encoder.onnx", ["audio_encoder.onnx"]),
    ("temporal.onnx", ["temporal.onnx"]),
    ("model.json", ["model.json"]),
])
def test_corrupt_model_file_is_a_clear_error(media, tmp_path, damage, words):
    folder = tmp_path / "model"
    shutil.copytree(ROOT_MODEL, folder)
    (folder / damage).write_bytes(b"\x08\x01garbage, not what this file should hold" * 10)
    r = run_cli("replay", str(media["wav"]), "--model", str(folder), "--publish", "none")
    one_line_error(r, *words)


def test_model_for_another_version_is_a_clear_error(media, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(ROOT_MODEL, folder)
    spec = json.loads((folder / "model.json").read_text())
    spec["format"] = 99
    (folder / "model.json").write_text(json.dumps(spec))
    one_line_error(run_cli("replay", str(media["wav"]), "--model", str(folder), "--publish", "none"),
                   "format 99", "upgrade actstream")


def test_truncated_media(media, tmp_path):
    """An mp4 cut in half (its index is at the end: unreadable) is refused; a wav cut in half replays what
    is there."""
    data = media["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    one_line_error(run_cli("replay", str(cut), "--publish", "none"), "cut.mp4", "not a readable media file")
    wav = media["wav"].read_bytes()
    half = tmp_path / "half.wav"
    half.write_bytes(wav[: len(wav) // 2])  # 3 s of stereo 44.1 kHz: 1.4999 s remain
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(half), "--publish", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr
    speech = [json.loads(x) for x in out.read_text().splitlines() if '"topic":"speech"' in x]
    assert [m["seq"] for m in speech] == list(range(14))


@pytest.mark.parametrize("name, header, words", [
    ("codec.wav", dict(fmt=0x1234), ["audio codec", "not supported"]),
    ("rate1.wav", dict(rate=1), ["sample rate 1 Hz not supported"]),
    ("rate2g.wav", dict(rate=2_000_000_000), ["sample rate 2000000000 Hz not supported"]),
    ("ch200.wav", dict(channels=200), ["200 audio channels not supported"]),
])
def test_unsupported_codec_and_absurd_audio_headers(tmp_path, name, header, words):
    p = tmp_path / name
    p.write_bytes(wav_bytes(**header))
    one_line_error(run_cli("replay", str(p), "--publish", "none"), name, *words)


def test_absurd_video_size_is_refused(tmp_path):
    p = write_media(tmp_path / "wide.mp4", (np.zeros((16, 5000, 3), np.uint8) for _ in range(3)), None)
    with pytest.raises(SourceError, match="video size 5000x16 not supported"):
        FileSource(p, use_audio=False)


@pytest.mark.parametrize("rate, channels, codec", [
    (8000, 1, "pcm_s16le"), (48000, 2, "pcm_s16le"), (48000, 2, "pcm_f32le"), (22050, 1, "pcm_f32le"),
])
def test_audio_formats_are_handled(tmp_path, rate, channels, codec):
    """Any common rate, channel count and sample format becomes 16 kHz mono float: 2 s give 20 steps, and
    the tone burst in the middle is heard the same way in each."""
    p = write_media(tmp_path / f"a{rate}_{channels}_{codec}.wav", None, tone_and_noise(2.0, rate, channels), rate,
                    acodec=codec)
    src = FileSource(p)
    windows = []
    t = 0.1
    while (snap := src.snapshot(t)) is not None:
        windows.append(float(np.sqrt(np.mean(snap.audio[-1600:] ** 2))))
        t = round(t + 0.1, 4)
    src.close()
    assert len(windows) == 20
    loud = np.array(windows) > 0.05
    assert loud[8:12].all() and not loud[:5].any()  # the burst is in the middle (0.6 s to 1.4 s)


def test_video_frames_of_odd_sizes_are_handled(tmp_path):
    p = write_media(tmp_path / "odd.mkv", moving_frames(20, 174, 98), None)
    src = FileSource(p, use_audio=False)
    snap = src.snapshot(0.5)
    src.close()
    assert snap.frame.shape == (98, 174, 3)


def test_unsupported_video_codec_is_refused(media, tmp_path, audio_model):
    """An mkv whose video track names a codec this FFmpeg has no decoder for (found by the fuzzer: it
    crashed the loader before)."""
    data = media["mkv"].read_bytes()
    assert b"V_MPEG4/ISO/AVC" in data
    p = tmp_path / "codec.mkv"
    p.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_NOSUCH/ISO/AV"))
    with pytest.raises(SourceError, match="video codec .* is not supported"):
        FileSource(p)
    # the default model reads video: one line; a model that uses audio only never opens the video track
    one_line_error(run_cli("replay", str(p), "--publish", "none"), "codec.mkv", "video codec", "not supported")
    assert run_cli("replay", str(p), "--model", str(audio_model), "--publish", "none").returncode == 0
