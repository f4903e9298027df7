"""The tick scheduler: every stream of a run through one recognizer on one clock, one tick per step.

At each tick it takes what each stream has for its step without waiting for any of them (a live stream's
newest frame and audio from its capture rings; a recording's next step, decoded and prepared ahead on its
reader thread), runs each encoder once and the LSTM once over the streams that are ready (each stream a row
with its own state), and publishes each stream's labels and, every second of its time, its status. A stream
with nothing ready sits the tick out (its state kept; its LSTM resets after the continuity gap as ever) and
never delays the others; when ticks cannot keep up, the late ticks are skipped and counted, never drifted.

Clocks: the wall clock (live, paced replay, serve: tick k at start + k x step) and the virtual clock (fast
replay, evaluation: ticks back to back, each stream `batch_steps` steps a tick, `wall` = epoch + t). One
stream (replay, live) is the N = 1 case: the same ticks, the same messages on the bare head names.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from actstream.common.errors import ActstreamError
from actstream.stream.policy import LabelPolicy
from actstream.stream.publish import Publisher
from actstream.stream.streams import END, Stream

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


@dataclass
class TickStats:
    """The process's ticks since the last process status: how many, how many were late and skipped, the rows
    each encoder and the LSTM got, and the time each tick took (ms)."""

    ticks: int = 0
    late: int = 0
    skipped: int = 0
    rows: dict[str, list[int]] = field(default_factory=dict)
    tick_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        out: dict = {"ticks": self.ticks, "late_ticks": self.late, "skipped_ticks": self.skipped,
                     "batch": {k: {"mean": float(np.mean(v)), "max": int(max(v))} for k, v in self.rows.items() if v}}
        if self.tick_ms:
            out["tick_ms"] = {"p50": float(np.percentile(self.tick_ms, 50)),
                              "p99": float(np.percentile(self.tick_ms, 99))}
        return out


class Scheduler:
    """policy: the LabelPolicy over the process's recognizer; publisher: the bus (and --out);
    step_ms: the step; realtime: the wall clock (else virtual); status_every_s: a stream's status interval in
    its own time; max_seconds: stop a stream after this much of its time (0: no limit); virtual_epoch: Unix
    time of t = 0 on the virtual clock; batch_steps: steps per stream per tick on the virtual clock;
    isolate: a stream's failure is its own (serve) rather than the run's (replay, live); process_status:
    publish the process's own `status` (streams, ticks, batch sizes) every status interval; max_streams: the
    most streams at once; keep_running: go on with no stream (serve) instead of ending with the last one."""

    # threads that resize frames beside the reader thread in batched fast replay of one stream: the cores left
    # after the decoder and the tick thread, at most 4 (0 on a 2-core machine: the reader resizes inline)
    prep_threads = max(0, min(4, (os.cpu_count() or 1) - 2))

    def __init__(self, policy: LabelPolicy, publisher: Publisher, step_ms: int, realtime: bool,
                 status_every_s: float = 1.0, max_seconds: float = 0.0, virtual_epoch: float = 0.0,
                 backend: str = "onnxruntime", batch_steps: int = 1, prefetch: int = 2, isolate: bool = False,
                 process_status: bool = False, max_streams: int = 64, keep_running: bool = False):
        self.policy = policy
        self.recognizer = policy.recognizer
        self.publisher = publisher
        self.step_ms = int(step_ms)
        self.step_s = self.step_ms / 1000.0
        self.realtime = realtime
        self.status_every = max(1, int(round(status_every_s * 1000)) // self.step_ms)
        self.max_steps = int(round(max_seconds * 1000)) // self.step_ms if max_seconds else 0
        self.virtual_epoch = virtual_epoch
        self.backend = backend
        self.batch_steps = batch_steps if not realtime and self.recognizer.delay_s == 0 else 1
        self.prefetch = prefetch
        self.isolate = isolate
        self.process_status = process_status
        self.max_streams = max_streams
        self.keep_running = keep_running
        self.on_step = None  # optional callable(Stream, Snapshot) after each step's labels are published
        self.stop_event = threading.Event()
        self.tick = 0
        self.tick_stats = TickStats()
        self._lock = threading.Lock()
        self._active: list[Stream] = []
        self._opening: dict[str, Stream] = {}
        self._joining: list[Stream] = []
        self._leaving: dict[str, str] = {}  # id -> why
        self._done: dict[str | None, RunSummary] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._started = time.perf_counter()

    # --- streams in and out (any thread) ---
    def ids(self) -> set[str | None]:
        with self._lock:
            return {s.id for s in self._active} | set(self._opening) | {s.id for s in self._joining}

    def add(self, stream: Stream) -> None:
        """Add a stream: an open one joins at the next tick; one with `open_source` is opened off this thread
        first. Raises ActstreamError for a duplicate id or past max_streams."""
        with self._lock:
            ids = {s.id for s in self._active} | set(self._opening) | {s.id for s in self._joining}
            if stream.id in ids:
                raise ActstreamError(f"stream {stream.id!r} exists already: remove it first or choose another id")
            if len(ids) >= self.max_streams:
                raise ActstreamError(f"this process serves {len(ids)} streams, its most (serve.max_streams = "
                                     f"{self.max_streams}): remove one, raise the limit, or start another process")
            if stream.ready.is_set():
                self._joining.append(stream)
                return
            self._opening[stream.id] = stream
        stream.open(self._opened, self.stop_event)

    def _opened(self, stream: Stream) -> None:
        with self._lock:
            if self._opening.pop(stream.id, None) is None:
                stream.close()  # removed while it was opening
                return
            self._joining.append(stream)

    def remove(self, sid: str, why: str = "removed") -> bool:
        """Remove a stream at the next tick: it publishes its last labels and an `end` status, and its state
        is freed. False if there is no such stream."""
        with self._lock:
            if sid in self._opening:
                stream = self._opening.pop(sid)
                stream.phase = "removed"
                stream.cancel.set()  # its opener stops retrying
                self._done[sid] = RunSummary()
                return True
            if any(s.id == sid for s in self._active + self._joining):
                self._leaving[sid] = why
                return True
        return False

    def streams(self) -> list[dict]:
        """Every stream with its phase, steps and problem (`actstream streams list`)."""
        with self._lock:
            every = self._active + self._joining + list(self._opening.values())
            return [{"id": s.id, "phase": s.phase, "steps": s.k, "t": round(s.t, 3), "problem": s.problem,
                     "retries": s.retries, **s.spec} for s in every]

    # --- the run ---
    def run(self) -> dict[str | None, RunSummary]:
        """Tick until every stream has ended (or, with keep_running, until stopped); per stream its summary."""
        self._started = time.perf_counter()
        if (self.batch_steps > 1 and self.prep_threads and "video" in self.recognizer.spec.modalities):
            self._pool = ThreadPoolExecutor(self.prep_threads, "replay-preprocess")
        try:
            if self.realtime:
                self._run_wall()
            else:
                self._run_virtual()
        finally:
            with self._lock:
                left = self._active + self._joining
                self._active, self._joining = [], []
            for stream in left:
                self._finish(stream, "end")
            for stream in list(self._opening.values()):
                stream.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        return self._done

    def _admit(self) -> None:
        """Streams that joined start at this tick; streams removed publish their end and leave."""
        with self._lock:
            joining = list(self._joining)  # they stay listed (streams(), a shard's poll) until they are active
            leaving, self._leaving = self._leaving, {}
        for stream in joining:
            if stream.phase == "failed":
                with self._lock:
                    self._joining.remove(stream)
                self._finish(stream, "error")
                continue
            stream.start_tick = self.tick
            stream.stats.last_status_clock = time.perf_counter()
            if self.recognizer.spec.head_inputs is not None:
                stream.heads_now = []
            if self._pool is not None and stream.id is None:  # one recording's frames resized beside its reader
                stream.state.prepare.use_pool(self._pool)
            stream.start_reading(self.step_ms, self.batch_steps, self.max_steps, depth=self.prefetch)
            with self._lock:  # from joining to active at once: never missing from the list in between (a
                self._joining.remove(stream)  # supervisor that polled then took a running stream for lost)
                self._active.append(stream)
        for sid, why in leaving.items():
            stream = next((s for s in self._active if s.id == sid), None)
            if stream is not None:
                self._active.remove(stream)
                self._finish(stream, "end", why)

    def _keep_going(self) -> bool:
        if self.stop_event.is_set():
            return False
        with self._lock:
            waiting = bool(self._joining or self._opening or self._leaving)
        return bool(self._active) or waiting or self.keep_running

    def _run_virtual(self) -> None:
        """Ticks back to back: each stream's next `batch_steps` steps (waiting for its reader), one batch."""
        while self._keep_going():
            self._admit()
            if not self._active:
                self.stop_event.wait(0.01)
                continue
            ready = []
            for stream in list(self._active):
                try:
                    item = stream.reader.get(self.stop_event)
                except Exception as exc:
                    self._fail(stream, exc)
                    continue
                if item is None:
                    return
                if item is END:
                    self._end(stream)
                    continue
                ready.append((stream, *item))
            self.tick += 1
            self._step(ready)

    def _run_wall(self) -> None:
        """Tick k at start + k x step: each stream's step, if it has it ready."""
        start = time.time()
        while self._keep_going():
            self._admit()
            self.tick += 1
            target = start + self.tick * self.step_s
            self._sleep_until(target)
            if self.stop_event.is_set():
                return
            behind = time.time() - target
            if behind > self.step_s:  # the ticks cannot keep up: skip to now, never drift
                skip = int(behind // self.step_s)
                self.tick += skip
                self.tick_stats.late += 1
                self.tick_stats.skipped += skip
            release = time.time()
            ready = []
            for stream in list(self._active):
                j = self.tick - stream.start_tick  # a live stream's step now
                if stream.live and self.max_steps and j > self.max_steps:
                    self._end(stream)
                    continue
                try:
                    item = stream.take(j * self.step_s) if stream.live else stream.reader.poll()
                except Exception as exc:
                    self._fail(stream, exc)
                    continue
                if item is END:
                    self._end(stream)
                elif item is None:  # nothing ready: it sits this tick out (a recording resumes where it was)
                    stream.stats.sat_out += 1
                    if not stream.live:
                        stream.start_tick += 1
                else:
                    inputs, batch = item
                    if stream.live:
                        batch[0].k, batch[0].t = j, j * self.step_s
                    else:  # a recording's step is released now: its wall time, for latency and `wall`
                        batch[0].wall = release
                    ready.append((stream, inputs, batch))
            self._step(ready)
            self.tick_stats.tick_ms.append((time.time() - release) * 1000.0)
            if self.process_status and self.tick % self.status_every == 0:
                self.publish_process_status("running")

    def _step(self, ready: list) -> None:
        """One tick's work: the recognizer over the ready streams, then each stream's labels and status."""
        if not ready:
            return
        self.tick_stats.ticks += 1
        rows = self.tick_stats.rows  # the batch each network got: streams (LSTM rows), frames, audio windows
        rows.setdefault("streams", []).append(len(ready))
        rows.setdefault("video", []).append(sum(len(i.images) for _, i, _ in ready if i.images is not None))
        rows.setdefault("audio", []).append(sum(len(i.mels) for _, i, _ in ready if i.mels is not None))
        produced = self.policy.advance_many([(stream.state, inputs) for stream, inputs, _ in ready])
        t0 = time.perf_counter()
        for (stream, _, batch), labels_per_step in zip(ready, produced):
            for step, labels in zip(batch, labels_per_step):
                stream.k, stream.t, stream.wall = step.k, step.t, step.wall
                self._publish_labels(stream, labels, stream.wall)
                if self.on_step is not None:  # e.g. the --show window: the frame of this step
                    self.on_step(stream, step.snap)
                if self.realtime:
                    stream.stats.latencies.append(time.time() - stream.wall)
                if stream.k - stream.stats.last_status_k >= self.status_every:
                    self._status(stream, "running")
        self.recognizer.times.add("publish", time.perf_counter() - t0)

    def _publish_labels(self, stream: Stream, produced, wall: float) -> None:
        extra = {"delay_s": self.policy.delay_s} if self.policy.delay_s else {}
        for t_label, labels in produced:
            if stream.heads_now is not None:
                stream.heads_now = list(labels)
            for head, lab in labels.items():
                stream.channel.publish(head, t_label, wall, lab.label, lab.score, lab.scores, changed=lab.changed,
                                       **extra)

    def _status(self, stream: Stream, state: str) -> None:
        now = time.perf_counter()
        fields = stream.status_fields(self.backend, self.realtime, self.step_ms, self.recognizer.times.mean_ms(),
                                      stream.k - stream.stats.last_status_k, now - stream.stats.last_status_clock,
                                      self.publisher.bus_overflows)
        stream.stats.last_status_k, stream.stats.last_status_clock = stream.k, now
        wall = stream.wall if (self.realtime or state == "running") else self.virtual_epoch + stream.t
        stream.channel.publish("status", stream.t, wall, state, None, {}, state=state, **fields)

    def publish_process_status(self, state: str) -> None:
        """The process's own status (serve): its streams, its ticks, the batch sizes its engines got."""
        with self._lock:
            streams = {s.id: s.phase for s in self._active + self._joining + list(self._opening.values())}
        fields = {"state": state, "streams": streams, **self.tick_stats.summary(), "backend": self.backend,
                  "clock": "wall" if self.realtime else "virtual", "step_ms": self.step_ms}
        if self.publisher.bus_overflows:
            fields["bus_overflows"] = dict(self.publisher.bus_overflows)
        self.tick_stats = TickStats()
        t = self.tick * self.step_s
        self.publisher.publish("status", t, time.time(), state, None, {}, **fields)

    def _end(self, stream: Stream) -> None:
        """A stream whose recording ended (or reached max_seconds): its last labels, its end status."""
        if stream in self._active:
            self._active.remove(stream)
        self._finish(stream, "end")

    def _fail(self, stream: Stream, exc: BaseException) -> None:
        """A stream whose source failed: the run's error (replay, live), or that stream's alone (serve)."""
        if stream in self._active:
            self._active.remove(stream)
        if not self.isolate or not isinstance(exc, (ActstreamError, OSError, ValueError)):
            stream.close()
            raise exc
        stream.problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("stream %s failed: %s", stream.id, stream.problem)
        self._finish(stream, "error")

    def _finish(self, stream: Stream, state: str, why: str | None = None) -> None:
        """Flush a stream's held-back labels, publish its last status, free its state."""
        if stream.phase in ("running", "retrying", "opening"):
            stream.phase = "ended" if state == "end" else "failed"
        if why and stream.problem is None and why != "removed":
            stream.problem = why
        try:
            if stream.source is not None:
                self._publish_labels(stream, self.policy.flush(stream.state), stream.wall)
            self._status(stream, state)
        finally:
            stream.close()
            self._done[stream.id] = RunSummary(
                steps=stream.k, media_s=stream.t, elapsed_s=time.perf_counter() - self._started,
                messages=self.publisher.sent, stage_ms=self.recognizer.times.mean_ms(),
                drops=stream.source.drops() if stream.source is not None else {})

    def _sleep_until(self, wall_target: float) -> None:
        while not self.stop_event.is_set():
            delay = wall_target - time.time()
            if delay <= 0:
                return
            self.stop_event.wait(min(delay, 0.05))

