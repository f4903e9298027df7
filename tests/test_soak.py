"""Soak: a long paced replay (`replay --realtime`) with a subscriber. Zero sequence gaps, resident memory
growth under 5 % from the end of warm-up to the end, steady steps per second.

    ACTSTREAM_SOAK_S=1800 .venv/bin/python -m pytest -m slow -s tests/test_soak.py   # the 30-minute run

ACTSTREAM_SOAK_S sets the length in seconds (default 1800); the figures are printed as one JSON line and,
with ACTSTREAM_SOAK_REPORT=FILE, written there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from actstream.stream.client import SeqTracker, subscribe
from actstream.views.demo import write_media
from tests.conftest import ROOT, tone_and_noise


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_soak_paced_replay_with_a_subscriber(tmp_path, port):
    seconds = float(os.environ.get("ACTSTREAM_SOAK_S", 1800))
    rate = 16000
    chunk = tone_and_noise(10.0, rate, 1)  # speech-like burst and quiet noise, every 10 s
    audio = np.tile(chunk, (int(np.ceil(seconds / 10.0)), 1))[: int(seconds * rate)]
    media = write_media(tmp_path / "soak.wav", None, audio, rate, acodec="pcm_s16le")
    del audio
    endpoint = f"tcp://127.0.0.1:{port}"
    tracker = SeqTracker()
    statuses: list[dict] = []
    counts = {"speech": 0, "activity": 0, "status": 0}

    def listen():
        for msg in subscribe(endpoint, timeout_s=60, tracker=tracker):
            counts[msg["topic"]] = counts.get(msg["topic"], 0) + 1
            if msg["topic"] == "status":
                statuses.append({k: msg.get(k) for k in ("t", "state", "steps", "steps_per_s", "latency_ms", "drops")})
                if msg["state"] == "end":
                    return

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    proc = subprocess.Popen([sys.executable, "-m", "actstream.cli", "replay", str(media), "--realtime",
                             "--publish", endpoint, "--wait-subscriber", "30"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    warmup = min(60.0, seconds * 0.2)
    samples = []
    started = time.monotonic()
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        try:
            samples.append((elapsed, rss_kib(proc.pid)))
        except (OSError, RuntimeError):
            break
        time.sleep(1.0)
    err = proc.stderr.read()
    proc.wait()
    th.join(60)
    assert proc.returncode == 0, err
    after_warmup = [r for t, r in samples if t >= warmup]
    rss0, rss1 = after_warmup[0], after_warmup[-2] if len(after_warmup) > 1 else after_warmup[-1]
    rates = [s["steps_per_s"] for s in statuses if s["state"] == "running"][1:]
    p99 = [s["latency_ms"]["p99"] for s in statuses if s["latency_ms"]]
    figures = {"seconds": seconds, "steps": statuses[-1]["steps"], "messages": counts,
               "seq_missed": tracker.missed, "repeats": tracker.repeats,
               "rss_kib_after_warmup": rss0, "rss_kib_end": rss1, "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 2),
               "steps_per_s_min": min(rates), "steps_per_s_max": max(rates),
               "latency_p99_ms_max": max(p99) if p99 else None, "drops_end": statuses[-1]["drops"]}
    print(json.dumps(figures))
    if os.environ.get("ACTSTREAM_SOAK_REPORT"):
        with open(os.environ["ACTSTREAM_SOAK_REPORT"], "w") as fh:
            json.dump(figures, fh, indent=2)
    assert tracker.missed == {}
    assert counts["speech"] == statuses[-1]["steps"] == int(round(seconds * 10))
    assert figures["rss_growth_pct"] < 5.0
    assert 9.0 <= min(rates) and max(rates) <= 11.0  # 10 steps per second, every second of the run
