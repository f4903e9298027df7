"""The live path: a capture thread on OpenCV's VideoCapture (here opened on a file name, which OpenCV treats
like a camera URL), the ring buffer, and the step loop on the wall clock."""

import json
import time

import torch

from actstream.engines.bundle import ModelSpec, save_model
from actstream.engines.features import VideoFeatures
from tests.conftest import run_cli


def test_live_camera_path_runs_on_the_wall_clock(tmp_path, media, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(name="video-test", arch="video_lstm", heads={"activity": ["still", "moving"]},
                     video=VideoFeatures(), card={"version": 0})
    torch.manual_seed(0)
    save_model(spec, tmp_path / "video", None, spec.new_temporal())
    out = tmp_path / "o.jsonl"
    started = time.time()
    r = run_cli("live", "--camera", str(media["video"]), "--mic", "none", "--seconds", "1.5",
                "--model", str(tmp_path / "video"), "--out", str(out), "--publish", "none")
    ended = time.time()
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(x) for x in out.read_text().splitlines()]
    act = [m for m in msgs if m["topic"] == "activity"]
    assert [m["seq"] for m in act] == list(range(15))
    assert msgs[0]["source"].startswith("live:camera=")
    end = msgs[-1]
    assert end["topic"] == "status" and end["state"] == "end" and end["clock"] == "wall"
    # wall is the Unix time the frame used was captured: inside this run, never going back, and at most the
    # frame interval plus a step behind the step's own time on the run's clock
    walls = [m["wall"] for m in act]
    assert all(started <= w <= ended for w in walls) and walls == sorted(walls)
    assert 0 <= end["latency_ms"]["p50"] <= end["latency_ms"]["max"] < 1000


def test_live_refuses_a_camera_that_does_not_open(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(name="video-test", arch="video_lstm", heads={"activity": ["a", "b"]}, video=VideoFeatures())
    save_model(spec, tmp_path / "video", None, spec.new_temporal())
    r = run_cli("live", "--camera", str(tmp_path / "no-such-camera.mp4"), "--mic", "none", "--seconds", "1",
                "--model", str(tmp_path / "video"), "--publish", "none")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot be opened" in r.stderr and "actstream devices" in r.stderr


def test_devices_lists_both_kinds():
    r = run_cli("devices")
    assert r.returncode == 0
    assert "microphones (sounddevice):" in r.stdout and "cameras (OpenCV" in r.stdout
