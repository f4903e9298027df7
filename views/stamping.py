"""Capture times to media timestamps: where each camera frame and microphone sample goes in a recording.

Pure bookkeeping (no devices, no encoder), so `record` and the tests drive the same code.

Video: a frame's time is its capture wall time minus the recording's start; each frame lasts until the next
one (the last until the end), so a camera's own rate and its hiccups are kept, not redrawn at a nominal rate.

Audio: a block's samples were captured before its callback ran; within one stream (where PortAudio loses no
sample without saying so) also before any later block's callback, less the samples in between. So the latest
a block's last sample can have been captured is the lower envelope, over the blocks of its stream delivered
soon after it, of (callback time - samples from it to that block's end / rate). A block delivered late is
put back where it was captured when later ones came sooner (a stall's burst lands where it was recorded); a
block after a pause in delivery that resumes at the real pace is put after the pause (a gap in delivery stays
a gap in time, filled with silence so that every player keeps what follows in place, instead of shifting
everything after it); a microphone that starts late starts late in the file. Blocks estimated within
`tolerance_s` of where the previous one ended follow it directly (delivery jitter does not chop the audio);
further on, a gap; overlapping (a device clock faster than the wall clock), the overlap is cut.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


class VideoStamps:
    """Frame times in milliseconds (the recording's time base) for frames captured t seconds after the start;
    a frame outside [0, seconds) gets none. seconds: the recording's length."""

    def __init__(self, seconds: float):
        self.end_ms = int(round(seconds * 1000))
        self.first_pts: int | None = None
        self.last_pts: int | None = None
        self.kept = 0
        self.outside = 0  # delivered before the start or at or after the end
        self.longest_ms = 0  # the longest interval between kept frames (a camera's hiccup shows here)

    def pts_for(self, t: float) -> int | None:
        """The pts of a frame captured at t s, or None if it is outside the recording. Strictly increasing:
        two frames delivered within one millisecond (a burst after a stall) are a millisecond apart."""
        pts = int(round(t * 1000))
        if self.last_pts is not None:
            pts = max(pts, self.last_pts + 1)
        if t < 0 or pts >= self.end_ms:
            self.outside += 1
            return None
        if self.last_pts is None:
            self.first_pts = pts
        else:
            self.longest_ms = max(self.longest_ms, pts - self.last_pts)
        self.last_pts = pts
        self.kept += 1
        return pts

    def rate(self) -> float | None:
        """Mean frames per second of the kept frames, or None with fewer than two."""
        if self.kept < 2:
            return None
        return (self.kept - 1) * 1000.0 / (self.last_pts - self.first_pts)


@dataclass
class AudioPlacement:
    """What the placer wrote, in samples inside the recording: the index of the first, those captured, the
    silence put into gaps (`gaps` of them), and the captured samples cut where they overlapped audio already
    written (a device faster than the wall clock)."""

    first: int | None = None
    captured: int = 0
    silence: int = 0
    gaps: int = 0
    cut: int = 0

    @property
    def written(self) -> int:
        return self.captured + self.silence


class AudioPlacer:
    """Places microphone blocks on the recording's clock.

    rate: Hz; seconds: the recording's length (samples before 0 or at or after it are dropped); horizon_s: a
    block is placed once blocks delivered this much later have been seen (the lower envelope looks that far
    ahead); tolerance_s: a block estimated within this of where the previous one ended follows it directly,
    further off it starts a gap (silence) or cuts what overlaps. `add` takes one block and returns what is
    ready to encode as (index of its first sample in the recording, samples) chunks, contiguous from the
    first one on."""

    def __init__(self, rate: int, seconds: float, horizon_s: float = 0.5, tolerance_s: float = 0.02):
        self.rate = rate
        self.end = int(round(seconds * rate))
        self.horizon_s = horizon_s
        self.tolerance = int(round(tolerance_s * rate))
        self.done = AudioPlacement()
        self._pending: deque = deque()  # [samples, delivery time s, samples of its stream through it, stream]
        self._stream = 0
        self._count = 0  # samples of the current stream so far
        self._newest: float | None = None  # delivery time of the newest block
        self._next: int | None = None  # recording index of the next sample written

    def add(self, samples: np.ndarray, t_delivered: float, broken: bool) -> list[tuple[int, np.ndarray]]:
        """One block: its samples, the recording time (s) its callback ran, and whether samples are missing
        before it (a new stream, an overflow): it then starts a new stream, whose samples are not
        contiguous with those before."""
        if broken and self._count:
            self._stream += 1
            self._count = 0
        self._count += len(samples)
        self._pending.append((samples, t_delivered, self._count, self._stream))
        self._newest = t_delivered
        return self._place_ready(final=False)

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """Place every block still held, with what is known of what followed it."""
        return self._place_ready(final=True)

    def covered_until(self) -> float | None:
        """Recording time (s) of the newest delivery: audio captured before it has arrived."""
        return self._newest

    # ------------------------------------------------------------------------------------------------------
    def _place_ready(self, final: bool) -> list[tuple[int, np.ndarray]]:
        out: list[tuple[int, np.ndarray]] = []
        while self._pending:
            samples, t, count, stream = self._pending[0]
            if not (final or self._newest - t >= self.horizon_s or self._pending[-1][3] != stream):
                break
            # the latest its last sample can have been captured: no block of its stream delivered soon after
            # it arrived before its own samples were captured
            end = t
            for _, tj, cj, sj in self._pending:
                if sj != stream or tj > t + self.horizon_s:
                    break
                end = min(end, tj - (cj - count) / self.rate)
            self._pending.popleft()
            out += self._place(samples, int(round(end * self.rate)))
        return out

    def _place(self, samples: np.ndarray, end: int) -> list[tuple[int, np.ndarray]]:
        """Write a block whose last sample belongs just before recording index `end`."""
        start = end - len(samples)
        out: list[tuple[int, np.ndarray]] = []
        if self._next is None:
            self._next = start
        elif start - self._next > self.tolerance:  # nothing was captured in between: a gap, as silence
            out += self._write(np.zeros(start - self._next, np.float32), silence=True)
        elif self._next - start > self.tolerance:  # it overlaps what is written (a fast device): cut that part
            cut = min(self._next - start, len(samples))
            samples = samples[cut:]
            if self._next > 0:
                self.done.cut += cut
        return out + self._write(samples, silence=False)

    def _write(self, samples: np.ndarray, silence: bool) -> list[tuple[int, np.ndarray]]:
        start = self._next
        self._next = start + len(samples)
        lo, hi = max(start, 0), min(start + len(samples), self.end)
        if hi <= lo:
            return []
        if silence:
            self.done.silence += hi - lo
            self.done.gaps += 1
        else:
            self.done.captured += hi - lo
        if self.done.first is None:
            self.done.first = lo
        return [(lo, samples[lo - start:hi - start])]
