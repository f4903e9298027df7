"""The built-in demo sample: made here, from synthesized speech (espeak-ng), synthesized knocks and
generated frames, so no third-party recording is shipped."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from actstream.common.errors import SourceError
from actstream.views.mediafile import write_media

RATE = 16000
FPS = 25
SIZE = (320, 240)

# (start s, kind, text) — the truth of the sample, drawn into its frames too
SCRIPT = [
    (1.0, "speech", "Hello. This is act stream, listening in real time."),
    (5.5, "knock", ""),
    (8.5, "speech", "Speech and sounds become labels, published over zero M Q."),
]
DURATION = 14.0


def _espeak(text: str) -> np.ndarray:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise SourceError("espeak-ng not found: apt-get install espeak-ng (make demo installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
        from actstream.stream.sources import load_audio

        return load_audio(wav, RATE)


def _knocks(rng: np.random.Generator) -> np.ndarray:
    """Three knocks on a wooden door: short noise bursts through decaying low resonances."""
    out = np.zeros(int(1.6 * RATE), np.float32)
    t = np.arange(int(0.12 * RATE)) / RATE
    for i in range(3):
        body = sum(np.sin(2 * np.pi * f * t) * np.exp(-t * d) for f, d in ((180, 45), (410, 60), (950, 90)))
        click = rng.standard_normal(len(t)) * np.exp(-t * 400)
        k = (0.7 * body + 0.3 * click).astype(np.float32)
        s = int((0.1 + 0.35 * i) * RATE)
        out[s:s + len(k)] += k
    return out / np.abs(out).max() * 0.5


def _truth_at(t: float, spans: list[tuple[float, float, str]]) -> str:
    for a, b, kind in spans:
        if a <= t < b:
            return kind
    return "quiet"


def make_demo_sample(path: str | Path, seed: int = 0) -> Path:
    """Write the demo recording (H.264 video + AAC audio, 320x240, 25 fps, 14 s) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(int(DURATION * RATE)) * 10 ** (-60 / 20)).astype(np.float32)
    spans = []
    for start, kind, text in SCRIPT:
        clip = _espeak(text) * 0.6 if kind == "speech" else _knocks(rng)
        s = int(start * RATE)
        clip = clip[: len(audio) - s]
        audio[s:s + len(clip)] += clip
        spans.append((start, start + len(clip) / RATE, kind))
    np.clip(audio, -1, 1, out=audio)

    def frames():
        for i in range(int(DURATION * FPS)):
            t = i / FPS
            img = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
            kind = _truth_at(t, spans)
            colour = {"speech": (60, 180, 60), "knock": (40, 120, 230), "quiet": (120, 120, 120)}[kind]
            cx = int(160 + 110 * np.sin(2 * np.pi * t / 4.0))
            cv2.circle(img, (cx, 120), 30 + (12 if kind != "quiet" else 0), colour, -1)
            cv2.putText(img, f"{t:5.2f}s  {kind}", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
            yield img

    write_media(path, frames(), audio[:, None], RATE, FPS)
    (path.with_suffix(".truth.csv")).write_text(
        "start_s,end_s,label\n" + "".join(f"{a:.3f},{b:.3f},{k}\n" for a, b, k in spans))
    return path
