"""The rotation a video container declares, applied to decoded frames: a phone stores portrait video sideways
and says how to show it, with a display matrix (mp4/mov tkhd matrix, Matroska projection) or, from older
tools, a `rotate` tag. Replay (stream/sources.py) and `replay --annotate` (stream/overlay.py) turn every
frame upright before anything sees it, as FFmpeg's own autorotation does."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.common.files import escaped, shown_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orientation:
    """How to turn a decoded frame upright, as the container declares it: quarter turns counterclockwise
    (np.rot90's k), then a vertical and a horizontal flip. A phone stores portrait video sideways and says
    "display it rotated 90 degrees clockwise" (k = 3)."""

    k: int = 0
    flip_v: bool = False
    flip_h: bool = False

    @property
    def turns(self) -> bool:
        """True when width and height swap."""
        return self.k % 2 == 1

    def apply(self, img: np.ndarray) -> np.ndarray:
        """img (H, W, C) upright. OpenCV's rotate and flip (np.rot90's strided copy into the ring took 0.5 ms
        for 320x240 on the development VM, cv2.rotate 0.04 ms)."""
        import cv2

        if self.k:
            img = cv2.rotate(img, (cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)[self.k - 1])
        if self.flip_v or self.flip_h:
            img = cv2.flip(img, -1 if self.flip_v and self.flip_h else 0 if self.flip_v else 1)
        return img

    def __str__(self) -> str:
        turn = {0: "", 1: "rotated 90 degrees counterclockwise", 2: "rotated 180 degrees",
                3: "rotated 90 degrees clockwise"}[self.k]
        flips = [f for f, on in (("flipped vertically", self.flip_v), ("flipped horizontally", self.flip_h)) if on]
        return ", then ".join(x for x in [turn, *flips] if x) or "as stored"


UPRIGHT = Orientation()


def _clockwise_degrees(m: np.ndarray) -> float | None:
    """The clockwise rotation [0, 360) a display matrix (9 int32, 16.16 fixed point in a, b, c, d) asks for,
    as FFmpeg reckons it (fftools' get_rotation of av_display_rotation_get), or None for a degenerate one."""
    a, b, c, d = (float(v) / 65536.0 for v in (m[0], m[1], m[3], m[4]))
    s0, s1 = math.hypot(a, c), math.hypot(b, d)
    if s0 == 0 or s1 == 0:
        return None
    theta = float(round(math.degrees(math.atan2(b / s1, a / s0))))
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


def _from_display_matrix(m: np.ndarray, theta: float | None) -> Orientation | None:
    """FFmpeg's autorotation (the transpose/hflip/vflip fftools inserts) for a display matrix m asking for
    `theta` degrees clockwise, or None for a rotation that is not a quarter turn."""
    if theta is None:
        return UPRIGHT  # a degenerate matrix: FFmpeg applies nothing either
    if abs(theta - 90) < 1:  # transpose "cclock_flip" (m[3] > 0) or "clock"
        return Orientation(1, flip_v=True) if m[3] > 0 else Orientation(3)
    if abs(theta - 180) < 1:
        return Orientation(0, flip_v=m[4] < 0, flip_h=m[0] < 0)
    if abs(theta - 270) < 1:  # transpose "clock_flip" (m[3] < 0) or "cclock"
        return Orientation(3, flip_v=True) if m[3] < 0 else Orientation(1)
    if abs(theta) < 1:
        return Orientation(0, flip_v=m[4] < 0)
    return None


def declared_orientation(stream, first_frame) -> tuple[Orientation, str | None]:
    """The orientation a video track declares and what declared it, for messages (None: nothing did): the
    display matrix its frames carry (mp4/mov tkhd matrix, Matroska projection: what phones write) or else a
    `rotate` tag (clockwise degrees; older FFmpeg exported it, Matroska keeps it as a ROTATE tag). A
    declaration that is not a quarter turn (or no angle) gives UPRIGHT and says why."""
    from av.sidedata.sidedata import Type

    matrix = None
    if first_frame is not None:
        try:
            sd = first_frame.side_data.get(Type.DISPLAYMATRIX)
        except (AttributeError, KeyError, ValueError):
            sd = None
        if sd is not None and len(bytes(sd)) == 36:
            matrix = np.frombuffer(bytes(sd), dtype="=i4")
    if matrix is not None:
        theta = _clockwise_degrees(matrix)
        got = _from_display_matrix(matrix, theta)
        if got is None:
            return UPRIGHT, (f"its display matrix rotates by {360 - theta:g} degrees counterclockwise, not a quarter "
                             f"turn, so the frames are used as stored")
        return got, "its display matrix" if got != UPRIGHT else None
    tags = {str(k).lower(): v for k, v in (stream.metadata or {}).items()}
    if "rotate" not in tags:
        return UPRIGHT, None
    try:
        degrees = float(tags["rotate"])
    except (TypeError, ValueError):
        degrees = math.nan
    quarter = round(degrees / 90) if math.isfinite(degrees) else 0
    if not math.isfinite(degrees) or abs(degrees - 90 * quarter) > 1:
        return UPRIGHT, (f"its rotate tag {escaped(str(tags['rotate']))[:40]!r} is not a quarter turn, so the "
                         f"frames are used as stored")
    return (Orientation((-quarter) % 4), "its rotate tag") if quarter % 4 else (UPRIGHT, None)


def _first_frame(container, stream):
    """(the first decoded frame or None, an iterator over every frame from the first on)."""
    import av

    frames = container.decode(stream)
    try:
        first = next(frames)
    except StopIteration:
        return None, iter(())
    except av.error.FFmpegError as exc:
        error = exc  # `exc` is unbound when the except block ends

        def failing():
            raise error
            yield  # a generator: the caller's decoding loop meets the error where it would have

        return None, failing()
    return first, itertools.chain([first], frames)


def video_orientation(path: Path, container, stream):
    """(Orientation, frames): the orientation of `stream` (declared_orientation), read from its first frame,
    and an iterator over all its frames from the first. Said at INFO when frames are turned, warned when a
    declaration cannot be followed."""
    first, frames = _first_frame(container, stream)
    orientation, by = declared_orientation(stream, first)
    if orientation != UPRIGHT:
        log.info("%s: %s says to show the video %s: frames are turned upright before anything sees them",
                 shown_path(path), by, orientation)
    elif by is not None:
        log.warning("%s: %s", shown_path(path), by)
    return orientation, frames
