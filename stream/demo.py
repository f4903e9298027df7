"""The built-in demo sample: made here, from synthesized speech (espeak-ng), synthesized knocks and
generated frames, so no third-party recording is shipped."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from actstream.common.errors import SourceError

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


class MediaWriter:
    """Frames and audio encoded into a media file as they come, so memory does not grow with the length; written
    under a temporary name and renamed at close() (atomic). A `with` block that raises removes it instead.

    size: (width, height) of every frame (even numbers for yuv420p) or None for audio alone; audio_rate: Hz or
    None for video alone; audio_layout: "mono" or "stereo"."""

    def __init__(self, path: str | Path, size: tuple[int, int] | None, fps: int = FPS, audio_rate: int | None = None,
                 audio_layout: str = "mono", vcodec: str = "libx264", acodec: str = "aac"):
        import av

        self.path = Path(path)
        self.tmp = self.path.with_name(f".tmp.{self.path.name}")
        self._out = av.open(str(self.tmp), "w", format=None if self.path.suffix else "mp4")
        self._vs = self._as = self._resampler = None
        self.frames = self.samples = 0
        self.fps = fps
        try:
            if size is not None:
                self._vs = self._out.add_stream(vcodec, rate=fps)
                self._vs.width, self._vs.height = size
                if vcodec in ("libx264", "mpeg4", "h264"):
                    self._vs.pix_fmt = "yuv420p"
                if vcodec == "libx264":
                    self._vs.options = {"crf": "28", "preset": "veryfast"}
            if audio_rate is not None:
                self._as = self._out.add_stream(acodec, rate=audio_rate, layout=audio_layout)
                frame_size = self._as.codec_context.frame_size or 1024
                self._resampler = av.AudioResampler(format="fltp", layout=audio_layout, rate=audio_rate,
                                                    frame_size=frame_size)
        except BaseException:
            self._out.close()
            self.tmp.unlink(missing_ok=True)
            raise

    def frame(self, img: np.ndarray) -> None:
        """One BGR frame, (H, W, 3) uint8, at the next 1/fps step."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
        self._out.mux(self._vs.encode(frame))
        self.frames += 1

    def audio(self, planar: np.ndarray | None) -> None:
        """Float audio, (channels, samples) in the writer's layout, following what came before; None flushes."""
        import av

        if planar is None:
            self._encode_audio(None)
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar, np.float32), format="fltp",
                                           layout=self._as.layout.name)
        frame.sample_rate = self._as.rate
        self._encode_audio(frame)

    def audio_frame(self, frame) -> None:
        """A decoded av.AudioFrame of any format, layout or size: converted to the writer's, then encoded."""
        self._encode_audio(frame)

    def _encode_audio(self, frame) -> None:
        for out in self._resampler.resample(frame):
            out.pts, out.time_base = self.samples, Fraction(1, self._as.rate)
            self.samples += out.samples
            self._out.mux(self._as.encode(out))

    def close(self) -> Path:
        if self._out is None:
            return self.path
        try:
            if self._vs is not None:
                self._out.mux(self._vs.encode())
            if self._as is not None:
                self._encode_audio(None)
                self._out.mux(self._as.encode())
        finally:
            out, self._out = self._out, None
            out.close()
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> MediaWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_media(path: str | Path, frames, audio: np.ndarray | None, rate: int = RATE, fps: int = FPS,
                vcodec: str = "libx264", acodec: str = "aac") -> Path:
    """Write BGR frames (an iterable of (H, W, 3) uint8, encoded as they come) and/or float audio (samples,
    channels) to a media file, atomically. Used for the demo sample and by the tests to make their own small
    recordings."""
    frames = iter(frames) if frames is not None else None
    first = next(frames, None) if frames is not None else None
    size = (first.shape[1], first.shape[0]) if first is not None else None
    layout = None if audio is None else ("mono" if audio.shape[1] == 1 else "stereo")
    with MediaWriter(path, size, fps, rate if audio is not None else None, layout or "mono", vcodec, acodec) as w:
        if first is not None:
            for img in itertools.chain([first], frames):
                w.frame(img)
        if audio is not None:
            planar = np.ascontiguousarray(audio.T.astype(np.float32))
            for i in range(0, planar.shape[1], 1024):
                w.audio(planar[:, i:i + 1024])
    return Path(path)


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
