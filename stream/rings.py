"""Ring buffers between capture threads and their readers.

FrameRing and AudioRing (the step loop's: the newest frame, the last seconds of audio) are preallocated and
never grow: a writer overwrites the oldest entry and counts what it dropped. FrameQueue (every frame, for
`record`) and BlockLog (when each audio block arrived) are bounded the same way. One writer thread and one
reader thread; a lock guards the indices, and the writer never waits.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class FrameRing:
    """The last `capacity` video frames with their media times (s) and capture wall times (Unix s)."""

    def __init__(self, capacity: int, shape: tuple[int, int, int]):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._frames = np.zeros((capacity, *shape), dtype=np.uint8)
        self._t = np.full(capacity, -np.inf)
        self._wall = np.zeros(capacity)
        self._written = 0
        self._read_upto = 0  # frames the reader has moved past; unread ones that get overwritten are drops
        self.dropped = 0
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, ...]:
        return self._frames.shape[1:]

    @property
    def written(self) -> int:
        return self._written

    def write(self, frame: np.ndarray, t: float, wall: float) -> None:
        """Copy one frame in. A frame of another size is an error for the caller to handle (see reshape)."""
        if frame.shape != self._frames.shape[1:]:
            raise ValueError(f"frame shape {frame.shape} != ring shape {self._frames.shape[1:]}")
        with self._lock:
            i = self._written % self.capacity
            if self._written - self._read_upto >= self.capacity:
                self.dropped += 1  # the oldest unread frame is overwritten
                self._read_upto += 1
            self._frames[i] = frame
            self._t[i] = t
            self._wall[i] = wall
            self._written += 1

    def latest(self, t: float | None = None) -> tuple[np.ndarray, float, float] | None:
        """A copy of the newest frame with media time <= t (any time if t is None), with its times.

        Frames older than the one returned count as consumed; None if there is no such frame.
        """
        with self._lock:
            n = min(self._written, self.capacity)
            best = -1
            for k in range(1, n + 1):
                i = (self._written - k) % self.capacity
                if t is None or self._t[i] <= t + 1e-9:
                    best = i
                    consumed = self._written - k + 1
                    break
            if best < 0:
                return None
            self._read_upto = max(self._read_upto, consumed)
            return self._frames[best].copy(), float(self._t[best]), float(self._wall[best])


class AudioRing:
    """The last `capacity` mono float32 samples, addressed by absolute sample index since the stream began.

    `write` never blocks or allocates, so it is safe in an audio callback.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._written = 0  # absolute index of the next sample
        self._wall_at_written = 0.0  # capture wall time of the newest sample
        self.dropped = 0  # samples overwritten before any read covered them
        self.overruns = 0  # input overflows reported by the device
        self._read_upto = 0
        self._lock = threading.Lock()

    @property
    def written(self) -> int:
        return self._written

    @property
    def wall(self) -> float:
        return self._wall_at_written

    def write(self, samples: np.ndarray, wall: float = 0.0) -> None:
        n = len(samples)
        if n == 0:
            return
        with self._lock:
            if n > self.capacity:
                samples = samples[-self.capacity:]
                self._written += n - self.capacity
                n = self.capacity
            start = self._written % self.capacity
            first = min(n, self.capacity - start)
            self._buf[start:start + first] = samples[:first]
            self._buf[:n - first] = samples[first:]
            self._written += n
            lost = self._written - self.capacity - self._read_upto
            if lost > 0:
                self.dropped += lost
                self._read_upto += lost
            self._wall_at_written = wall

    def skip_to(self, index: int) -> None:
        """Advance the write index to `index` by writing silence (a gap in the source), without reallocating."""
        gap = index - self._written
        if gap <= 0:
            return
        zeros = np.zeros(min(gap, self.capacity), dtype=np.float32)
        with self._lock:
            self._written += gap - len(zeros)
        self.write(zeros, self._wall_at_written)

    def read(self, end: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """The `length` samples ending before absolute index `end`, zeros where nothing was captured."""
        out = np.zeros(length, dtype=np.float32) if out is None else out
        out[:] = 0.0
        with self._lock:
            lo = max(end - length, self._written - self.capacity, 0)
            hi = min(end, self._written)
            if hi > lo:
                dst = out[length - (end - lo): length - (end - hi)]
                a, b = lo % self.capacity, hi % self.capacity
                if a < b or hi - lo == 0:
                    dst[:] = self._buf[a:a + (hi - lo)]
                else:
                    k = self.capacity - a
                    dst[:k] = self._buf[a:]
                    dst[k:] = self._buf[:b] if b else self._buf[:0]
            self._read_upto = max(self._read_upto, hi)
        return out


class FrameQueue:
    """Every frame a camera delivers, with its capture wall time (Unix s), for a reader that must see each one
    (`actstream record`), where the FrameRing keeps only the newest. Bounded by bytes, so its length in frames
    is fixed by the first frame's size; `put` never blocks the camera: a frame that finds the queue full is
    dropped and counted (a reader that falls that far behind is an error for it to report)."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self.capacity = 0  # frames; set by the first put
        self.delivered = 0  # frames put, kept or not
        self.dropped = 0
        self._items: deque = deque()
        self._ready = threading.Condition()

    def put(self, frame: np.ndarray, wall: float) -> None:
        """Keep `frame` (not copied: the camera hands over a fresh array each time) and its capture time."""
        with self._ready:
            if not self.capacity:
                self.capacity = max(2, self.max_bytes // max(1, frame.nbytes))
            self.delivered += 1
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return
            self._items.append((frame, wall))
            self._ready.notify()

    def get_all(self, timeout_s: float = 0.0) -> list[tuple[np.ndarray, float]]:
        """Every frame waiting, oldest first, after waiting up to timeout_s for one if none is."""
        with self._ready:
            if not self._items and timeout_s > 0:
                self._ready.wait(timeout_s)
            items = list(self._items)
            self._items.clear()
        return items


class BlockLog:
    """When each audio block was delivered: its end (absolute sample index, as in AudioRing), the wall time of
    its callback (Unix s), and whether samples are missing before it (the device reported an overflow, or the
    stream was reopened). Preallocated; `write` never blocks or allocates (safe in an audio callback); the
    oldest unread entries are overwritten and counted when the reader falls `capacity` blocks behind."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._end = np.zeros(capacity, dtype=np.int64)
        self._wall = np.zeros(capacity)
        self._broken = np.zeros(capacity, dtype=bool)
        self._written = 0  # entries ever written
        self.dropped = 0
        self._lock = threading.Lock()

    @property
    def written(self) -> int:
        return self._written

    def write(self, end: int, wall: float, broken: bool) -> None:
        with self._lock:
            i = self._written % self.capacity
            self._end[i], self._wall[i], self._broken[i] = end, wall, broken
            self._written += 1

    def read_since(self, seen: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Entries written after the first `seen`: (entries now written, ends, walls, broken), oldest first.
        Entries already overwritten are skipped and counted in `dropped`; the first one kept is then marked
        broken, since the blocks between are unknown."""
        with self._lock:
            lost = max(0, self._written - self.capacity - seen)
            first = seen + lost
            idx = np.arange(first, self._written) % self.capacity
            ends, walls, broken = self._end[idx], self._wall[idx], self._broken[idx].copy()
            written = self._written
        if lost:
            self.dropped += lost
            if len(broken):
                broken[0] = True
        return written, ends, walls, broken
