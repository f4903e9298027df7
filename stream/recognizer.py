"""The recognizer: a model's encoders and temporal network over the steps of one stream or of many.

Everything a stream carries from step to step lives in one `StreamState` (its front end's last frame, its
video encoders' memory, the running mean of its video embeddings, its flow window, its LSTM state row and
continuity clock, its label policy's memory), so many streams share one recognizer (one set of engines) and
stay apart: `advance_many` runs each encoder once and the LSTM once over the streams' rows, and scatters the
new state rows back. One stream is the N = 1 case of the same code (`advance`, `advance_inputs`, `flush` and
`reset` work on the recognizer's own `state`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actstream.common.errors import EngineError
from actstream.engines.archs import stream_of, video_motion
from actstream.engines.bundle import Engines, ModelSpec
from actstream.engines.flow import flow_window
from actstream.stream.encode import Inputs, Prepare, StageTimes, VideoState, encode_many
from actstream.stream.steps import Snapshot

Pairs = list[tuple[float, dict[str, np.ndarray]]]


@dataclass
class StreamState:
    """What one stream carries from step to step: `prepare` (the front end, which remembers the last frame),
    `video` (the video encoders' memory), `motion` (the running mean of video embeddings), `flow_history` (the
    last descriptors of the flow window), `h`/`c` (its LSTM state row, (layers, 1, hidden)), `last_t` (the
    continuity clock: the time of its last step), `heads` (the label policy's memory per head, set by
    policy.LabelPolicy) and, for a look-ahead model, the buffered steps `embs`/`times`. `reset()` forgets all
    of it (a new stream, or its continuity broke)."""

    prepare: Prepare
    hidden: int
    layers: int = 1
    video: VideoState = field(default_factory=VideoState)
    motion: np.ndarray | None = None
    flow_history: np.ndarray | None = None
    h: np.ndarray | None = None
    c: np.ndarray | None = None
    last_t: float | None = None
    heads: dict[str, Any] = field(default_factory=dict)
    embs: list[dict[str, np.ndarray]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset_model(self) -> None:
        """Forget what the model carries (its continuity broke); the label policy's memory stays."""
        self.video = VideoState()
        self.motion = self.flow_history = None
        self.h = np.zeros((self.layers, 1, self.hidden), np.float32)
        self.c = np.zeros((self.layers, 1, self.hidden), np.float32)
        self.last_t = None
        self.embs, self.times = [], []
        self.prepare.reset()

    def reset(self) -> None:
        self.reset_model()
        for policy in self.heads.values():
            policy.reset()


class Recognizer:
    """What both recognizers share: the stream states, the encoders, the motion features, the heads a step
    publishes. Subclasses define `delay_s`, `_temporal_many` and `_flush_state`."""

    spec: ModelSpec
    engines: Engines
    times: StageTimes
    step_ms: int
    delay_s: float
    layers: int = 1

    def _init_core(self) -> None:
        self.times = StageTimes()
        self.state = self.new_state()

    def new_state(self) -> StreamState:
        """A fresh stream's state (its front end included)."""
        return StreamState(Prepare(self.spec, self.engines, self.step_ms, self.times), self.spec.hidden, self.layers)

    # one stream: the recognizer's own state
    def reset(self) -> None:
        self.state.reset()

    def advance_inputs(self, inputs: Inputs) -> list[Pairs]:
        return self.advance_many([(self.state, inputs)])[0]

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float,
                frame_t: float | None = None) -> Pairs:
        """One step of the recognizer's own stream: frame BGR uint8 (H, W, 3) or None (no new frame: the last
        embedding is reused); audio: mono float32 samples ending at t (at least one window; shorter is padded)
        or None; t: media time (s); frame_t: the frame's own time (s; None: t), which the motion stream
        measures speeds by."""
        return self.advance_inputs(self.state.prepare([Snapshot(t, frame, audio, 0.0, frame_t)]))[0]

    def flush(self, state: StreamState | None = None) -> Pairs:
        return self._flush_state(self.state if state is None else state)

    # many streams
    def advance_many(self, items: list[tuple[StreamState, Inputs]]) -> list[list[Pairs]]:
        """The prepared steps of several streams (each its own state and consecutive steps): per stream, per
        step, the (time, probabilities) pairs it produces. Each encoder runs once over all the streams."""
        embs = encode_many(self.spec, self.engines, self.times, [(inputs, s.video) for s, inputs in items])
        produced = self._temporal_many([(s, self._with_motion(s, e), inputs.ts)
                                        for (s, inputs), e in zip(items, embs)])
        return [[[pair] for pair in pairs] for pairs in produced]  # a causal model: one pair per step

    def _with_motion(self, state: StreamState, embs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The LSTM's inputs from the encoders' embeddings: the motion features over several steps where the
        model uses them (video embedding minus its running mean; the window of flow descriptors)."""
        embs = {**embs}
        if self.spec.motion:
            embs["video"], state.motion = video_motion(embs["video"], state.motion)
        if self.spec.flow is not None:
            embs["flow"], state.flow_history = flow_window(embs["flow"], state.flow_history, self.spec.flow)
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


class CausalRecognizer(Recognizer):
    """A stateful causal model: the LSTM carries each stream's state from step to step.

    A stream's state resets itself when its continuity breaks: time going backwards, or a gap of more than
    `max_gap_s` between steps.
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

    def _breaks(self, state: StreamState, t: float) -> bool:
        """Whether step time t breaks the stream's continuity: time going backwards, or a gap over max_gap_s."""
        return state.last_t is not None and (t < state.last_t or t - state.last_t > self.max_gap_s)

    def advance_embeddings(self, embeddings: dict[str, np.ndarray], ts: list[float]) -> Pairs:
        """Steps of the recognizer's own stream whose encoder embeddings are already computed (calibration
        compares encoders this way)."""
        state = self.state
        return list(zip(ts, self.lstm(self._with_motion(state, embeddings), ts)))

    def _flush_state(self, state: StreamState) -> Pairs:
        """Nothing is held back by a causal model."""
        return []

    def lstm(self, embeddings: dict[str, np.ndarray], ts: list[float],
             state: StreamState | None = None) -> list[dict[str, np.ndarray]]:
        """Advance one stream's LSTM (the recognizer's own, or `state`) over consecutive steps whose embeddings
        are computed (motion features included). embeddings: modality -> (T, D) float32; ts: the T step times in
        seconds. Returns, per step, head -> probabilities (float32, in spec.heads order)."""
        state = self.state if state is None else state
        return [p for _, p in self._temporal_many([(state, embeddings, ts)])[0]]

    def _temporal_many(self, items: list[tuple[StreamState, dict[str, np.ndarray], list[float]]]) -> list[Pairs]:
        """Per stream, its steps' (time, probabilities). The streams whose steps run without a break and number
        the same go through the LSTM in one run, their state rows stacked (the engine permitting); a stream
        whose steps break continuity is run in pieces, its state reset at each break."""
        out: list[Pairs] = [[] for _ in items]
        groups: dict[int, list[int]] = {}
        batched = self.engines.temporal.stream_batch
        for k, (state, embs, ts) in enumerate(items):
            if not ts:
                continue
            if self._breaks(state, ts[0]):
                state.reset_model()
            whole = all(ts[j - 1] <= ts[j] <= ts[j - 1] + self.max_gap_s for j in range(1, len(ts)))
            if whole and batched:
                groups.setdefault(len(ts), []).append(k)
            else:
                out[k] = self._run_pieces(*items[k])
        for rows in groups.values():
            for k, pairs in zip(rows, self._run_rows([items[k] for k in rows])):
                out[k] = pairs
        return out

    def _run_pieces(self, state: StreamState, embeddings: dict[str, np.ndarray], ts: list[float]) -> Pairs:
        """One stream's steps through the LSTM in pieces without a break (its state reset at each break)."""
        out: Pairs = []
        i, n = 0, len(ts)
        embeddings = self._presence(embeddings, n)
        while i < n:
            if self._breaks(state, ts[i]):
                state.reset_model()
            j = i + 1
            while j < n and ts[j - 1] <= ts[j] <= ts[j - 1] + self.max_gap_s:
                j += 1
            piece = {m: e[i:j] for m, e in embeddings.items()}
            out += self._run_rows([(state, piece, ts[i:j])])[0]
            i = j
        return out

    def _run_rows(self, rows: list[tuple[StreamState, dict[str, np.ndarray], list[float]]]) -> list[Pairs]:
        """Streams with the same number of steps, none breaking its continuity: one LSTM run, each stream a
        row of the batch with its own state row."""
        n = len(rows[0][2])
        embs = [self._presence(e, n) for _, e, _ in rows]
        feeds = {m: np.ascontiguousarray(embs[0][m][None] if len(rows) == 1 else np.stack([e[m] for e in embs]))
                 for m in embs[0]}
        h = rows[0][0].h if len(rows) == 1 else np.concatenate([s.h for s, _, _ in rows], axis=1)
        c = rows[0][0].c if len(rows) == 1 else np.concatenate([s.c for s, _, _ in rows], axis=1)
        t0 = time.perf_counter()
        out = self.engines.temporal.run({**feeds, "h0": h, "c0": c})
        self.times.add("lstm", time.perf_counter() - t0)
        result = []
        for r, (state, _, ts) in enumerate(rows):
            state.h, state.c = out["hn"][:, r:r + 1], out["cn"][:, r:r + 1]
            state.last_t = ts[-1]
            present = embs[r].get("present")
            result.append([(t, self._published({h: out[h][r, k] for h in self.spec.heads},
                                               present[k] if present is not None else None))
                           for k, t in enumerate(ts)])
        self.times.steps += n * len(rows)
        return result


class LookaheadRecognizer(Recognizer):
    """The CNN-BiLSTM for replay: the label for step k is computed at step k + lookahead, from a window of
    `context` past steps and `lookahead` future steps run through the BiLSTM. It never pretends to be causal:
    every label it gives is `delay_s` late, and live capture and serving refuse it.
    """

    layers = 2

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

    def _run(self, state: StreamState, k: int) -> dict[str, np.ndarray]:
        """Probabilities for buffered step k from the window around it."""
        lo = max(0, k - self.context)
        hi = min(len(state.embs), k + self.lookahead + 1)
        feeds = {m: np.concatenate([e[m] for e in state.embs[lo:hi]])[None] for m in state.embs[k]}
        h = np.zeros((2, 1, self.spec.hidden), np.float32)
        t0 = time.perf_counter()
        out = self.engines.temporal.run({**feeds, "h0": h, "c0": h})
        self.times.add("lstm", time.perf_counter() - t0)
        present = state.embs[k].get("present")
        return self._published({head: out[head][0, k - lo] for head in self.spec.heads},
                               present[0] if present is not None else None)

    def _temporal_many(self, items) -> list[Pairs]:
        """Buffer each step; per step, the (time, probabilities) of the step `lookahead` steps back, if any."""
        return [self._advance_one(state, embs, ts) for state, embs, ts in items]

    def _advance_one(self, state: StreamState, embs: dict[str, np.ndarray], ts: list[float]) -> list[Pairs]:
        embs = self._presence(embs, len(ts))
        produced = []
        for i, t in enumerate(ts):
            state.embs.append({m: e[i:i + 1] for m, e in embs.items()})
            state.times.append(t)
            self.times.steps += 1
            k = len(state.embs) - 1 - self.lookahead
            produced.append([(state.times[k], self._run(state, k))] if k >= 0 else [])
            if len(state.embs) > self.context + self.lookahead + 1:  # bounded: drop what no window needs
                state.embs.pop(0)
                state.times.pop(0)
        return produced

    def advance_many(self, items: list[tuple[StreamState, Inputs]]) -> list[list[Pairs]]:
        embs = encode_many(self.spec, self.engines, self.times, [(inputs, s.video) for s, inputs in items])
        return [self._advance_one(s, self._with_motion(s, e), inputs.ts) for (s, inputs), e in zip(items, embs)]

    def _flush_state(self, state: StreamState) -> Pairs:
        """At the end of the stream: the last `lookahead` steps, with what future there is."""
        n = len(state.embs)
        out = [(state.times[k], self._run(state, k)) for k in range(max(0, n - self.lookahead), n)]
        state.reset_model()
        return out




def recognizer_for(spec: ModelSpec, engines: Engines, step_ms: int, lookahead: int | None = None) -> Recognizer:
    """The recognizer a model folder calls for: causal, or look-ahead for a BiLSTM."""
    if spec.causal:
        return CausalRecognizer(spec, engines, step_ms=step_ms)
    return LookaheadRecognizer(spec, engines, lookahead, step_ms=step_ms)
