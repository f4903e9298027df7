"""The label policy: smoothing, hysteresis and minimum durations over a recognizer's probabilities, one
`HeadPolicy` per head of each stream (its memory lives in the stream's `StreamState.heads`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actstream.stream.encode import Inputs
from actstream.stream.recognizer import Recognizer, StreamState

Labels = list[tuple[float, dict[str, "HeadLabel"]]]


@dataclass
class HeadLabel:
    """The label shown for one head at one step. scores: label -> smoothed probability."""

    label: str
    score: float
    scores: dict[str, float]
    changed: bool


class HeadPolicy:
    """One head of one stream: the moving average of its probabilities and the label shown."""

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
    """The label policy over a recognizer, for its own stream and for any number of others.

    `advance_many` returns, per stream, the labels each of its steps produces as (time, labels) pairs: one pair
    per step for a causal model, and for a look-ahead model the pair of the step `lookahead` steps back (none at
    the start; `flush` gives the rest at the end). `delay_s` is how late each label is. `advance`,
    `advance_inputs`, `flush` and `reset` work on the recognizer's own stream (the N = 1 case).
    """

    def __init__(self, recognizer: Recognizer, cfg):
        self.recognizer = recognizer
        self.cfg = cfg
        self.delay_s = recognizer.delay_s
        recognizer.state.heads = self._heads()

    def _heads(self) -> dict[str, HeadPolicy]:
        return {h: HeadPolicy(c, self.cfg) for h, c in self.recognizer.spec.heads.items()}

    def new_state(self) -> StreamState:
        """A fresh stream: the recognizer's state with this policy's memory."""
        state = self.recognizer.new_state()
        state.heads = self._heads()
        return state

    @property
    def heads(self) -> dict[str, HeadPolicy]:
        """The own stream's head policies."""
        return self.recognizer.state.heads

    def reset(self) -> None:
        self.recognizer.reset()

    def label(self, pairs, state: StreamState | None = None) -> Labels:
        """Labels for (time, probabilities) pairs of one stream, in order: for the heads the probabilities have
        (a head whose input is missing at a step has none; its smoothing starts afresh when the input is back)."""
        heads = (self.recognizer.state if state is None else state).heads
        out = []
        for t, p in pairs:
            labels = {}
            for h, policy in heads.items():
                if h in p:
                    labels[h] = policy.update(p[h], t)
                else:
                    policy.reset()
            out.append((t, labels))
        return out

    def advance_many(self, items: list[tuple[StreamState, Inputs]]) -> list[list[Labels]]:
        """Per stream, per prepared step, the labels it produces."""
        produced = self.recognizer.advance_many(items)
        return [[self.label(pairs, state) for pairs in steps] for (state, _), steps in zip(items, produced)]

    def advance_inputs(self, inputs: Inputs) -> list[Labels]:
        """Per prepared step of the own stream, the labels it produces."""
        return self.advance_many([(self.recognizer.state, inputs)])[0]

    def advance(self, frame: np.ndarray | None, audio: np.ndarray | None, t: float,
                frame_t: float | None = None) -> Labels:
        return self.label(self.recognizer.advance(frame, audio, t, frame_t))

    def flush(self, state: StreamState | None = None) -> Labels:
        state = self.recognizer.state if state is None else state
        return self.label(self.recognizer.flush(state), state)
