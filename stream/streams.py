"""One stream of a run: its source, its state, its channel on the bus, the thread that reads it ahead, and
what its status messages say.

A stream is opened off the tick's thread (a camera can take seconds to give its first frame), then joins the
scheduler's next tick. A recording is decoded and prepared on a reader thread of its own, a bounded number of
steps ahead; a live source (camera, microphone) is read at the tick from its capture rings, which never
blocks. What goes wrong with one stream (a source that cannot be opened, a file that breaks off) is that
stream's state and problem, retried with back-off where retrying can help, and never another stream's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from actstream.common.errors import ActstreamError
from actstream.stream.capture import Backoff
from actstream.stream.encode import Inputs
from actstream.stream.publish import Channel
from actstream.stream.recognizer import StreamState
from actstream.stream.steps import Source, Step, steps

log = logging.getLogger(__name__)

END = object()  # a reader's last item: the recording ended


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Reader:
    """The items of `work` (a generator of (Inputs, steps) batches), made on a thread of their own at most
    `depth` ahead of the consumer. `get()` waits (the virtual clock), `poll()` never does (the wall clock);
    both give END after the last item, and raise what the worker raised where it raised it."""

    def __init__(self, work: Iterator, depth: int, name: str):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._held = None
        self._thread = threading.Thread(target=self._work, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, work: Iterator) -> None:
        try:
            for item in work:
                if not self._put(item):
                    return
            self._put(END)
        except BaseException as exc:  # handed to the consumer's thread, which raises it
            self._put(_Failed(exc))

    def _unwrap(self, item):
        if isinstance(item, _Failed):
            raise item.exc
        return item

    def get(self, stop: threading.Event) -> object:
        """The next item, waiting for it; None if `stop` is set first."""
        while not stop.is_set():
            try:
                return self._unwrap(self._queue.get(timeout=0.1))
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return END
        return None

    def poll(self):
        """The next item if it is ready, else None."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            return self._unwrap(self._queue.get_nowait())
        except queue.Empty:
            return None

    def unget(self, item) -> None:
        """Give back an item polled too early (a step ahead of the tick's)."""
        self._held = item

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.0f s; leaving it (daemon)", self._thread.name, timeout_s)


@dataclass
class StreamStats:
    """Counters of one stream, for its status: ticks it had nothing ready for (its source stalled or decoded
    late: a recording resumes where it was, a live source's step is gone) and the interval's latencies (s)."""

    sat_out: int = 0
    latencies: list[float] = field(default_factory=list)
    last_status_k: int = 0
    last_status_clock: float = field(default_factory=time.perf_counter)


class Stream:
    """One stream: `id` (None for the only stream of replay and live, published on bare topics), its source
    (given open, or made by `open_source` on a thread of its own, retried with back-off when `retry`), its
    `state` (stream/recognizer.py), its `channel` (stream/publish.py). `keep_frames`: steps keep their frames
    past the front end (the --show window draws them)."""

    def __init__(self, sid: str | None, state: StreamState, channel: Channel, source: Source | None = None,
                 open_source: Callable[[], Source] | None = None, retry: bool = False, loop: bool = False,
                 keep_frames: bool = False, spec: dict | None = None):
        self.id = sid
        self.state = state
        self.channel = channel
        self.source = source
        self.open_source = open_source
        self.retry = retry
        self.spec = spec or {}  # what it was made from (a streams file's table): `streams list` shows it
        self.keep_frames = keep_frames
        self.reader: Reader | None = None
        self.stats = StreamStats()
        self.k = 0  # steps done
        self.t = 0.0  # media time (s) of the last step
        self.wall = 0.0
        self.start_tick = 0  # the tick before its first step
        self.phase = "running" if source is not None else "opening"  # opening, running, retrying, ended, failed
        self.problem: str | None = None
        self.heads_now: list[str] | None = None
        self.ready = threading.Event()
        if source is not None:
            self.ready.set()
        self._opener: threading.Thread | None = None
        self.cancel = threading.Event()  # set when the stream is removed while it is still being opened
        self._backoff = Backoff(1.0, 30.0)
        self.retries = 0

    @property
    def live(self) -> bool:
        return bool(self.source is not None and self.source.live)

    def open(self, on_ready: Callable[[Stream], None], stop: threading.Event) -> None:
        """Open the source on a thread of its own (a camera may take seconds); call on_ready(self) once it is
        open. A failure is the stream's problem: retried with back-off when `retry`, else it has failed."""
        def work():
            while not stop.is_set() and not self.cancel.is_set():
                try:
                    source = self.open_source()
                    source.start()
                except ActstreamError as exc:
                    self.problem = str(exc)
                    if not self.retry:
                        self.phase = "failed"
                        on_ready(self)
                        return
                    self.phase = "retrying"
                    self.retries += 1
                    delay = self._backoff.take()
                    log.warning("stream %s: %s; retrying in %.0f s", self.id, exc, delay)
                    if stop.wait(delay) or self.cancel.is_set():
                        return
                    continue
                if self.cancel.is_set():  # removed while it opened
                    source.close()
                    return
                self.source, self.phase, self.problem = source, "running", None
                self._backoff.reset()
                self.ready.set()
                on_ready(self)
                return

        self._opener = threading.Thread(target=work, name=f"open-{self.id}", daemon=True)
        self._opener.start()

    def start_reading(self, step_ms: int, batch_steps: int, max_steps: int = 0, depth: int = 2) -> None:
        """A recording: decoded and prepared on a reader thread, `batch_steps` steps per item (its first
        `max_steps`, 0: all), `depth` items ahead. A live source is read at the tick instead (its capture
        threads fill the rings)."""
        if self.live:
            return
        state, source, keep = self.state, self.source, self.keep_frames
        clock = time.perf_counter

        def work():
            walk = steps(source, step_ms, max_steps)
            while True:
                t0 = clock()
                batch = []
                for step in walk:
                    batch.append(step)
                    if len(batch) == batch_steps:
                        break
                state.prepare.times.add("decode", clock() - t0)
                if not batch:
                    return
                inputs = state.prepare([s.snap for s in batch])
                yield inputs, batch if keep else [Step(s.k, s.t, None, s.wall) for s in batch]
                if len(batch) < batch_steps:
                    return

        self.reader = Reader(work(), depth, f"read-{self.id or source.name}")

    def take(self, t: float) -> tuple[Inputs, list[Step]] | None:
        """A live stream's step at time t: the capture rings' newest, prepared here (never blocks)."""
        snap = self.source.snapshot(t)
        return self.state.prepare([snap]), [Step(0, t, snap, snap.wall)]

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.source is not None:
            try:
                self.source.close()
            except Exception as exc:  # closing one stream must never take the others down
                log.warning("stream %s: closing its source failed: %s", self.id, exc)

    def status_fields(self, backend: str, realtime: bool, step_ms: int, stage_ms: dict, interval_steps: int,
                      interval_s: float, bus_overflows: dict) -> dict:
        """The fields of this stream's status message beyond the common ones."""
        extra: dict = {"steps": self.k, "drops": self.source.drops() if self.source is not None else {},
                       "backend": backend, "clock": "wall" if realtime else "virtual", "step_ms": step_ms}
        health = self.source.health() if self.source is not None else None
        if health is not None:  # live devices: ok / stalled / lost / reconnecting, with counts
            extra["devices"] = health
        if self.heads_now is not None:
            extra["heads"] = list(self.heads_now)
        if bus_overflows:  # a subscriber's queue hit the high-water mark: ZeroMQ dropped for it
            extra["bus_overflows"] = dict(bus_overflows)
        if self.id is not None:  # a stream of a many-stream process: what befell it
            extra["phase"] = self.phase
            extra["sat_out"] = self.stats.sat_out
            if self.problem:
                extra["problem"] = self.problem
        if realtime:
            lat = np.asarray(self.stats.latencies) * 1000.0
            extra["steps_per_s"] = interval_steps / interval_s if interval_s > 0 else 0.0
            extra["latency_ms"] = ({"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                    "max": float(lat.max())} if len(lat) else None)
            extra["stage_ms"] = stage_ms
        else:  # on the virtual clock, figures are in stream time so that replays are byte-identical
            extra["steps_per_s"] = 1000.0 / step_ms
            extra["latency_ms"] = None
        self.stats.latencies.clear()
        return extra
