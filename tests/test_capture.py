"""The live capture classes on real device paths: a PulseAudio null sink as the microphone (sounddevice's
`pulse` device), an MJPEG stream over HTTP on loopback as the camera (OpenCV's VideoCapture). No mocks:
faults are made in the devices themselves (the server stalls, goes away, is killed)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from actstream.stream.capture import Backoff, CameraCapture, MicCapture
from actstream.stream.devices import redact, resolve_camera
from actstream.common.errors import SourceError
from tests.conftest import run_cli, wait_until
from tests.livekit import MjpegServer, write_wav

RATE = 16000


def _fresh_portaudio():
    """PortAudio lists ALSA's pulse device only if a server answered when it was initialized."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()
    return sd


def wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def test_microphone_records_what_is_played_into_the_sink(pulse, tmp_path):
    _fresh_portaudio()
    t = np.arange(int(1.5 * RATE)) / RATE
    wav = write_wav(tmp_path / "a440.wav", 0.5 * np.sin(2 * np.pi * 440 * t), RATE)
    mic = MicCapture("pulse", RATE, ring_s=5.0, block_ms=20)
    mic.start()
    try:
        start = mic.ring.written
        pulse.play(wav)  # returns when paplay has handed the last sample to the server

        def tone_ended():  # the recording holds the tone and 0.1 s of the silence after it: its tail is in
            got = mic.ring.read(mic.ring.written, mic.ring.written - start)
            loud = np.flatnonzero(np.abs(got) > 0.05)
            return (got,) if len(loud) and len(got) - loud[-1] > RATE // 10 else None

        (got,) = wait_until(tone_ended, 10.0, "the end of the tone in the recording")
    finally:
        mic.close()
    loud = got[np.abs(got) > 0.05]
    assert len(loud) > RATE  # at least a second of the tone arrived
    assert abs(dominant_hz(got, RATE) - 440) < 5
    assert 0.4 < np.abs(got).max() < 0.6  # the level played, through the pulse device
    assert mic.health()["state"] == "stopped" and mic.health()["reconnects"] == 0


def test_microphone_selected_by_index_and_listed(pulse):
    """`--mic` takes a PortAudio index as well as a name; `actstream devices` lists the microphone."""
    sd = _fresh_portaudio()
    index = next(i for i, d in enumerate(sd.query_devices()) if d["name"] == "pulse" and d["max_input_channels"])
    mic = MicCapture(str(index), RATE, ring_s=5.0, block_ms=20)
    mic.start()
    try:
        wait_for(lambda: mic.state == "ok" and mic.ring.written > RATE // 10, 10.0, "audio from the indexed device")
    finally:
        mic.close()
    r = run_cli("devices")
    assert r.returncode == 0 and f"  {index}: pulse (" in r.stdout


def test_microphone_overflow_is_counted(pulse):
    """PortAudio reports a device overflow in the callback's status; the capture counts each one and the
    count reaches the status message. The stream is real; the overflow flag is PortAudio's own
    (a PulseAudio source buffers through any stall, so it cannot be made to overflow here)."""
    sd = _fresh_portaudio()
    mic = MicCapture("pulse", RATE, ring_s=5.0, block_ms=20)
    mic.start()
    try:
        wait_for(lambda: mic.state == "ok", 10.0, "audio flowing")
        block = np.zeros((320, 1), np.float32)
        for _ in range(3):
            mic._callback(block, 320, None, sd.CallbackFlags(2))  # paInputOverflow, as PortAudio passes it
        health = mic.health()
    finally:
        mic.close()
    assert health["overruns"] == mic.ring.overruns == 3 and health["state"] == "ok"


def test_microphone_survives_a_stalled_process(pulse):
    """Hold the GIL for 3 s so no callback can run (a process stall): PulseAudio buffers the input and
    delivers it late, or the stream stops and is reopened; either way audio flows again, and late audio is
    neither counted as an overrun nor lost."""
    _fresh_portaudio()
    mic = MicCapture("pulse", RATE, ring_s=10.0, block_ms=5, stall_s=1.0, backoff=Backoff(0.1, 0.5))
    mic.start()
    old = sys.getswitchinterval()
    try:
        wait_for(lambda: mic.state == "ok", 10.0, "audio flowing")
        before, t0 = mic.ring.written, time.monotonic()
        sys.setswitchinterval(5.0)  # the busy loop below keeps the GIL for 3 s
        end = time.perf_counter() + 3.0
        while time.perf_counter() < end:
            pass
        sys.setswitchinterval(old)
        wait_for(lambda: mic.state == "ok" and mic.ring.written - before > 4 * RATE, 15.0, "audio after the stall")
        health, elapsed, got = mic.health(), time.monotonic() - t0, mic.ring.written - before
    finally:
        sys.setswitchinterval(old)
        mic.close()
    assert health["overruns"] == 0
    if health["reconnects"] == 0:  # buffered through: nothing was lost
        assert got / RATE > elapsed - 0.5


def test_microphone_lost_and_back(pulse):
    """The PulseAudio server is killed (the microphone vanishes) and restarted: the capture says lost,
    retries with backoff, and records again."""
    _fresh_portaudio()
    mic = MicCapture("pulse", RATE, ring_s=5.0, block_ms=20, stall_s=0.5, backoff=Backoff(0.1, 0.5))
    mic.start()
    try:
        wait_for(lambda: mic.ring.written > RATE // 4, 5.0, "audio before the fault")
        pulse.stop()
        wait_for(lambda: mic.state in ("lost", "reconnecting"), 10.0, "the microphone to be reported lost")
        lost_at = mic.ring.written
        pulse.start()
        wait_for(lambda: mic.state == "ok", 20.0, "the microphone to come back")
        wait_for(lambda: mic.ring.written > lost_at + RATE // 4, 5.0, "audio after the fault")
        health = mic.health()
    finally:
        mic.close()
    assert health["state"] == "ok" and health["reconnects"] >= 1
    assert "gave no audio" in health["problem"] or "cannot be opened" in health["problem"]


def test_camera_reads_an_mjpeg_stream_over_http():
    with MjpegServer() as cam:
        url = cam.url.replace("http://", "http://viewer:hunter2@")  # IP cameras often take credentials
        cap = CameraCapture(url, ring_capacity=4, start_wall=time.time())
        cap.start()
        try:
            wait_for(lambda: cap.ring.written >= 10, 10.0, "10 frames")
            frame, t, wall = cap.ring.latest()
        finally:
            cap.close()
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
    assert frame[:, :, 0].max() == 255  # the white bar of the test pattern survived JPEG
    assert cap.health()["stalls"] == 0 and cap.health()["reconnects"] == 0
    assert "hunter2" not in cap.device and cap.device.startswith("http://***@127.0.0.1:")


def test_camera_read_stall_is_caught_by_the_watchdog():
    """The server keeps the connection open and sends nothing: read() blocks. The watchdog notices after
    stall_s, abandons the blocked reader, reconnects, and frames flow again."""
    with MjpegServer() as cam:
        cap = CameraCapture(cam.url, ring_capacity=4, start_wall=time.time(), stall_s=0.5, backoff=Backoff(0.1, 0.5))
        cap.start()
        try:
            wait_for(lambda: cap.ring.written >= 5, 10.0, "frames before the stall")
            cam.stalled.set()
            wait_for(lambda: cap.stalls >= 1, 10.0, "the watchdog to see the stall")
            assert not cap.fresh()
            before = cap.ring.written
            cam.stalled.clear()
            wait_for(lambda: cap.state == "ok" and cap.ring.written > before + 5, 15.0, "frames after the stall")
            health = cap.health()
        finally:
            cap.close()
    assert health["stalls"] >= 1 and health["reconnects"] >= 1
    assert "read() stalled" in health["problem"]


def test_camera_that_disappears_is_reconnected_with_backoff():
    with MjpegServer() as cam:
        cap = CameraCapture(cam.url, ring_capacity=4, start_wall=time.time(), stall_s=0.5, backoff=Backoff(0.1, 0.4))
        cap.start()
        try:
            wait_for(lambda: cap.ring.written >= 5, 10.0, "frames before the camera goes away")
            cam.gone.set()
            wait_for(lambda: cap.reconnects >= 3, 20.0, "several failed reconnects while it is gone")
            assert cap.state in ("lost", "reconnecting", "stalled")
            before = cap.ring.written
            cam.gone.clear()
            wait_for(lambda: cap.state == "ok" and cap.ring.written > before + 5, 20.0, "frames after it came back")
        finally:
            cap.close()
    assert cap.backoff.next == cap.backoff.first  # reset after the camera came back


def test_camera_that_never_opens_is_a_clear_error(port):
    cap = CameraCapture(f"http://127.0.0.1:{port}/nothing.mjpg", ring_capacity=4, start_wall=time.time(),
                        open_timeout_s=5.0)
    with pytest.raises(SourceError, match="cannot be opened|did not give a frame"):
        cap.start()
    cap.close()


def test_backoff_doubles_up_to_the_cap_and_resets():
    b = Backoff(0.25, 1.0)
    assert [b.take() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    b.reset()
    assert b.take() == 0.25


def test_camera_selection_by_index_path_url_and_name(tmp_path):
    sysfs = tmp_path / "sysfs"
    assert resolve_camera("2", sysfs) == 2
    assert resolve_camera("http://cam.local/video.mjpg", sysfs) == "http://cam.local/video.mjpg"
    assert resolve_camera("rtsp://10.0.0.5:554/stream", sysfs) == "rtsp://10.0.0.5:554/stream"
    assert resolve_camera("/dev/video0", sysfs) == "/dev/video0"
    assert redact("rtsp://admin:secret@10.0.0.5:554/live") == "rtsp://***@10.0.0.5:554/live"
    with pytest.raises(SourceError, match="no camera named 'logitech'"):
        resolve_camera("logitech", sysfs)
    # by name: the part of the name the V4L2 driver reports in sysfs (a stand-in /dev and sysfs here)
    dev = tmp_path / "dev"
    dev.mkdir()
    for n, name in ((0, "Integrated Camera: Integrated C"), (2, "HD Pro Webcam C920")):
        (dev / f"video{n}").touch()
        (sysfs / f"video{n}").mkdir(parents=True)
        (sysfs / f"video{n}" / "name").write_text(name + "\n")
    assert resolve_camera("c920", sysfs, dev) == 2 and resolve_camera("integrated", sysfs, dev) == 0
    with pytest.raises(SourceError, match="cameras: 0: Integrated Camera: Integrated C, 2: HD Pro Webcam C920"):
        resolve_camera("logitech", sysfs, dev)
