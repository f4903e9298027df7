"""The step loop: at each step time, read a Snapshot from the source, run the core, publish the labels.

Clocks: a virtual clock (fast replay: steps run back to back, `wall` is the virtual time) and the wall clock
(paced replay and live: step k is released at start + k * step). The same loop drives all three.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .core import LabelPolicy
from .publish import Publisher

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    steps: int = 0
    media_s: float = 0.0
    elapsed_s: float = 0.0
    messages: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def x_realtime(self) -> float:
        return self.media_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


class StepLoop:
    """source: FileSource or LiveSource; policy: LabelPolicy; publisher: Publisher;
    step_s: step length in seconds; realtime: pace on the wall clock (always true for a live source);
    status_every_s: status interval in stream seconds; max_seconds: stop after this much stream time (0 = no
    limit); virtual_epoch: Unix time of t = 0 on the virtual clock."""

    def __init__(self, source, policy: LabelPolicy, publisher: Publisher, step_s: float, realtime: bool,
                 status_every_s: float = 1.0, max_seconds: float = 0.0, virtual_epoch: float = 0.0,
                 backend: str = "onnxruntime"):
        self.source = source
        self.policy = policy
        self.publisher = publisher
        self.step_ms = int(round(step_s * 1000))
        self.realtime = realtime or source.live
        self.status_every = max(1, int(round(status_every_s * 1000)) // self.step_ms)
        self.max_steps = int(round(max_seconds * 1000)) // self.step_ms if max_seconds else 0
        self.virtual_epoch = virtual_epoch
        self.backend = backend
        self.on_step = None  # optional callable(Snapshot) after each step's labels are published
        self.stop_event = threading.Event()
        self._latencies: list[float] = []

    def _status(self, state: str, t: float, wall: float, k: int, interval_steps: int, interval_s: float) -> None:
        extra: dict = {"state": state, "steps": k, "drops": self.source.drops(), "backend": self.backend,
                       "clock": "wall" if self.realtime else "virtual", "step_ms": self.step_ms}
        if hasattr(self.source, "health"):  # live devices: ok / stalled / lost / reconnecting, with counts
            extra["devices"] = self.source.health()
        if self.publisher.bus_overflows:  # a subscriber's queue hit the high-water mark: ZeroMQ dropped for it
            extra["bus_overflows"] = dict(self.publisher.bus_overflows)
        if self.realtime:
            lat = np.asarray(self._latencies) * 1000.0
            extra["steps_per_s"] = interval_steps / interval_s if interval_s > 0 else 0.0
            extra["latency_ms"] = ({"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                    "max": float(lat.max())} if len(lat) else None)
            extra["stage_ms"] = self.policy.recognizer.times.mean_ms()
        else:  # on the virtual clock, figures are in stream time so that replays are byte-identical
            extra["steps_per_s"] = 1000.0 / self.step_ms
            extra["latency_ms"] = None
        self._latencies.clear()
        self.publisher.publish("status", t, wall, state, None, {}, **extra)

    def run(self) -> RunSummary:
        started = time.perf_counter()
        start_wall = time.time()
        step_s = self.step_ms / 1000.0
        k = 0
        t = 0.0
        wall = self.virtual_epoch
        last_status_k, last_status_clock = 0, time.perf_counter()
        while not self.stop_event.is_set():
            if self.max_steps and k >= self.max_steps:
                break
            k += 1
            t = k * self.step_ms / 1000.0
            if self.source.live:
                self._sleep_until(start_wall + t)
                snap = self.source.snapshot(t)
            else:
                snap = self.source.snapshot(t)  # decode ahead, then release on the pacer's clock
                if snap is not None and self.realtime:
                    self._sleep_until(start_wall + t)
            if snap is None:
                k -= 1
                t = k * step_s
                break
            if self.source.live:
                wall = snap.wall
            elif self.realtime:
                wall = time.time()
            else:
                wall = self.virtual_epoch + t
            self._publish_labels(self.policy.advance(snap.frame, snap.audio, t), wall)
            if self.on_step is not None:  # e.g. the --show window: the frame of this step
                self.on_step(snap)
            if self.realtime:
                self._latencies.append(time.time() - wall)
            if k % self.status_every == 0:
                now = time.perf_counter()
                self._status("running", t, wall, k, k - last_status_k, now - last_status_clock)
                last_status_k, last_status_clock = k, now
        self._publish_labels(self.policy.flush(), wall)
        now = time.perf_counter()
        self._status("end", t, wall if self.realtime or self.source.live else self.virtual_epoch + t, k,
                     k - last_status_k, now - last_status_clock)
        return RunSummary(steps=k, media_s=t, elapsed_s=time.perf_counter() - started,
                          messages=self.publisher.sent, stage_ms=self.policy.recognizer.times.mean_ms(),
                          drops=self.source.drops())

    def _publish_labels(self, produced, wall: float) -> None:
        extra = {"delay_s": self.policy.delay_s} if self.policy.delay_s else {}
        for t_label, labels in produced:
            for head, lab in labels.items():
                self.publisher.publish(head, t_label, wall, lab.label, lab.score, lab.scores, changed=lab.changed,
                                       **extra)

    def _sleep_until(self, wall_target: float) -> None:
        while not self.stop_event.is_set():
            delay = wall_target - time.time()
            if delay <= 0:
                return
            self.stop_event.wait(min(delay, 0.05))
