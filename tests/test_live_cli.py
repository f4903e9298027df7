"""`actstream live` end to end on real device paths: the microphone is sounddevice's `pulse` device
recording a PulseAudio null sink that the test plays into; the camera is an MJPEG stream over HTTP on
loopback opened by OpenCV like a webcam. Faults are made in those devices while the command runs."""

from __future__ import annotations

import json
from collections import Counter
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from actstream.stream.client import SeqTracker, subscribe
from actstream.stream.sources import load_audio
from tests.conftest import ROOT, assert_acts_like_replay, labels_of, need_shared, run_cli, wait_until
from tests.livekit import MjpegServer, write_wav

RATE = 16000


def start_live(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "actstream.cli", "live", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_running(proc: subprocess.Popen, out, timeout_s: float = 60) -> None:
    """Until `live` has written a status to --out (it flushes at each) saying each of its devices delivers.
    What the test plays before that would not be heard, or be heard earlier in the stream than it means to."""
    def delivering(line: str) -> bool:
        try:
            msg = json.loads(line)
        except ValueError:
            return False  # a line still being written
        devices = msg.get("devices") or {}
        return msg.get("topic") == "status" and bool(devices) and all(d["state"] == "ok" for d in devices.values())

    def running() -> bool:
        assert proc.poll() is None, f"live exited {proc.returncode}: {proc.stderr.read()}"
        return out.exists() and any(delivering(line) for line in out.read_text().splitlines())

    wait_until(running, timeout_s, "a status of live in --out with every device delivering", every_s=0.05)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    """Three seconds of silence, synthesized speech, two seconds of silence (16 kHz mono wav)."""
    from actstream.views.demo import _espeak
    from actstream.common.errors import SourceError

    try:
        speech = _espeak("The quick brown fox jumps over the lazy dog, and then it runs away.")
    except SourceError as exc:
        pytest.skip(str(exc))
    x = np.concatenate([np.zeros(3 * RATE), 0.6 * speech, np.zeros(2 * RATE)])
    return write_wav(tmp_path_factory.mktemp("wav") / "speech.wav", x, RATE)


class Listener(threading.Thread):
    """A subscriber on its own thread, keeping every message and the seq bookkeeping."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        self.endpoint, self.msgs, self.tracker = endpoint, [], SeqTracker()

    def run(self) -> None:
        for msg in subscribe(self.endpoint, timeout_s=30, tracker=self.tracker):
            self.msgs.append(msg)
            if msg["topic"] == "status" and msg["state"] == "end":
                return

    def wait_for(self, cond, timeout_s: float, what: str) -> dict:
        """The first message meeting cond, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((m for m in list(self.msgs) if cond(m)), None)
            if found is not None:
                return found
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)


def test_live_microphone_hears_speech_through_pulseaudio(pulse, speech_wav, tmp_path):
    out = tmp_path / "o.jsonl"
    proc = start_live("--camera", "none", "--mic", "pulse", "--seconds", "11", "--out", str(out), "--publish", "none")
    wait_running(proc, out)
    pulse.play(speech_wav)  # 3 s silence + speech + 2 s silence, while the command runs
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    msgs = [json.loads(x) for x in out.read_text().splitlines()]
    speech = [m for m in msgs if m["topic"] == "speech"]
    # a label every step from the microphone's first block on (the default's audio heads wait for audio: the
    # first steps, before PulseAudio delivers, have none: 1.2 s here, 2.1 s with other tests on the two cores),
    # by the first status that says the microphone delivers; none missed after that
    first_ok = next(m["t"] for m in msgs if m["topic"] == "status" and m["devices"]["mic"]["state"] == "ok")
    assert msgs[-1]["steps"] == 110 and speech[0]["t"] <= first_ok <= 5.0, (speech[0]["t"], first_ok)
    assert [m["seq"] for m in speech] == list(range(len(speech)))
    assert np.allclose(np.diff([m["t"] for m in speech]), 0.1) and speech[-1]["t"] == pytest.approx(11.0)
    labels = [m["label"] for m in speech]
    assert "speech" in labels and labels[:20].count("speech") == 0  # silence first, then the speech is heard
    end = msgs[-1]
    assert end["topic"] == "status" and end["state"] == "end"
    assert end["devices"]["mic"]["state"] == "ok" and end["source"] == "live:mic=pulse"
    import jsonschema

    schema = json.loads((ROOT / "stream" / "schema.json").read_text())
    for m in msgs:
        jsonschema.validate(m, schema)


def test_live_camera_and_microphone_on_people_never_seen(pulse, tmp_path, port):
    """The default model live as its users run it, camera and microphone both open: the camera (MJPEG over
    HTTP, 25 fps) shows Weizmann's test person lena waving both hands, looped; the microphone (PulseAudio)
    hears 3 s of silence, 6 s of LibriSpeech test-other speech, 4 s of silence. A subscriber (`actstream
    listen`) gets all three heads every step; `action` is wave2 at most steps, `speech` is heard while the
    speech plays and not before."""
    import av

    clip = need_shared("video", "weizmann", "wave2", "lena_wave2.avi")
    utterance = need_shared("audio", "librispeech_test_other", "speech", "1688-142285-0000.wav")
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(c.streams.video[0])]
    voice = load_audio(utterance, RATE)
    wav = write_wav(tmp_path / "say.wav", np.concatenate([np.zeros(3 * RATE), voice[:6 * RATE], np.zeros(4 * RATE)]),
                    RATE)
    endpoint = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "live.jsonl"
    with MjpegServer(frames=frames) as cam:
        listen = subprocess.Popen([sys.executable, "-m", "actstream.cli", "listen", endpoint, "--until-end",
                                   "--format", "text", "--timeout", "60"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT)
        proc = start_live("--camera", cam.url, "--mic", "pulse", "--seconds", "12", "--publish", endpoint,
                          "--out", str(out))
        wait_running(proc, out)
        player = pulse.play(wav, wait=False)
        _, err = proc.communicate(timeout=90)
        text, _ = listen.communicate(timeout=30)
        player.wait(timeout=30)
    assert proc.returncode == 0, err
    msgs = [json.loads(x) for x in out.read_text().splitlines()]
    by = {t: [m for m in msgs if m["topic"] == t] for t in ("speech", "activity", "action")}
    # each head from its device's first delivery on (the HTTP camera connects within a second or two)
    assert len(by["action"]) >= 90 and len(by["speech"]) >= 90 and len(by["activity"]) == len(by["speech"])
    actions = [m["label"] for m in by["action"]]
    # wave2 at as many steps as a replay of the same loop gives (within 10 points: where the loop restarts she
    # stands at rest, which the model rightly calls `still`, and the camera's loop starts at another phase)
    from actstream.views.demo import write_media

    looped = write_media(tmp_path / "looped.mp4", (frames * 4)[:300], None)
    r = run_cli("replay", str(looped), "--out", str(tmp_path / "looped.jsonl"), "--publish", "none")
    assert r.returncode == 0, r.stderr
    theirs = [m["label"] for m in labels_of(tmp_path / "looped.jsonl", "action")]
    assert_acts_like_replay(actions, theirs, "wave2")
    heard = [m["t"] for m in by["speech"] if m["label"] == "speech"]
    assert heard and min(heard) > 3.0 and 0.3 * 60 < len(heard) <= 75  # the 6 s of speech, after the silence
    assert msgs[-1]["state"] == "end" and msgs[-1]["heads"] == ["speech", "activity", "action"]
    assert msgs[-1]["devices"]["camera"]["state"] == msgs[-1]["devices"]["mic"]["state"] == "ok"
    lines = text.splitlines()  # what the user sees in the terminal: a line per head per step, and the statuses
    assert sum(" action " in x for x in lines) >= len(by["action"]) - 10 and any(" status " in x for x in lines)
    print("\n".join(x for x in lines if x.lstrip().startswith(("6.00s", "12.00s"))))  # the README's excerpt
    print(Counter(actions).most_common(3), f"{len(actions)} action steps (the replayed loop: "
          f"{theirs.count('wave2')}/{len(theirs)} wave2); speech heard {len(heard) / 10:.1f} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_stops_cleanly(pulse, tmp_path, port, sig):
    """SIGTERM or SIGINT while running: the last status is published, --out is complete, exit 0."""
    endpoint = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "o.jsonl"
    listener = Listener(endpoint)
    listener.start()
    proc = start_live("--camera", "none", "--mic", "pulse", "--out", str(out), "--publish", endpoint)
    listener.wait_for(lambda m: m["topic"] == "speech" and m["seq"] >= 15, 60, "15 steps")
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    stop_s = time.monotonic() - sent
    listener.join(10)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[-1]["topic"] == "status" and lines[-1]["state"] == "end"
    assert listener.msgs[-1] == lines[-1]  # the subscriber got the last status too
    assert listener.tracker.missed == {}
    print(f"stopped {stop_s:.2f} s after {sig.name}")  # the figure the README quotes (pytest -s)


def test_camera_outage_while_audio_labels_keep_flowing(pulse, tmp_path, port, monkeypatch):
    """A hybrid model that knows which input each head needs (as the default does), on an HTTP camera and the
    pulse microphone. The camera goes away for a few seconds: the status says so, the audio head keeps its
    label every step, the visual head stops while the camera is gone and comes back with it."""
    from actstream.engines.bundle import ModelSpec, load_spec, save_model
    from actstream.engines.features import VideoFeatures

    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(name="hybrid-live", arch="hybrid", heads={"activity": ["a", "b"], "action": ["c", "d"]},
                     audio=load_spec("default").audio, video=VideoFeatures(), card={"version": 0},
                     head_inputs={"activity": ("audio",), "action": ("video",)})
    torch.manual_seed(0)  # untrained: what is checked is the path through the outage, not the labels
    save_model(spec, tmp_path / "hybrid", spec.new_audio_cnn(), spec.new_temporal())
    endpoint = f"tcp://127.0.0.1:{port}"
    listener = Listener(endpoint)
    listener.start()
    with MjpegServer() as cam:
        proc = start_live("--camera", cam.url, "--mic", "pulse", "--model", str(tmp_path / "hybrid"),
                          "--publish", endpoint, "--config", str(_config(tmp_path)))
        try:
            listener.wait_for(lambda m: m["topic"] == "action" and m["seq"] >= 10, 120, "labels before the outage")
            cam.gone.set()
            first = listener.wait_for(lambda m: m["topic"] == "status" and m["devices"]["camera"]["state"] != "ok",
                                      30, "a status saying the camera is down")
            listener.wait_for(lambda m: m["topic"] == "status" and m["devices"]["camera"]["state"] != "ok"
                              and m["seq"] >= first["seq"] + 2, 30, "two more statuses with the camera down")
            cam.gone.clear()
            listener.wait_for(lambda m: m["topic"] == "status" and m["devices"]["camera"]["state"] == "ok"
                              and m["devices"]["camera"]["reconnects"] >= 1, 30, "the camera back")
            listener.wait_for(lambda m: m["topic"] == "status" and m["devices"]["camera"]["reconnects"] >= 1
                              and m["heads"] == ["activity", "action"], 30, "the visual head back")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    listener.join(10)
    assert proc.returncode == 0, err
    msgs = listener.msgs
    act = [m for m in msgs if m["topic"] == "activity"]
    assert [m["seq"] for m in act] == list(range(len(act)))  # the audio head: a label every step it ticked
    # On a busy machine the scheduler skips a tick that came a whole step late (stream/scheduler.py: skipped,
    # never drifted; seen once with two other engineers' tests on the two cores): no head has that step. A
    # head stopped by the outage would miss its seconds; one missing a step the process ticked would show
    # it beside another head's label.
    gaps = [round(b["t"] - a["t"], 1) for a, b in zip(act, act[1:])]
    missed = {round(a["t"] + 0.1 * i, 1) for a, g in zip(act, gaps) for i in range(1, round(g * 10))}
    assert all(g <= 0.3 for g in gaps) and len(missed) <= 5, gaps
    assert not missed & {round(m["t"], 1) for m in msgs if m["topic"] == "action"}, missed
    # while the camera is down (from the first status that says so to the last), the visual head is silent
    down = [m for m in msgs if m["topic"] == "status" and m["devices"]["camera"]["state"] != "ok"
            and m["t"] > act[0]["t"]]
    assert down and all(m["devices"]["mic"]["state"] == "ok" for m in down)
    assert {m["devices"]["camera"]["state"] for m in down} <= {"lost", "stalled", "reconnecting"}
    # (the first such status may race the step it follows, which still had a fresh frame)
    assert len(down) >= 2 and all(m["heads"] == ["activity"] for m in down[1:])
    action_t = [m["t"] for m in msgs if m["topic"] == "action"]
    assert not [t for t in action_t if down[0]["t"] < t <= down[-1]["t"]]
    assert max(action_t) > down[-1]["t"]  # back with the camera


def _config(tmp_path):
    p = tmp_path / "live.toml"
    p.write_text("[live]\nstall_s = 0.5\n")
    return p


def test_late_joiner_gets_the_current_labels_at_once(pulse, port):
    """`actstream listen` started mid-stream: its first message per topic is the publisher's latest
    (seq well past 0), and what follows continues from it without a gap."""
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = start_live("--camera", "none", "--mic", "pulse", "--seconds", "12", "--publish", endpoint)
    try:
        # nobody is listening for the first seconds; then a subscriber joins
        probe = Listener(endpoint)
        probe.start()
        probe.wait_for(lambda m: m["topic"] == "speech" and m["seq"] >= 30, 60, "three seconds of steps")
        r = subprocess.run([sys.executable, "-m", "actstream.cli", "listen", endpoint, "--topic", "speech",
                            "--topic", "status", "--count", "6", "--timeout", "10"], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(x) for x in r.stdout.splitlines()]
    speech = [m for m in msgs if m["topic"] == "speech"]
    assert msgs[0]["topic"] in ("speech", "status") and speech[0]["seq"] >= 30
    assert {"speech", "status"} <= {m["topic"] for m in msgs[:2]}  # the welcome: the latest of each topic
    assert [m["seq"] for m in speech] == list(range(speech[0]["seq"], speech[0]["seq"] + len(speech)))


def test_microphone_lost_mid_stream_labels_keep_flowing(pulse, port):
    """The sound server dies mid-stream and comes back: the status says lost/reconnecting, then ok with the
    reconnect counted; the default model's audio heads pause while the microphone is away (no input, no
    label: `seq` has no gap) and label every step again once it is back."""
    endpoint = f"tcp://127.0.0.1:{port}"
    listener = Listener(endpoint)
    listener.start()
    proc = start_live("--camera", "none", "--mic", "pulse", "--publish", endpoint, "--config",
                      str(_config(pulse.folder)))
    try:
        listener.wait_for(lambda m: m["topic"] == "speech" and m["seq"] >= 10, 60, "labels before the fault")
        pulse.stop()
        listener.wait_for(lambda m: m["topic"] == "status" and m["devices"]["mic"]["state"] in ("lost", "reconnecting"),
                          30, "a status saying the microphone is away")
        pulse.start()
        back = listener.wait_for(lambda m: m["topic"] == "status" and m["devices"]["mic"]["state"] == "ok"
                                 and m["devices"]["mic"]["reconnects"] >= 1, 30, "the microphone back")
        listener.wait_for(lambda m: m["topic"] == "speech" and m["t"] > back["t"] + 0.5, 30, "labels again")
    finally:
        if pulse.pid() is None:
            pulse.start()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    listener.join(10)
    assert proc.returncode == 0, err
    speech = [m for m in listener.msgs if m["topic"] == "speech"]
    assert [m["seq"] for m in speech] == list(range(len(speech)))
    states = [m["devices"]["mic"]["state"] for m in listener.msgs if m["topic"] == "status"]
    away = [s for s in states if s not in ("ok", "starting")]  # starting: before the first block arrived
    assert away and set(away) <= {"lost", "reconnecting"} and states[-1] == "ok"
