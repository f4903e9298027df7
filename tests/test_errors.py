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


def test_video_only_file_for_an_audio_model(media):
    one_line_error(run_cli("replay", str(media["video"])), "video_only.mp4", "has no audio", "--audio")


def test_unknown_model():
    one_line_error(run_cli("replay", "x.wav", "--model", "no-such-model"), "no-such-model", "not found")


@pytest.mark.parametrize("args, words", [
    (["live", "--camera", "none", "--mic", "none"], ["no audio"]),
    (["replay", "x.wav", "--step-ms", "15"], ["step.step_ms", "15"]),
])
def test_bad_options(args, words):
    one_line_error(run_cli(*args), *words)
