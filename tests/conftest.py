"""Shared fixtures: small recordings the tests make themselves, free ports, the shared data folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actstream.views.demo import write_media

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ACTSTREAM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def labels_of(path: Path, topic: str = "activity") -> list[dict]:
    """The messages of one topic in a labels file (`--out`: a JSON object a line)."""
    return [m for m in map(json.loads, path.read_text().splitlines()) if m["topic"] == topic]


def assert_acts_like_replay(actions: list[str], theirs: list[str], label: str, slack: float = 0.1) -> None:
    """A live or recorded run's action labels against a replay of its source: `label` is the most common in both,
    and the run gives it at as large a share of its steps as the replay, within `slack`."""
    assert max(set(theirs), key=theirs.count) == label == max(set(actions), key=actions.count), actions
    assert actions.count(label) / len(actions) >= theirs.count(label) / len(theirs) - slack, (actions, theirs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `actstream` command in a child process."""
    return subprocess.run([sys.executable, "-m", "actstream.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)


def wait_until(cond, timeout_s: float, what: str, every_s: float = 0.02):
    """Poll cond() until it returns something true, and return that; AssertionError naming `what` after
    timeout_s. Every wait of a test is on a condition with a deadline: a machine shared with other work can
    make anything take longer, never make a fixed sleep enough."""
    import time

    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
    return value


def tone_and_noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Audio with a voiced-like harmonic burst in the middle and quiet noise around it: (samples, channels)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = rng.standard_normal(n) * 0.003
    mid = (t > seconds * 0.3) & (t < seconds * 0.7)
    f0 = 140 + 30 * np.sin(2 * np.pi * 3 * t)
    x[mid] += 0.3 * sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate)[mid] / k for k in range(1, 8))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def moving_frames(n: int, w: int = 160, h: int = 120):
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, (i * 3) % w] = 255
        img[h // 2, :, 1] = (i * 7) % 256
        yield img


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Small recordings of every kind replay accepts: video+audio mp4 and mkv, stereo 44.1 kHz wav, flac,
    video alone, and a subtitle file with neither audio nor video."""
    d = tmp_path_factory.mktemp("media")
    out = {
        "wav": write_media(d / "stereo44k.wav", None, tone_and_noise(3.0, 44100, 2), 44100, acodec="pcm_s16le"),
        "flac": write_media(d / "mono8k.flac", None, tone_and_noise(2.0, 8000, 1), 8000, acodec="flac"),
        "mp4": write_media(d / "av.mp4", moving_frames(75), tone_and_noise(3.0, 48000, 2), 48000),
        "mkv": write_media(d / "av.mkv", moving_frames(50, 176, 144), tone_and_noise(2.0, 16000, 1), 16000),
        "video": write_media(d / "video_only.mp4", moving_frames(50), None),
    }
    srt = d / "subtitles.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    out["neither"] = srt
    corrupt = d / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    out["corrupt"] = corrupt
    return out


@pytest.fixture(scope="session")
def audio_model(tmp_path_factory) -> Path:
    """An audio-only model (audio_lstm) with the default's trained audio CNN and heads, and a seeded, untrained
    LSTM: for what a model that never reads video does (its labels mean nothing)."""
    import torch

    from actstream.engines.bundle import ModelSpec, load_spec, load_torch_modules, save_model

    base = load_spec("default")
    audio_cnn, _ = load_torch_modules(base)
    spec = ModelSpec(name="audio-only", arch="audio_lstm", heads={h: base.heads[h] for h in ("speech", "activity")},
                     audio=base.audio, card={"version": 0})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("audio_model") / "audio-only"
    save_model(spec, folder, audio_cnn, spec.new_temporal())
    return folder


@pytest.fixture
def port() -> int:
    return free_port()


def need_shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (the shared data folder ../shared/data is absent)")
    return p


@pytest.fixture(scope="session")
def pulse(tmp_path_factory):
    """A PulseAudio server with a null sink (tests/livekit.py), started for this test session; child processes
    and this one's sounddevice reach it through PULSE_SERVER. Skips only when PulseAudio cannot run here."""
    from tests.livekit import PulseServer

    reason = PulseServer.missing()
    if reason:
        pytest.skip(reason)
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"PulseAudio cannot run here: {exc}")
    saved = {k: os.environ.get(k) for k in ("PULSE_SERVER", "PULSE_RUNTIME_PATH")}
    os.environ.update({k: server.env[k] for k in saved})
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
