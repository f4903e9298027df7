"""The core: the snapshots of one step or of a batch of consecutive steps in, class probabilities and
labels out.

No sockets or devices: live capture, paced and fast replay, training, calibration and evaluation all drive
this same code (`Prepare` -> `encode` -> the recognizer's LSTM -> `LabelPolicy`), and tests drive it directly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from actstream.engines.bundle import Engines, ModelSpec
from actstream.engines.archs import VIDEO_DIM, stream_of, video_motion
from actstream.common.errors import EngineError

from actstream.stream.frontend import audio_window, grid_windows
from actstream.engines.features import preprocess_frame
from actstream.engines.flow import dense_flow, describe_flow, flow_window, small_gray
from actstream.stream.steps import Snapshot


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


@dataclass
class Inputs:
    """Encoder inputs of consecutive steps, made by `Prepare`. ts: step times (s); mels: (T, frames, n_mels)
    or None; images: (U, 3, size, size) preprocessed unique frames, or (U, H, W, 3) raw BGR frames for an
    engine that takes frames, or None; frame_of: per step, the row of `images`, or -1 when the step has no new
    frame (none yet, or the same as the previous step's: the last embedding holds); grays: per row of
    `images`, the small grey frame the motion stream's flow is computed on (models with `flow`), else None,
    and gray_ts the frames' own times (s); present: (T, streams) 1.0 where the step has that input stream (a
    frame, an audio window), in spec.presence order, for models told their inputs' presence, else None."""

    ts: list[float]
    mels: np.ndarray | None
    images: np.ndarray | None
    frame_of: list[int]
    grays: list[np.ndarray] | None = None
    gray_ts: list[float] | None = None
    present: np.ndarray | None = None


def _batch_logmel(windows: list[np.ndarray], spec, step: int) -> np.ndarray:
    """The audio CNN inputs of consecutive steps from their audio windows: (T, frames, n_mels), equal to
    [audio_window(w) for w in windows]; on the shared frame grid (frontend.grid_windows) where it applies."""
    need = spec.window_samples
    if len(windows) == 1 or step % spec.hop or step > need or not all(len(w) >= need for w in windows):
        return np.stack([audio_window(w, spec) for w in windows])
    joined = np.concatenate([windows[0][-need:]] + [w[-step:] for w in windows[1:]])
    return grid_windows(joined, spec, step, len(windows))


class Prepare:
    """The front end of the step path: snapshots of consecutive steps -> Inputs (log-mel windows, frames
    resized and normalized). It remembers the last frame, so a frame repeated by a step shorter than the frame
    interval is encoded once. pool: an executor to resize frames on (fast replay with cores to spare)."""

    def __init__(self, spec: ModelSpec, engines: Engines, step_ms: int, times: StageTimes, pool=None):
        self.spec = spec
        self.use_audio, self.use_video = "audio" in spec.modalities, "video" in spec.modalities
        # a GPU engine that preprocesses frames itself gets them raw (engines/torch_cuda.py)
        self.raw = self.use_video and "video" in engines.encoders and engines.encoders["video"].takes_frames
        self.step_samples = int(round(step_ms * spec.audio.sample_rate / 1000)) if spec.audio else 0
        self.times = times
        self.pool = pool if self.use_video and not self.raw else None
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the last frame (a new stream starts)."""
        self._previous: np.ndarray | None = None

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        x = preprocess_frame(frame, self.spec.video)
        with self._lock:
            self.times.add("preprocess", time.perf_counter() - t0)
        return x

    def __call__(self, snaps) -> Inputs:
        ts, windows, images, frame_of, present = [], [], [], [], []
        grays = [] if self.spec.flow is not None and self.use_video else None
        gray_ts = [] if grays is not None else None
        for snap in snaps:
            ts.append(snap.t)
            present.append([snap.frame is not None if m == "video" else snap.audio is not None
                            for m in self.spec.presence])
            if self.use_audio:
                windows.append(snap.audio if snap.audio is not None else np.zeros(0, np.float32))
            if self.use_video:
                frame = snap.frame
                if frame is None:
                    frame_of.append(-1)
                elif self._previous is not None and np.array_equal(frame, self._previous):
                    frame_of.append(frame_of[-1] if frame_of else -1)
                else:
                    self._previous = frame.copy()
                    if grays is not None:
                        t0 = time.perf_counter()
                        grays.append(small_gray(self._previous, self.spec.flow))
                        gray_ts.append(snap.t if snap.frame_t is None else snap.frame_t)
                        self.times.add("flow", time.perf_counter() - t0)
                    images.append(self._previous if self.raw else self.pool.submit(self._frame, self._previous)
                                  if self.pool is not None else self._frame(self._previous))
                    frame_of.append(len(images) - 1)
        if self.pool is not None:
            images = [f.result() for f in images]
        mels = None
        if windows:
            t0 = time.perf_counter()
            mels = _batch_logmel(windows, self.spec.audio, self.step_samples)
            self.times.add("audio_frontend", time.perf_counter() - t0)
        return Inputs(ts, mels, np.stack(images) if images else None, frame_of, grays, gray_ts,
                      np.asarray(present, np.float32) if self.spec.presence else None)


@dataclass
class VideoState:
    """What the video encoders carry from step to step: the newest embedding (a step without a new frame
    reuses it), the newest small grey frame and its time (the flow's previous frame), and the newest flow
    descriptor (held, like the embedding, on a step without a new frame)."""

    last: np.ndarray | None = None
    gray: np.ndarray | None = None
    gray_t: float = 0.0
    flow: np.ndarray | None = None


def flow_descriptors(spec: ModelSpec, inputs: Inputs, state: VideoState) -> np.ndarray:
    """Per step, the flow descriptor between its frame and the previous step's frame, its speeds measured
    by the frames' own times (at 25 fps, 100 ms steps take frames 80 or 120 ms apart): (T, pair_dim)."""
    rows, seen = [], -1
    zero = np.zeros((1, spec.flow.pair_dim), np.float32)
    for i in inputs.frame_of:
        if i >= 0 and i != seen:
            seen, gray, t = i, inputs.grays[i], inputs.gray_ts[i]
            if state.gray is not None and state.gray.shape == gray.shape and t > state.gray_t:
                state.flow = describe_flow(dense_flow(state.gray, gray), t - state.gray_t, spec.flow)[None]
            else:  # the first frame, or the picture changed size: no motion yet
                state.flow = zero
            state.gray, state.gray_t = gray, t
        rows.append(state.flow if state.flow is not None else zero)
    return np.concatenate(rows)


def encode(spec: ModelSpec, engines: Engines, times: StageTimes, inputs: Inputs,
           state: VideoState) -> dict[str, np.ndarray]:
    """The encoders over prepared steps: LSTM input name -> (T, D) embeddings; `state` carries the video
    encoders' memory to the next call (and `present`, the steps' input streams, for models told it). Training computes its cached embeddings with this same function
    (training/teach.py). Motion features over several steps (the running mean of video embeddings, the flow
    window), where the model uses them, are added by the recognizer."""
    clock = time.perf_counter
    embs: dict[str, np.ndarray] = {}
    if inputs.mels is not None:
        t0 = clock()
        embs["audio"] = engines.encoders["audio"].run({"logmel": inputs.mels})["embedding"]
        times.add("audio_cnn", clock() - t0)
    if "video" in spec.modalities:
        video = None
        if inputs.images is not None:
            t0 = clock()
            engine = engines.encoders["video"]
            n = len(inputs.images)
            chunk = engine.preferred_batch or n
            video = np.concatenate([engine.run({"image": inputs.images[i:i + chunk]})["embedding"]
                                    for i in range(0, n, chunk)])
            times.add("video_cnn", clock() - t0)
        rows = []
        for i in inputs.frame_of:
            if i >= 0:
                state.last = video[i:i + 1]
            rows.append(state.last if state.last is not None else np.zeros((1, VIDEO_DIM), np.float32))
        embs["video"] = np.concatenate(rows)
    if spec.flow is not None:
        t0 = clock()
        embs["flow"] = flow_descriptors(spec, inputs, state)
        times.add("flow", clock() - t0)
    if inputs.present is not None:
        embs["present"] = inputs.present
    return embs


Pairs = list[tuple[float, dict[str, np.ndarray]]]


class Recognizer(Protocol):
    """What the step loop drives: prepared steps in, per step the (time, probabilities) pairs it produces
    (one for a causal model; for a look-ahead model the pair of the step `lookahead` back, none at first).

    `advance_inputs` is the one core every path uses; `advance` is one step of it."""

    spec: ModelSpec
    engines: Engines
    times: StageTimes
    delay_s: float  # how late each label is (0 for a causal model)
    step_ms: int

    def reset(self) -> None: ...

    def advance_inputs(self, inputs: Inputs) -> list[Pairs]: ...

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float,
                frame_t: float | None = None) -> Pairs: ...

    def flush(self) -> Pairs: ...


class _Core:
    """What both recognizers share: the front end for one step, the encoders, the motion features."""

    spec: ModelSpec
    engines: Engines
    times: StageTimes
    step_ms: int

    def _init_core(self) -> None:
        self.times = StageTimes()
        self._prepare = Prepare(self.spec, self.engines, self.step_ms, self.times)

    def _reset_core(self) -> None:
        self._video = VideoState()
        self._motion: np.ndarray | None = None
        self._flow_history: np.ndarray | None = None
        self._prepare.reset()

    def _encode(self, inputs: Inputs) -> dict[str, np.ndarray]:
        return self._with_motion(encode(self.spec, self.engines, self.times, inputs, self._video))

    def _with_motion(self, embs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The LSTM's inputs from the encoders' embeddings: the motion features over several steps where the
        model uses them (video embedding minus its running mean; the window of flow descriptors)."""
        embs = {**embs}
        if self.spec.motion:
            embs["video"], self._motion = video_motion(embs["video"], self._motion)
        if self.spec.flow is not None:
            embs["flow"], self._flow_history = flow_window(embs["flow"], self._flow_history, self.spec.flow)
        return embs

    def _published(self, probs: dict[str, np.ndarray], present: np.ndarray | None) -> dict[str, np.ndarray]:
        """The heads whose input streams the step has (every head for a model not told its inputs' presence):
        a silent video gives no audio labels, a camera that drops out stops the visual ones."""
        if present is None:
            return probs
        have = {m for m, p in zip(self.spec.presence, present) if p > 0}
        return {h: p for h, p in probs.items() if set(self.spec.inputs_of(h)) <= have}

    def _presence(self, embeddings: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """embeddings with `present` for a model told it. Where the caller has not said (calibration's or a
        test's precomputed embeddings), a stream is present when its inputs are given; a missing one's inputs
        are zeros, marked missing."""
        if not self.spec.presence or "present" in embeddings:
            return embeddings
        out = dict(embeddings)
        present = np.ones((n, len(self.spec.presence)), np.float32)
        for i, stream in enumerate(self.spec.presence):
            parts = [m for m in self.spec.dims if stream_of(m) == stream]
            if not all(m in embeddings for m in parts):
                present[:, i] = 0.0
                out.update({m: np.zeros((n, self.spec.dims[m]), np.float32) for m in parts if m not in embeddings})
        out["present"] = present
        return out

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float,
                frame_t: float | None = None) -> Pairs:
        """One step: frame BGR uint8 (H, W, 3) or None (no new frame: the last embedding is reused); audio:
        mono float32 samples ending at t (at least one window; shorter is padded) or None; t: media time (s);
        frame_t: the frame's own time (s; None: t), which the motion stream measures speeds by."""
        return self.advance_inputs(self._prepare([Snapshot(t, frame, audio, 0.0, frame_t)]))[0]


class CausalRecognizer(_Core):
    """A stateful causal model: the LSTM carries its state from step to step; `reset()` clears it.

    The state resets itself when the stream's continuity breaks: time going backwards, or a gap of more
    than `max_gap_s` between steps.
    """

    delay_s = 0.0

    def __init__(self, spec: ModelSpec, engines: Engines, max_gap_s: float = 2.0, step_ms: int | None = None):
        if not spec.causal:
            raise EngineError(f"model {spec.name} ({spec.arch}) is not causal: it can only run offline")
        self.spec = spec
        self.engines = engines
        self.max_gap_s = max_gap_s
        self.step_ms = step_ms or spec.step_ms
        self._init_core()
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, self.spec.hidden), dtype=np.float32)
        self._c = np.zeros((1, 1, self.spec.hidden), dtype=np.float32)
        self._last_t: float | None = None
        self._reset_core()

    def _keep_continuity(self, t: float) -> None:
        """Reset when the stream's continuity breaks: time going backwards, or a gap over max_gap_s."""
        if self._last_t is not None and (t < self._last_t or t - self._last_t > self.max_gap_s):
            self.reset()

    def advance_inputs(self, inputs: Inputs) -> list[Pairs]:
        return [[(t, p)] for t, p in zip(inputs.ts, self.lstm(self._encode(inputs), inputs.ts))]

    def advance_embeddings(self, embeddings: dict[str, np.ndarray], ts: list[float]) -> Pairs:
        """Steps whose encoder embeddings are already computed (calibration compares encoders this way)."""
        return list(zip(ts, self.lstm(self._with_motion(embeddings), ts)))

    def flush(self) -> Pairs:
        """Nothing is held back by a causal model."""
        return []

    def lstm(self, embeddings: dict[str, np.ndarray], ts: list[float]) -> list[dict[str, np.ndarray]]:
        """Advance the LSTM over consecutive steps whose embeddings are computed (motion features included).

        embeddings: modality -> (T, D) float32; ts: the T step times in seconds. The state is carried through
        the steps in order and resets on a gap of more than max_gap_s or time going backwards. Returns, per
        step, head -> probabilities (float32, in spec.heads order)."""
        results: list[dict[str, np.ndarray]] = []
        clock = time.perf_counter
        i, n = 0, len(ts)
        embeddings = self._presence(embeddings, n)
        present = embeddings.get("present")
        while i < n:
            self._keep_continuity(ts[i])
            j = i + 1
            while j < n and ts[j - 1] <= ts[j] <= ts[j - 1] + self.max_gap_s:
                j += 1
            feeds = {m: np.ascontiguousarray(e[None, i:j]) for m, e in embeddings.items()}
            t0 = clock()
            out = self.engines.temporal.run({**feeds, "h0": self._h, "c0": self._c})
            self.times.add("lstm", clock() - t0)
            self._h, self._c = out["hn"], out["cn"]
            self._last_t = ts[j - 1]
            self.times.steps += j - i
            results += [self._published({h: out[h][0, k] for h in self.spec.heads},
                                        present[i + k] if present is not None else None) for k in range(j - i)]
            i = j
        return results


class LookaheadRecognizer(_Core):
    """The CNN-BiLSTM for replay: the label for step k is computed at step k + lookahead, from a window of
    `context` past steps and `lookahead` future steps run through the BiLSTM. It never pretends to be causal:
    every label it gives is `delay_s` late, and live capture refuses it.
    """

    def __init__(self, spec: ModelSpec, engines: Engines, lookahead: int | None = None, context: int = 30,
                 step_ms: int | None = None):
        self.spec = spec
        self.engines = engines
        self.lookahead = spec.lookahead if lookahead is None else lookahead
        if self.lookahead < 1:
            raise EngineError(f"model {spec.name}: lookahead {self.lookahead} steps: a BiLSTM needs at least 1")
        self.context = context
        self.step_ms = step_ms or spec.step_ms
        self.delay_s = self.lookahead * self.step_ms / 1000.0
        self._init_core()
        self.reset()

    def reset(self) -> None:
        self._embs: list[dict[str, np.ndarray]] = []
        self._times: list[float] = []
        self._reset_core()

    def _run(self, k: int) -> dict[str, np.ndarray]:
        """Probabilities for buffered step k from the window around it."""
        lo = max(0, k - self.context)
        hi = min(len(self._embs), k + self.lookahead + 1)
        feeds = {m: np.concatenate([e[m] for e in self._embs[lo:hi]])[None] for m in self._embs[k]}
        h = np.zeros((2, 1, self.spec.hidden), np.float32)
        t0 = time.perf_counter()
        out = self.engines.temporal.run({**feeds, "h0": h, "c0": h})
        self.times.add("lstm", time.perf_counter() - t0)
        present = self._embs[k].get("present")
        return self._published({head: out[head][0, k - lo] for head in self.spec.heads},
                               present[0] if present is not None else None)

    def advance_inputs(self, inputs: Inputs) -> list[Pairs]:
        """Buffer each step; per step, the (time, probabilities) of the step `lookahead` steps back, if any."""
        embs = self._presence(self._encode(inputs), len(inputs.ts))
        produced = []
        for i, t in enumerate(inputs.ts):
            self._embs.append({m: e[i:i + 1] for m, e in embs.items()})
            self._times.append(t)
            self.times.steps += 1
            k = len(self._embs) - 1 - self.lookahead
            produced.append([(self._times[k], self._run(k))] if k >= 0 else [])
            if len(self._embs) > self.context + self.lookahead + 1:  # bounded: drop what no window needs
                self._embs.pop(0)
                self._times.pop(0)
        return produced

    def flush(self) -> Pairs:
        """At the end of the stream: the last `lookahead` steps, with what future there is."""
        n = len(self._embs)
        out = [(self._times[k], self._run(k)) for k in range(max(0, n - self.lookahead), n)]
        self.reset()
        return out


def recognizer_for(spec: ModelSpec, engines: Engines, step_ms: int, lookahead: int | None = None) -> Recognizer:
    """The recognizer a model folder calls for: causal, or look-ahead for a BiLSTM."""
    if spec.causal:
        return CausalRecognizer(spec, engines, step_ms=step_ms)
    return LookaheadRecognizer(spec, engines, lookahead, step_ms=step_ms)


@dataclass
class HeadLabel:
    """The label shown for one head at one step. scores: label -> smoothed probability."""

    label: str
    score: float
    scores: dict[str, float]
    changed: bool


class _HeadPolicy:
    def __init__(self, classes: list[str], cfg):
        self.classes = classes
        self.cfg = cfg
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

    def __init__(self, recognizer: Recognizer, cfg):
        self.recognizer = recognizer
        self.delay_s = recognizer.delay_s
        self.heads = {h: _HeadPolicy(c, cfg) for h, c in recognizer.spec.heads.items()}

    def reset(self) -> None:
        self.recognizer.reset()
        for h in self.heads.values():
            h.reset()

    def label(self, pairs) -> list[tuple[float, dict[str, HeadLabel]]]:
        """Labels for (time, probabilities) pairs, in order: for the heads the probabilities have (a head
        whose input is missing at a step has none; its smoothing starts afresh when the input is back)."""
        out = []
        for t, p in pairs:
            labels = {}
            for h, policy in self.heads.items():
                if h in p:
                    labels[h] = policy.update(p[h], t)
                else:
                    policy.reset()
            out.append((t, labels))
        return out

    def advance_inputs(self, inputs: Inputs) -> list[list[tuple[float, dict[str, HeadLabel]]]]:
        """Per prepared step, the labels it produces."""
        return [self.label(pairs) for pairs in self.recognizer.advance_inputs(inputs)]

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float,
                frame_t: float | None = None) -> list[tuple[float, dict[str, HeadLabel]]]:
        return self.label(self.recognizer.advance(frame, audio, t, frame_t))

    def flush(self) -> list[tuple[float, dict[str, HeadLabel]]]:
        return self.label(self.recognizer.flush())
