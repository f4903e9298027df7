"""The public Python API (`from actstream import ...`), used the way its users would: the in-process
recognizer fed from a decoder gives what `actstream replay --out` gives for the same file; the subscriber."""

from __future__ import annotations

import json
import threading

import av
import numpy as np
import pytest

from tests.conftest import ROOT, need_shared, run_cli


def _push_file(rec, path) -> list:
    """The README's example: decode a file with PyAV and push every frame and audio block with its time."""
    steps = []
    with av.open(str(path)) as f:
        resample = av.AudioResampler(format="flt", layout="mono", rate=rec.sample_rate)
        for frame in f.decode(*[s for s in (f.streams.video[:1] + f.streams.audio[:1])]):
            if isinstance(frame, av.VideoFrame):
                steps += rec.push_video(frame.to_ndarray(format="bgr24"), frame.time)
            else:
                for block in resample.resample(frame):
                    steps += rec.push_audio(block.to_ndarray().reshape(-1), frame.time)
        for block in resample.resample(None):  # what the resampler still holds
            steps += rec.push_audio(block.to_ndarray().reshape(-1))
    return steps + rec.finish()


def _replayed(path, tmp_path) -> list[dict]:
    out = tmp_path / f"{path.stem}.jsonl"
    r = run_cli("replay", str(path), "--publish", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return [m for m in map(json.loads, out.read_text().splitlines()) if m["topic"] != "status"]


def _same(steps, replayed: list[dict]) -> None:
    """Every label message of the replay, in order, is a step's head: the same label, scores within the
    replay's 4 decimals."""
    mine = [(round(s.t, 4), h, lab) for s in steps for h, lab in s.labels.items()]
    assert [(t, h) for t, h, _ in mine] == [(m["t"], m["topic"]) for m in replayed]
    for (_, _, lab), m in zip(mine, replayed):
        assert lab.label == m["label"] and lab.changed == m["changed"]
        assert max(abs(lab.scores[k] - m["scores"][k]) for k in m["scores"]) <= 1e-4


@pytest.fixture(scope="module")
def recognizer():
    from actstream import Recognizer

    with Recognizer() as rec:
        yield rec


def test_the_in_process_recognizer_labels_an_av_file_as_replay_does(recognizer, media, tmp_path):
    recognizer.reset()
    _same(_push_file(recognizer, media["mp4"]), _replayed(media["mp4"], tmp_path))


def test_the_readmes_example_gives_what_replay_gives(media, tmp_path, capsys):
    """The README's example, run as written (on the test's A/V file): its steps are replay's."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\nimport av\nfrom actstream import Recognizer")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    scope: dict = {}
    exec(compile(code.replace('"clip.mp4"', repr(str(media["mp4"]))), "README example", "exec"), scope)
    _same(scope["steps"], _replayed(media["mp4"], tmp_path))
    assert len(capsys.readouterr().out.splitlines()) == 30  # a line per step


def test_a_silent_video_of_a_person_and_a_wav_each_as_replay_does(media, tmp_path):
    from actstream import Recognizer

    clip = need_shared("video", "weizmann", "wave2", "lena_wave2.avi")
    with Recognizer(audio=False) as rec:  # a silent video: no step waits for audio
        steps = _push_file(rec, clip)
    assert {h for s in steps for h in s.labels} == {"action"}
    _same(steps, _replayed(clip, tmp_path))
    with Recognizer(video=False) as rec:
        steps = _push_file(rec, media["wav"])
        _same(steps, _replayed(media["wav"], tmp_path))
        rec.reset()  # a new stream: the same file again gives the same labels
        assert [(s.t, {h: x.label for h, x in s.labels.items()}) for s in _push_file(rec, media["wav"])] == \
            [(s.t, {h: x.label for h, x in s.labels.items()}) for s in steps]


def test_steps_come_as_soon_as_their_inputs_are_pushed_and_bad_input_is_refused(recognizer):
    from actstream.common.errors import ConfigError

    recognizer.reset()
    frame = np.zeros((120, 160, 3), np.uint8)
    assert recognizer.push_video(frame, 0.0) == []  # step 1 (0.1 s) needs audio up to 0.1 s and a later frame
    assert recognizer.push_audio(np.zeros(1600, np.float32), 0.0) == []
    done = recognizer.push_video(frame, 0.12)
    assert [s.t for s in done] == [0.1] and set(done[0].labels) == {"speech", "activity", "action"}
    with pytest.raises(ConfigError, match="not after the last one"):
        recognizer.push_video(frame, 0.05)
    with pytest.raises(ConfigError, match="BGR uint8"):
        recognizer.push_video(np.zeros((4, 4), np.float32), 1.0)
    with pytest.raises(ConfigError, match="goes back in time"):
        recognizer.push_audio(np.zeros(10, np.float32), 0.0)


def test_subscribe_from_the_top_of_the_package(media, port):
    from actstream import SeqTracker, subscribe

    endpoint = f"tcp://127.0.0.1:{port}"
    tracker, got = SeqTracker(), []

    def listen():
        for msg in subscribe(endpoint, topics=["speech"], timeout_s=30, tracker=tracker):
            got.append(msg)
            if len(got) == 30:
                return

    thread = threading.Thread(target=listen)
    thread.start()
    r = run_cli("replay", str(media["mp4"]), "--publish", endpoint, "--wait-subscriber", "30")
    thread.join(60)
    assert r.returncode == 0, r.stderr
    assert [m["seq"] for m in got] == list(range(30)) and {m["topic"] for m in got} == {"speech"}
