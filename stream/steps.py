"""The one way through a source: the step times and what the source holds at each.

Live capture, paced and fast replay, training, calibration and evaluation all walk a source with `steps()`;
`prefetch()` runs such a walk (and whatever is computed from it) on a worker thread, a bounded number of items
ahead, which is all that batched fast replay adds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Snapshot:
    """What the core sees at one step: the newest frame at or before t, the audio window ending at t,
    the capture wall time (Unix s) of the newest input used, and the frame's own time (s; media time in a
    recording, capture wall time live; None: take t), which the motion stream's flow speeds are measured by."""

    t: float
    frame: np.ndarray | None
    audio: np.ndarray | None
    wall: float
    frame_t: float | None = None


class Source(Protocol):
    """What the step path reads: a recording (sources.FileSource, sources.ArraySource) or live devices
    (sources.LiveSource)."""

    name: str
    live: bool  # True: inputs arrive on the wall clock (a step waits for its time, then reads)

    def start(self) -> None: ...

    def snapshot(self, t: float) -> Snapshot | None:
        """The inputs for step time t (s), or None past the end of a recording."""

    def drops(self) -> dict[str, int]:
        """Frames and samples overwritten before use, per input."""

    def health(self) -> dict[str, dict] | None:
        """Live devices' state for status messages (None for recordings)."""

    def close(self) -> None: ...


@dataclass
class Step:
    """Step k (from 1) ends at media time t (s); wall: the Unix time of its input (live: capture; paced
    replay: release by the pacer; virtual clock: epoch + t)."""

    k: int
    t: float
    snap: Snapshot
    wall: float


def step_time(k: int, step_ms: int) -> float:
    """The end of step k in seconds: one formula for every path (integer milliseconds, so that 3 steps of
    100 ms end at exactly 0.3)."""
    return k * step_ms / 1000.0


def steps(source: Source, step_ms: int, max_steps: int = 0, stop: threading.Event | None = None,
          pace: Callable[[float], None] | None = None, virtual_epoch: float = 0.0) -> Iterator[Step]:
    """Steps 1, 2, ... of `source` until it ends, `max_steps` (0: no limit) or `stop` is set.

    pace(t): wait until the wall-clock time of step t (live and paced replay): a live source is read after
    the wait (its inputs arrive meanwhile), a recording before it (decoded ahead, released on time). Without
    `pace` the clock is virtual: steps run back to back and `wall` is virtual_epoch + t."""
    k = 0
    while not (stop is not None and stop.is_set()):
        if max_steps and k >= max_steps:
            return
        k += 1
        t = step_time(k, step_ms)
        if pace is not None and source.live:
            pace(t)
        snap = source.snapshot(t)
        if snap is None:
            return
        if source.live:
            wall = snap.wall
        elif pace is not None:
            pace(t)
            wall = time.time()
        else:
            wall = virtual_epoch + t
        yield Step(k, t, snap, wall)


_END = object()


def prefetch(items: Iterable[T], depth: int, stop: threading.Event, name: str = "prefetch") -> Iterator[T]:
    """The items of `items`, computed on a worker thread at most `depth` ahead of the consumer (memory stays
    flat). An exception on the worker is raised here; when the consumer stops early, `stop` is set and the
    worker ends."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    error: list[BaseException] = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer's thread, which re-raises it
            error.append(exc)
        finally:
            while True:
                try:
                    q.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while not stop.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if not worker.is_alive() and q.empty():
                    break
                continue
            if item is _END:
                break
            yield item
    finally:
        stop.set()
        worker.join(timeout=5.0)
        if worker.is_alive():
            log.warning("%s worker did not stop within 5 s; leaving it (daemon)", name)
    if error:
        raise error[0]
