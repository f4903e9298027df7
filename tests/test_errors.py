"""Bad input: one line naming the problem and what to do, exit code 2, no traceback."""

import pytest

from tests.conftest import run_cli


def one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("actstream: error: ")
    for w in words:
        assert w in lines[0]


def test_missing_file(tmp_path):
    one_line_error(run_cli("replay", str(tmp_path / "nope.mp4")), "nope.mp4", "not found")


def test_corrupt_file(media):
    one_line_error(run_cli("replay", str(media["corrupt"])), "corrupt.mp4", "not a readable media file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    one_line_error(run_cli("replay", str(p)), "empty.wav", "empty")


def test_file_with_neither_audio_nor_video(media):
    one_line_error(run_cli("replay", str(media["neither"])), "subtitles.srt", "no audio and no video")


def test_video_only_file_for_an_audio_model(media, audio_model):
    one_line_error(run_cli("replay", str(media["video"]), "--model", str(audio_model)), "video_only.mp4",
                   "has no audio", "--audio")


def test_unknown_model():
    one_line_error(run_cli("replay", "x.wav", "--model", "no-such-model"), "no-such-model", "not found")


@pytest.mark.parametrize("args, words", [
    (["live", "--camera", "none", "--mic", "none"], ["no audio"]),
    (["replay", "x.wav", "--step-ms", "15"], ["step.step_ms", "15"]),
])
def test_bad_options(args, words):
    one_line_error(run_cli(*args), *words)


# issue 10, item 9: media that is no recording, or too short for one label

def _wav(path, samples: int, channels: int = 1, rate: int = 16000):
    """A PCM wav header (and silence) written by hand: any channel count the field can hold."""
    import struct

    data = b"\0\0" * channels * samples
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * 2 * channels) & 0xFFFFFFFF,
                      (2 * channels) & 0xFFFF, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data"
                     + struct.pack("<I", len(data)) + data)
    return path


def test_dev_zero_is_not_a_regular_file():
    one_line_error(run_cli("replay", "/dev/zero", "--publish", "none"), "/dev/zero", "not a regular file (a device)")


def test_a_fifo_is_not_a_regular_file_and_does_not_hang(tmp_path):
    import os

    fifo = tmp_path / "rec.wav"
    os.mkfifo(fifo)
    one_line_error(run_cli("replay", str(fifo), "--publish", "none", timeout=60), "rec.wav",
                   "not a regular file (a FIFO)")


@pytest.mark.parametrize("channels", [33, 513, 65535])
def test_the_real_channel_count_is_reported(tmp_path, channels):
    p = _wav(tmp_path / f"c{channels}.wav", 2, channels)
    one_line_error(run_cli("replay", str(p), "--publish", "none"), f"{channels} audio channels not supported")


@pytest.mark.parametrize("samples, words", [
    (0, ["no audio or video could be decoded"]),
    (1, ["0.1 ms long", "shorter than one step (100 ms)"]),
    (800, ["50.0 ms long", "shorter than one step (100 ms)", "--step-ms"]),
])
def test_a_recording_shorter_than_one_step_is_refused(tmp_path, samples, words):
    p = _wav(tmp_path / "short.wav", samples)
    out = tmp_path / "out.jsonl"
    one_line_error(run_cli("replay", str(p), "--publish", "none", "--out", str(out)), "short.wav", *words)
    assert not out.exists()  # replay passes its step length to the source: refused before --out is opened


def test_short_recordings_that_give_a_label_still_run(tmp_path):
    import json

    p = _wav(tmp_path / "step.wav", 1600)  # exactly one 100 ms step
    out = tmp_path / "out.jsonl"
    r = run_cli("replay", str(p), "--publish", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr
    topics = [json.loads(line)["topic"] for line in out.read_text().splitlines()]
    assert topics == ["speech", "activity", "status"]
    # a model trained at 50 ms steps (its model.json says so) labels a 50 ms recording once
    import shutil

    from actstream.engines.bundle import SHIPPED

    fast = tmp_path / "fast"
    shutil.copytree(SHIPPED / "default", fast)
    spec = json.loads((fast / "model.json").read_text())
    (fast / "model.json").write_text(json.dumps({**spec, "step_ms": 50}))
    tiny = str(_wav(tmp_path / "tiny.wav", 800))
    r = run_cli("replay", tiny, "--publish", "none", "--model", str(fast))
    assert r.returncode == 0 and "1 steps" in r.stderr, r.stderr


def test_a_step_other_than_the_models_is_refused(tmp_path):
    r = run_cli("replay", str(_wav(tmp_path / "a.wav", 16000)), "--publish", "none", "--step-ms", "50")
    one_line_error(r, "step.step_ms = 50", "model default was trained at 100 ms steps", "step_ms at 0")


def test_a_one_frame_video_is_refused(tmp_path):
    from actstream.views.demo import write_media
    from actstream.common.errors import SourceError
    from actstream.stream.sources import FileSource
    from tests.conftest import moving_frames

    p = write_media(tmp_path / "one.mp4", moving_frames(1), None)  # one frame at 25 fps: 40 ms
    with pytest.raises(SourceError, match="40.0 ms long, shorter than one step"):
        FileSource(p, use_audio=False, min_seconds=0.1)
    src = FileSource(p, use_audio=False)  # 40 ms passes the 10 ms check; the 100 ms step then refuses it
    with pytest.raises(SourceError, match="shorter than one step \\(100 ms\\)"):
        src.snapshot(0.1)
    src.close()
