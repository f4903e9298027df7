"""The pure per-step core: a frame, an audio window and a time in; class probabilities out.

No threads, sockets or devices: live capture, paced replay and fast replay all drive this same code,
and tests drive it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engines.bundle import Engines, ModelSpec
from stream.errors import EngineError

from .frontend import audio_window, preprocess_frame


@dataclass
class StageTimes:
    """Cumulative seconds per stage and step count, for status messages and the benchmark."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def mean_ms(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {k: round(v * 1000.0 / n, 3) for k, v in self.seconds.items()}


class Recognizer:
    """A stateful causal model: `step()` advances the LSTM one step, `reset()` clears its state.

    The state resets itself when the stream's continuity breaks: time going backwards, or a gap of more
    than `max_gap_s` between steps.
    """

    def __init__(self, spec: ModelSpec, engines: Engines, max_gap_s: float = 2.0):
        if not spec.causal:
            raise EngineError(f"model {spec.name} ({spec.arch}) is not causal: it can only run offline")
        self.spec = spec
        self.engines = engines
        self.max_gap_s = max_gap_s
        self.times = StageTimes()
        self._last_video: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        d = 1
        self._h = np.zeros((d, 1, self.spec.hidden), dtype=np.float32)
        self._c = np.zeros((d, 1, self.spec.hidden), dtype=np.float32)
        self._last_t: float | None = None
        self._last_video = None

    def step(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float) -> dict[str, np.ndarray]:
        """frame: BGR uint8 (H, W, 3) or None (no new frame: the last embedding is reused);
        audio: mono float32 samples ending at t (at least one window; shorter is padded) or None;
        t: media time in seconds. Returns head -> probabilities (float32, in spec.heads order)."""
        if self._last_t is not None and (t < self._last_t or t - self._last_t > self.max_gap_s):
            self.reset()
        self._last_t = t
        feeds: dict[str, np.ndarray] = {}
        clock = time.perf_counter
        if "audio" in self.spec.modalities:
            t0 = clock()
            if audio is None:
                audio = np.zeros(0, dtype=np.float32)
            mel = audio_window(audio, self.spec.audio)[None]
            t1 = clock()
            feeds["audio"] = self.engines.encoders["audio"].run({"logmel": mel})["embedding"][:, None, :]
            self.times.add("audio_frontend", t1 - t0)
            self.times.add("audio_cnn", clock() - t1)
        if "video" in self.spec.modalities:
            if frame is not None:
                t0 = clock()
                x = preprocess_frame(frame, self.spec.video)[None]
                t1 = clock()
                self._last_video = self.engines.encoders["video"].run({"image": x})["embedding"]
                self.times.add("preprocess", t1 - t0)
                self.times.add("video_cnn", clock() - t1)
            emb = self._last_video if self._last_video is not None else np.zeros((1, 1280), np.float32)
            feeds["video"] = emb[:, None, :]
        t0 = clock()
        out = self.engines.temporal.run({**feeds, "h0": self._h, "c0": self._c})
        self.times.add("lstm", clock() - t0)
        self.times.steps += 1
        self._h, self._c = out["hn"], out["cn"]
        return {h: out[h][0, -1] for h in self.spec.heads}


@dataclass
class HeadLabel:
    """The label shown for one head at one step. scores: label -> smoothed probability."""

    label: str
    score: float
    scores: dict[str, float]
    changed: bool


class _HeadPolicy:
    def __init__(self, classes: list[str], cfg, step_s: float):
        self.classes = classes
        self.cfg = cfg
        self.step_s = step_s
        self.reset()

    def reset(self) -> None:
        self.ema: np.ndarray | None = None
        self.current: int | None = None
        self.held_since = 0.0
        self.pending: int | None = None
        self.pending_steps = 0

    def update(self, probs: np.ndarray, t: float) -> HeadLabel:
        cfg = self.cfg
        p = np.asarray(probs, dtype=np.float64)
        self.ema = p if self.ema is None else cfg.smoothing * p + (1.0 - cfg.smoothing) * self.ema
        best = int(np.argmax(self.ema))
        changed = False
        if self.current is None:
            self.current, self.held_since, changed = best, t, True
        elif best == self.current:
            self.pending, self.pending_steps = None, 0
        elif self.ema[best] >= cfg.enter or self.ema[self.current] < cfg.exit:
            self.pending_steps = self.pending_steps + 1 if self.pending == best else 1
            self.pending = best
            held = t - self.held_since + 1e-9
            if self.pending_steps >= cfg.switch_steps and held * 1000.0 >= cfg.min_hold_ms:
                self.current, self.held_since, changed = best, t, True
                self.pending, self.pending_steps = None, 0
        else:
            self.pending, self.pending_steps = None, 0
        scores = {c: float(v) for c, v in zip(self.classes, self.ema)}
        return HeadLabel(self.classes[self.current], float(self.ema[self.current]), scores, changed)


class LabelPolicy:
    """Smoothing, hysteresis and minimum durations over a Recognizer's probabilities (one policy per head)."""

    def __init__(self, recognizer: Recognizer, cfg, step_s: float):
        self.recognizer = recognizer
        self.heads = {h: _HeadPolicy(c, cfg, step_s) for h, c in recognizer.spec.heads.items()}

    def reset(self) -> None:
        self.recognizer.reset()
        for h in self.heads.values():
            h.reset()

    def step(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float) -> dict[str, HeadLabel]:
        probs = self.recognizer.step(frame, audio, t)
        return {h: self.heads[h].update(probs[h], t) for h in self.heads}
