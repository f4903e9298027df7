"""`actstream record`: camera and/or microphone into one file, every frame and sample at its capture time.

Files land in DATASET/LABEL/<label>_<time>.mkv (H.264 + FLAC in Matroska), the layout `actstream train`
reads. The devices are the live path's supervised captures (stream/capture.py); record takes every frame the
camera delivers (its FrameQueue tap, not the newest-frame ring the step loop reads) and every audio block
with the time it arrived (the microphone's BlockLog), and stream/stamping.py puts both on one clock whose
zero is the recording's start, written as the file's creation_time. The file is read back and compared
with what was captured before it takes its name (stream/mediafile.py).
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from actstream.common.errors import ConfigError, OutputError, SourceError
from actstream.common.files import shown_path
from actstream.engines.bundle import MAX_LABEL_CHARS
from actstream.views.mediafile import TIME_TOLERANCE_S, MediaWriter, Span
from actstream.views.stamping import AudioPlacement, AudioPlacer, VideoStamps

log = logging.getLogger(__name__)
RATE = 16000
BLOCK_MS = 20  # microphone callback block
WARMUP_FRAMES = 6  # frames timed before the start, to state the camera's rate in the file
WARMUP_S = 2.0  # at most this long
MAX_FPS = 120.0  # the most a file states (a camera that delivers in bursts has no rate of its own)
TAIL_S = 1.0  # after the end, how long the microphone's last blocks are waited for
TAIL_LOOK_S = 0.1  # what is waited for: the blocks delivered up to this long after the end

MAX_LABEL = MAX_LABEL_CHARS  # characters of --label (a class name, a folder name and the start of a file name)
MAX_LABEL_BYTES = 192  # in UTF-8: LABEL_<time>-N.mkv and its temporary name stay under the 255-byte name limit


def check_label(label: str) -> str:
    """A class label usable as a folder name: 1 to 64 letters (any script), digits, - or _."""
    if not label or len(label) > MAX_LABEL or not all(c.isalnum() or c in "-_" for c in label) \
            or label[0] == "-" or len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        shown = repr(label[:40]) + ("..." if len(label) > 40 else "")
        raise ConfigError(f"--label {shown} ({len(label)} characters) is not a usable class name: use 1 to "
                          f"{MAX_LABEL} letters, digits, - or _ (at most {MAX_LABEL_BYTES} bytes in UTF-8)")
    return label


@dataclass
class Recording:
    """A recording written and checked: its file, what the file holds, and what was captured for it.
    delivered: frames the camera delivered inside the recording; fps: their mean rate; longest_ms: the
    longest interval between two of them; audio: how the microphone's samples were placed (in samples)."""

    path: Path
    seconds: float
    span: Span
    delivered: int = 0
    fps: float | None = None
    longest_ms: int = 0
    audio: AudioPlacement | None = None

    def summary(self) -> str:
        parts = [f"recorded {self.path}: {self.span.duration:.2f} s (asked {self.seconds:g} s)"]
        v, a = self.span.video, self.span.audio
        if v is not None:
            parts.append(f"video {v.count} frames {v.start:.2f}-{v.end:.2f} s at {self.fps or 0:.1f} fps, "
                         f"every frame the camera delivered (longest interval {self.longest_ms} ms)")
        if a is not None:
            p = self.audio
            parts.append(f"audio {a.start:.2f}-{a.end:.2f} s ({p.captured / RATE:.2f} s captured, "
                         f"{p.gaps} gaps as {p.silence / RATE:.2f} s of silence, {p.cut / RATE:.3f} s cut)")
        return "; ".join(parts)


def record(dataset: str | Path, label: str, seconds: float, camera: str, mic: str,
           stall_s: float = 2.0) -> Recording:
    """Record `seconds` of camera and/or microphone; returns the recording, written atomically and checked.
    Everything that can be known wrong is refused before a device opens or a folder is made."""
    from actstream.stream.capture import CameraCapture, MicCapture
    from actstream.views.outputs import check_output_folder
    from actstream.stream.rings import FrameQueue

    check_label(label)
    if not 0 < seconds <= 3600:
        raise ConfigError(f"--seconds {seconds} out of range: expected 0 < seconds <= 3600")
    if camera == "none" and mic == "none":
        raise ConfigError("--camera none and --mic none: nothing to record: give a camera, a microphone or both "
                          "(see `actstream devices`)")
    dataset = Path(dataset)
    check_output_folder("--dataset", dataset)
    folder = dataset / label
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--label {label}: {shown_path(folder)} is a file, not a folder: move it or choose another "
                          f"label")
    cam = CameraCapture(camera, 2, time.time(), stall_s=stall_s) if camera != "none" else None
    if cam is not None:
        cam.tap = FrameQueue()
    microphone = MicCapture(mic, RATE, ring_s=10.0, block_ms=BLOCK_MS, stall_s=stall_s) if mic != "none" else None
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        if cam is not None:
            cam.start()
        if microphone is not None:
            microphone.start()
        session = _Session(cam, microphone, seconds)
        folder.mkdir(parents=True, exist_ok=True)
        return session.run(_free_name(folder, label))
    except BaseException:
        _drop_if_empty(made)
        raise
    finally:
        for device in (microphone, cam):
            if device is not None:
                device.close()


class _Session:
    """One recording: the devices' deliveries drained into the writer on the recording's clock."""

    def __init__(self, cam, mic, seconds: float):
        self.cam, self.mic, self.seconds = cam, mic, seconds
        self.fps = self._camera_rate() if cam is not None else None
        self.start = time.time()  # t = 0; frames and samples captured before it are not kept
        self.stamps = VideoStamps(seconds)
        self.placer = AudioPlacer(RATE, seconds) if mic is not None else None
        self._log_seen = self._consumed = 0  # BlockLog entries and ring samples taken so far
        self.writer: MediaWriter | None = None
        self._size = None

    def _camera_rate(self) -> Fraction:
        """The camera's frame rate from a few frames timed before the start (what the file states as its
        nominal rate; every frame keeps its own time anyway)."""
        walls: list[float] = []
        deadline = time.monotonic() + WARMUP_S
        while len(walls) < WARMUP_FRAMES and time.monotonic() < deadline:
            walls += [w for _, w in self.cam.tap.get_all(timeout_s=0.1)]
        if len(walls) < 2:
            return Fraction(25)
        intervals = sorted(b - a for a, b in zip(walls, walls[1:]))
        fps = min(MAX_FPS, max(1.0, 1.0 / max(1e-6, intervals[len(intervals) // 2])))
        return Fraction(round(fps)) if abs(fps - round(fps)) < 0.02 * fps else Fraction(fps).limit_denominator(1001)

    def run(self, path: Path) -> Recording:
        created = datetime.datetime.fromtimestamp(self.start, datetime.timezone.utc)
        size = None
        if self.cam is not None:
            h, w = self.cam.ring.shape[:2]
            size = (w - w % 2, h - h % 2)
        self._size = size
        self.writer = MediaWriter(path, size, self.fps or 25, RATE if self.mic is not None else None,
                                  vcodec="libx264", acodec="flac", time_base=Fraction(1, 1000),
                                  options={"crf": "23", "preset": "veryfast"},
                                  metadata={"creation_time": created.isoformat(timespec="microseconds")
                                            .replace("+00:00", "Z")})
        try:
            deadline = self.start + self.seconds
            while time.time() < deadline:
                if self.cam is not None:
                    self._drain_video(timeout_s=0.01)  # returns as soon as a frame is there
                else:
                    time.sleep(0.01)
                self._drain_audio()
                self._refuse_if_lost(f"stopped at {time.time() - self.start:.1f} s")
            self._drain_video(timeout_s=0.0)  # every frame captured before the end is in the queue by now
            if self.mic is not None:
                tail = time.monotonic() + TAIL_S
                # blocks delivered a little after the end bound where the last ones before it were captured
                while (self.placer.covered_until() or 0.0) < self.seconds + TAIL_LOOK_S and time.monotonic() < tail:
                    time.sleep(0.01)
                    self._drain_audio()
                self._drain_audio()
                for start, samples in self.placer.finish():
                    self.writer.audio(samples[None, :], start)
            return self._finish()
        except BaseException:
            self.writer.abort()
            raise

    def _drain_video(self, timeout_s: float) -> None:
        if self.cam is None:
            return
        w, h = self._size
        for img, wall in self.cam.tap.get_all(timeout_s):
            pts = self.stamps.pts_for(wall - self.start)
            if pts is not None:
                self.writer.frame(img[:h, :w], pts)

    def _drain_audio(self) -> None:
        if self.mic is None:
            return
        self._log_seen, ends, walls, broken = self.mic.blocks.read_since(self._log_seen)
        for end, wall, gap in zip(ends, walls, broken):
            samples = self.mic.ring.read(int(end), int(end) - self._consumed)
            self._consumed = int(end)
            for start, chunk in self.placer.add(samples, wall - self.start, bool(gap)):
                self.writer.audio(chunk[None, :], start)

    def _finish(self) -> Recording:
        """Close the file and compare it with what was captured: a mismatch is an OutputError, no file."""
        end_ms = self.stamps.end_ms
        if self.cam is not None:
            if not self.stamps.kept:
                raise SourceError(f"camera {self.cam.device!r} gave no frames in {self.seconds:g} s: check it "
                                  f"with `actstream devices`")
            # the last frame lasts until the end, unless the camera stopped well before it (then one interval)
            step_ms = 1000.0 / float(self.fps)
            if end_ms - self.stamps.last_pts > 2 * step_ms:
                end_ms = self.stamps.last_pts + int(round(step_ms))
        if self.mic is not None and not self.placer.done.written:
            raise SourceError(f"microphone {self.mic.name!r} gave no audio in the {self.seconds:g} s recorded (one "
                              f"can take a second or two to start): record longer, check it with `actstream "
                              f"devices`, or pass --mic none")
        self._refuse_if_lost("not kept")
        self.writer.close(end_ms if self.cam is not None else None)  # raises OutputError if the file is not it
        got = self.writer.span
        end = max(t.end for t in (got.video, got.audio) if t)
        problems = []
        if got.duration is None or abs(got.duration - end) > TIME_TOLERANCE_S:
            problems.append(f"the file states a length of {got.duration} s, its tracks end at {end:.3f} s")
        if self.cam is not None and got.video.count != self.stamps.kept:
            problems.append(f"{got.video.count} frames in the file, the camera delivered {self.stamps.kept}")
        if self.mic is not None and got.audio.count != self.placer.done.written:
            problems.append(f"{got.audio.count} samples in the file, {self.placer.done.written} captured and "
                            f"placed")
        if problems:
            self.writer.path.unlink(missing_ok=True)
            raise OutputError(f"{shown_path(self.writer.path)}: the recording does not hold what was captured "
                              f"({'; '.join(problems)}): it was removed; please report it")
        rec = Recording(self.writer.path, self.seconds, got, self.stamps.kept, self.stamps.rate(),
                        self.stamps.longest_ms, self.placer.done if self.placer else None)
        log.info("%s", rec.summary())
        return rec

    def _refuse_if_lost(self, what: str) -> None:
        """A recording that cannot hold everything captured is refused at once (not kept as if good)."""
        lost = self._lost()
        if lost:
            raise OutputError(f"the recording would not hold what was captured ({'; '.join(lost)}): {what}, no "
                              f"file kept; record again on a less busy machine or at a lower camera resolution")

    def _lost(self) -> list[str]:
        """What was captured but could not be written: frames the queue dropped, audio overwritten unread."""
        out = []
        if self.cam is not None and self.cam.tap.dropped:
            out.append(f"{self.cam.tap.dropped} of {self.cam.tap.delivered} frames the camera delivered were "
                       f"dropped: encoding fell behind")
        if self.mic is not None and (self.mic.ring.dropped or self.mic.blocks.dropped):
            out.append(f"captured audio was overwritten before it was written ({self.mic.ring.dropped / RATE:.2f} "
                       f"s, {self.mic.blocks.dropped} blocks): writing fell behind")
        return out


def _free_name(folder: Path, label: str) -> Path:
    """DATASET/LABEL/LABEL_<time>.mkv, with -2, -3... when a recording of the same second exists: never replaced."""
    stem = f"{label}_{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = folder / f"{stem}.mkv", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.mkv"
    return path


def _drop_if_empty(made: list[Path]) -> None:
    """A failed recording leaves none of the folders it made behind (only empty ones are removed)."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            return
