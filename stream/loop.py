"""The step loop: walk the source's steps (stream/steps.py), run the core, publish the labels and status.

Clocks: a virtual clock (fast replay: steps run back to back, `wall` is the virtual time) and the wall clock
(paced replay and live: step k is released at start + k * step). The same loop drives all three.

Fast replay of a causal model may batch: `batch_steps` consecutive steps go through the front end and the
encoders together, prepared on a worker thread `prefetch` batches ahead while this thread runs the encoders
on the previous batch; the LSTM still advances step by step in order, so the label policy and the publisher
see exactly the sequence the step-by-step loop gives them (probabilities differ by float rounding between batch
sizes only, well under 1e-3). Live capture and paced replay stay step by step: batching would add latency.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from actstream.stream.core import LabelPolicy, Prepare, StageTimes
from actstream.stream.publish import Publisher
from actstream.stream.steps import Source, Step, prefetch, steps

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
    """source: a Source; policy: LabelPolicy; publisher: Publisher; step_ms: step length;
    realtime: pace on the wall clock (always true for a live source); status_every_s: status interval in
    stream seconds; max_seconds: stop after this much stream time (0 = no limit); virtual_epoch: Unix time of
    t = 0 on the virtual clock; batch_steps: steps per batch in fast replay of a causal model (1: step by
    step); prefetch: batches prepared ahead on the worker thread."""

    # threads that resize frames beside the worker thread in batched replay: the cores left after the decoder
    # and this thread, at most 4 (0 on a 2-core machine: no spare core, the worker resizes inline)
    prep_threads = max(0, min(4, (os.cpu_count() or 1) - 2))

    def __init__(self, source: Source, policy: LabelPolicy, publisher: Publisher, step_ms: int, realtime: bool,
                 status_every_s: float = 1.0, max_seconds: float = 0.0, virtual_epoch: float = 0.0,
                 backend: str = "onnxruntime", batch_steps: int = 1, prefetch: int = 2):
        self.source = source
        self.policy = policy
        self.publisher = publisher
        self.step_ms = int(step_ms)
        self.realtime = realtime or source.live
        self.status_every = max(1, int(round(status_every_s * 1000)) // self.step_ms)
        self.max_steps = int(round(max_seconds * 1000)) // self.step_ms if max_seconds else 0
        self.virtual_epoch = virtual_epoch
        self.backend = backend
        self.batch_steps = batch_steps if self.batched_possible(policy, self.realtime) else 1
        self.prefetch = prefetch
        self.on_step = None  # optional callable(Snapshot) after each step's labels are published
        self.stop_event = threading.Event()
        self._latencies: list[float] = []
        # a model told its inputs' presence publishes the heads whose input is there: status names them
        self._heads_now: list[str] | None = [] if policy.recognizer.spec.head_inputs is not None else None

    @staticmethod
    def batched_possible(policy: LabelPolicy, realtime: bool) -> bool:
        """Batches are for fast replay of a causal model."""
        return not realtime and policy.recognizer.delay_s == 0

    def _status(self, state: str, t: float, wall: float, k: int, interval_steps: int, interval_s: float) -> None:
        extra: dict = {"state": state, "steps": k, "drops": self.source.drops(), "backend": self.backend,
                       "clock": "wall" if self.realtime else "virtual", "step_ms": self.step_ms}
        health = self.source.health()
        if health is not None:  # live devices: ok / stalled / lost / reconnecting, with counts
            extra["devices"] = health
        if self._heads_now is not None:
            extra["heads"] = list(self._heads_now)
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

    def _walk(self) -> Iterator[Step]:
        start_wall = time.time()
        pace = (lambda t: self._sleep_until(start_wall + t)) if self.realtime else None
        return steps(self.source, self.step_ms, self.max_steps, self.stop_event, pace, self.virtual_epoch)

    def _batches(self, worker_times: StageTimes):
        """(Inputs, steps) per batch: step by step inline, or batched on a prefetching worker thread."""
        rec = self.policy.recognizer
        if self.batch_steps == 1:
            prepare = Prepare(rec.spec, rec.engines, self.step_ms, rec.times)
            for step in self._walk():
                yield prepare([step.snap]), [step]
            return
        use_video = "video" in rec.spec.modalities
        pool = (ThreadPoolExecutor(self.prep_threads, "replay-preprocess")
                if self.prep_threads and use_video else None)
        prepare = Prepare(rec.spec, rec.engines, self.step_ms, worker_times, pool)

        def work():
            clock = time.perf_counter
            walk = self._walk()
            while True:
                t0 = clock()
                batch = []
                for step in walk:
                    batch.append(step)
                    if len(batch) == self.batch_steps:
                        break
                worker_times.add("decode", clock() - t0)
                if not batch:
                    return
                inputs = prepare([s.snap for s in batch])
                yield inputs, [Step(s.k, s.t, None, s.wall) for s in batch]  # frames not kept past the front end
                if len(batch) < self.batch_steps:
                    return

        try:
            yield from prefetch(work(), self.prefetch, self.stop_event, "replay-prepare")
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def run(self) -> RunSummary:
        started = time.perf_counter()
        rec = self.policy.recognizer
        worker_times = StageTimes()
        clock = time.perf_counter
        k, t, wall = 0, 0.0, self.virtual_epoch
        last_status_k, last_status_clock = 0, clock()
        for inputs, batch in self._batches(worker_times):
            produced = self.policy.advance_inputs(inputs)
            t0 = clock()
            for step, labels in zip(batch, produced):
                k, t, wall = step.k, step.t, step.wall
                self._publish_labels(labels, wall)
                if self.on_step is not None:  # e.g. the --show window: the frame of this step
                    self.on_step(step.snap)
                if self.realtime:
                    self._latencies.append(time.time() - wall)
                if k % self.status_every == 0:
                    now = clock()
                    self._status("running", t, wall, k, k - last_status_k, now - last_status_clock)
                    last_status_k, last_status_clock = k, now
            rec.times.add("publish", clock() - t0)
        self._publish_labels(self.policy.flush(), wall)
        now = clock()
        self._status("end", t, wall if self.realtime else self.virtual_epoch + t, k, k - last_status_k,
                     now - last_status_clock)
        stage = dict(rec.times.mean_ms())
        n = max(rec.times.steps, 1)
        stage.update({s: round(v * 1000.0 / n, 3) for s, v in worker_times.seconds.items()})
        return RunSummary(steps=k, media_s=t, elapsed_s=time.perf_counter() - started,
                          messages=self.publisher.sent, stage_ms=stage, drops=self.source.drops())

    def _publish_labels(self, produced, wall: float) -> None:
        extra = {"delay_s": self.policy.delay_s} if self.policy.delay_s else {}
        for t_label, labels in produced:
            if self._heads_now is not None:
                self._heads_now = list(labels)
            for head, lab in labels.items():
                self.publisher.publish(head, t_label, wall, lab.label, lab.score, lab.scores, changed=lab.changed,
                                       **extra)

    def _sleep_until(self, wall_target: float) -> None:
        while not self.stop_event.is_set():
            delay = wall_target - time.time()
            if delay <= 0:
                return
            self.stop_event.wait(min(delay, 0.05))
