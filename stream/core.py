"""The pure per-step core: a frame, an audio window and a time in; class probabilities out.

No threads, sockets or devices: live capture, paced replay and fast replay all drive this same code,
and tests drive it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engines.bundle import Engines, ModelSpec
from engines.archs import VIDEO_DIM, video_motion
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


def encode_step(spec: ModelSpec, engines: Engines, times: "StageTimes", frame, audio, last_video):
    """Run the encoders of one step: modality -> (1, D) embedding. Returns (embeddings, newest video embedding).
    Training computes its cached embeddings with this same function (engines/teach.py).
    (Video motion features, where the model uses them, are added by the caller, which holds their state.)"""
    out: dict[str, np.ndarray] = {}
    clock = time.perf_counter
    if "audio" in spec.modalities:
        t0 = clock()
        mel = audio_window(audio if audio is not None else np.zeros(0, np.float32), spec.audio)[None]
        t1 = clock()
        out["audio"] = engines.encoders["audio"].run({"logmel": mel})["embedding"]
        times.add("audio_frontend", t1 - t0)
        times.add("audio_cnn", clock() - t1)
    if "video" in spec.modalities:
        if frame is not None:
            t0 = clock()
            engine = engines.encoders["video"]
            # a GPU engine that preprocesses frames itself takes the BGR frame as it is (engines/torch_cuda.py)
            x = frame[None] if getattr(engine, "takes_frames", False) else preprocess_frame(frame, spec.video)[None]
            t1 = clock()
            last_video = engine.run({"image": x})["embedding"]
            times.add("preprocess", t1 - t0)
            times.add("video_cnn", clock() - t1)
        out["video"] = last_video if last_video is not None else np.zeros((1, VIDEO_DIM), np.float32)
    return out, last_video


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
        self._motion: np.ndarray | None = None

    def _keep_continuity(self, t: float) -> None:
        """Reset when the stream's continuity breaks: time going backwards, or a gap over max_gap_s."""
        if self._last_t is not None and (t < self._last_t or t - self._last_t > self.max_gap_s):
            self.reset()

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None,
                t: float) -> list[tuple[float, dict[str, np.ndarray]]]:
        """The recognizers' common interface: the (time, probabilities) pairs this step produces."""
        return [(t, self.step(frame, audio, t))]

    def flush(self) -> list[tuple[float, dict[str, np.ndarray]]]:
        """Nothing is held back by a causal model."""
        return []

    def step(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float) -> dict[str, np.ndarray]:
        """frame: BGR uint8 (H, W, 3) or None (no new frame: the last embedding is reused);
        audio: mono float32 samples ending at t (at least one window; shorter is padded) or None;
        t: media time in seconds. Returns head -> probabilities (float32, in spec.heads order)."""
        self._keep_continuity(t)
        self._last_t = t
        embs, self._last_video = encode_step(self.spec, self.engines, self.times, frame, audio, self._last_video)
        if self.spec.motion:
            embs["video"], self._motion = video_motion(embs["video"], self._motion)
        feeds = {m: e[:, None, :] for m, e in embs.items()}
        clock = time.perf_counter
        t0 = clock()
        out = self.engines.temporal.run({**feeds, "h0": self._h, "c0": self._c})
        self.times.add("lstm", clock() - t0)
        self.times.steps += 1
        self._h, self._c = out["hn"], out["cn"]
        return {h: out[h][0, -1] for h in self.spec.heads}

    def step_many(self, embeddings: dict[str, np.ndarray], ts: list[float]) -> list[dict[str, np.ndarray]]:
        """Advance the LSTM over consecutive steps whose embeddings are already computed (batched replay).

        embeddings: modality -> (T, D) float32; ts: the T step times in seconds. The LSTM state is carried
        through the steps in order, as T calls of step() would, and resets where step() would (a gap of more
        than max_gap_s, or time going backwards). Returns, per step, head -> probabilities."""
        results: list[dict[str, np.ndarray]] = []
        clock = time.perf_counter
        i, n = 0, len(ts)
        while i < n:
            self._keep_continuity(ts[i])
            j = i + 1
            while j < n and ts[j - 1] <= ts[j] <= ts[j - 1] + self.max_gap_s:
                j += 1
            feeds = {m: np.ascontiguousarray(e[None, i:j]) for m, e in embeddings.items()}
            if self.spec.motion:
                video, self._motion = video_motion(feeds["video"][0], self._motion)
                feeds["video"] = video[None]
            t0 = clock()
            out = self.engines.temporal.run({**feeds, "h0": self._h, "c0": self._c})
            self.times.add("lstm", clock() - t0)
            self._h, self._c = out["hn"], out["cn"]
            self._last_t = ts[j - 1]
            self.times.steps += j - i
            results += [{h: out[h][0, k] for h in self.spec.heads} for k in range(j - i)]
            i = j
        return results


class LookaheadRecognizer:
    """The CNN-BiLSTM for replay: the label for step k is computed at step k + lookahead, from a window of
    `context` past steps and `lookahead` future steps run through the BiLSTM. It never pretends to be causal:
    every label it gives is `delay_s` late, and live capture refuses it.
    """

    def __init__(self, spec: ModelSpec, engines: Engines, lookahead: int | None = None, context: int = 30,
                 step_s: float = 0.1):
        self.spec = spec
        self.engines = engines
        self.lookahead = spec.lookahead if lookahead is None else lookahead
        if self.lookahead < 1:
            raise EngineError(f"model {spec.name}: lookahead {self.lookahead} steps: a BiLSTM needs at least 1")
        self.context = context
        self.delay_s = self.lookahead * step_s
        self.times = StageTimes()
        self.reset()

    def reset(self) -> None:
        self._embs: list[dict[str, np.ndarray]] = []
        self._times: list[float] = []
        self._last_video = None
        self._motion: np.ndarray | None = None

    def _run(self, k: int) -> dict[str, np.ndarray]:
        """Probabilities for buffered step k from the window around it."""
        lo = max(0, k - self.context)
        hi = min(len(self._embs), k + self.lookahead + 1)
        feeds = {m: np.concatenate([e[m] for e in self._embs[lo:hi]])[None] for m in self.spec.modalities}
        h = np.zeros((2, 1, self.spec.hidden), np.float32)
        t0 = time.perf_counter()
        out = self.engines.temporal.run({**feeds, "h0": h, "c0": h})
        self.times.add("lstm", time.perf_counter() - t0)
        return {head: out[head][0, k - lo] for head in self.spec.heads}

    def advance(self, frame, audio, t: float) -> list[tuple[float, dict[str, np.ndarray]]]:
        """Buffer this step; return the (time, probabilities) of the step `lookahead` steps back, if any."""
        embs, self._last_video = encode_step(self.spec, self.engines, self.times, frame, audio, self._last_video)
        if self.spec.motion:
            embs["video"], self._motion = video_motion(embs["video"], self._motion)
        self._embs.append(embs)
        self._times.append(t)
        self.times.steps += 1
        k = len(self._embs) - 1 - self.lookahead
        out = [(self._times[k], self._run(k))] if k >= 0 else []
        if len(self._embs) > self.context + self.lookahead + 1:  # bounded: drop what no window needs any more
            self._embs.pop(0)
            self._times.pop(0)
        return out

    def flush(self) -> list[tuple[float, dict[str, np.ndarray]]]:
        """At the end of the stream: the last `lookahead` steps, with what future there is."""
        n = len(self._embs)
        out = [(self._times[k], self._run(k)) for k in range(max(0, n - self.lookahead), n)]
        self.reset()
        return out


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
    """Smoothing, hysteresis and minimum durations over a recognizer's probabilities (one policy per head).

    `advance` returns the labels produced by one step as (time, labels) pairs: one pair for a causal model,
    and for a look-ahead model the pair of the step `lookahead` steps back (none at the start; `flush` gives
    the rest at the end). `delay_s` is how late each label is.
    """

    def __init__(self, recognizer: "Recognizer | LookaheadRecognizer", cfg, step_s: float):
        self.recognizer = recognizer
        self.delay_s = getattr(recognizer, "delay_s", 0.0)
        self.heads = {h: _HeadPolicy(c, cfg, step_s) for h, c in recognizer.spec.heads.items()}

    def reset(self) -> None:
        self.recognizer.reset()
        for h in self.heads.values():
            h.reset()

    def step(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float) -> dict[str, HeadLabel]:
        """One step of a causal model: the labels at time t."""
        probs = self.recognizer.step(frame, audio, t)
        return {h: self.heads[h].update(probs[h], t) for h in self.heads}

    def label(self, pairs) -> list[tuple[float, dict[str, HeadLabel]]]:
        """Labels for (time, probabilities) pairs, in order (the batched replay feeds its steps here)."""
        return [(t, {h: self.heads[h].update(p[h], t) for h in self.heads}) for t, p in pairs]

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None,
                t: float) -> list[tuple[float, dict[str, HeadLabel]]]:
        return self.label(self.recognizer.advance(frame, audio, t))

    def flush(self) -> list[tuple[float, dict[str, HeadLabel]]]:
        return self.label(self.recognizer.flush())
