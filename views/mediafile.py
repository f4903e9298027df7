"""Writing media files, and checking what a written file holds against what went into it.

Every file the product writes (`record`, `replay --annotate`, the demo sample, the tests' own recordings)
goes through MediaWriter: frames and audio are encoded as they come, each at its own time; the file is
written under a temporary name, read back (`read_span`: per track its start, end and frame or sample count,
as a player sees them) and compared with what was handed in before it takes its name. A file whose
timestamps were misread on the way (frames stamped in the wrong unit, audio shifted) is an OutputError, and
the file is removed, never left as if good.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from actstream.common.errors import OutputError
from actstream.common.files import shown_path

FPS = 25
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".wav": "wav", ".flac": "flac"}
TIME_TOLERANCE_S = 0.0015  # a track's start and end: containers round to their time base (Matroska: 1 ms)


@dataclass(frozen=True)
class Track:
    """One track as a file holds it: start and end in seconds from the file's zero, and its frames (video) or
    samples (audio, as decoded)."""

    start: float
    end: float
    count: int


@dataclass(frozen=True)
class Span:
    """What a media file holds: the container's duration (s, None if it states none) and its first video and
    audio tracks."""

    duration: float | None
    video: Track | None
    audio: Track | None

    def describe(self) -> str:
        parts = [f"{self.duration:.3f} s" if self.duration is not None else "no stated duration"]
        if self.video is not None:
            v = self.video
            parts.append(f"video {v.count} frames {v.start:.3f}-{v.end:.3f} s")
        if self.audio is not None:
            a = self.audio
            parts.append(f"audio {a.count} samples {a.start:.3f}-{a.end:.3f} s")
        return ", ".join(parts)


def read_span(path: str | Path) -> Span:
    """Read back a written file: video from its packets (count, first time, last time + duration; nothing
    decoded), audio decoded (samples, first time, end)."""
    import av

    with av.open(str(path)) as c:
        duration = c.duration / 1e6 if c.duration else None
        video = audio = None
        if c.streams.video:
            s = c.streams.video[0]
            pts = [(p.pts, p.duration or 0) for p in c.demux(s) if p.pts is not None]
            if pts:
                video = Track(float(min(p for p, _ in pts) * s.time_base),
                              float(max(p + d for p, d in pts) * s.time_base), len(pts))
    if _has_audio(path):
        with av.open(str(path)) as c:
            s = c.streams.audio[0]
            first, count = None, 0
            for frame in c.decode(s):
                if first is None and frame.time is not None:
                    first = frame.time
                count += frame.samples
            if first is not None:
                audio = Track(first, first + count / s.rate, count)
    return Span(duration, video, audio)


def _has_audio(path: str | Path) -> bool:
    import av

    with av.open(str(path)) as c:
        return bool(c.streams.audio)


def differences(got: Span, want: Span, audio_slack: int = 0, rate: int | None = None) -> list[str]:
    """How `got` (read back) differs from `want` (what went in). Frames: the count exactly, the start and the
    end within TIME_TOLERANCE_S. Audio likewise, except that a lossy codec's frames (audio_slack samples at
    `rate`) may show: its priming before the first sample (a start up to one frame early) and the padding of
    its last frame (an end up to one frame late), so up to two frames more samples."""
    out = []
    for kind, g, w in (("video", got.video, want.video), ("audio", got.audio, want.audio)):
        if w is None and g is None:
            continue
        if w is None or g is None:
            out.append(f"{kind}: {'none went in' if w is None else 'none in the file'}")
            continue
        unit, extra = ("frames", 0) if kind == "video" else ("samples", audio_slack)
        frame_s = extra / rate if extra and rate else 0.0
        if not 0 <= g.count - w.count <= 2 * extra:
            out.append(f"{kind}: {g.count} {unit} in the file, {w.count} went in")
        if not -frame_s - TIME_TOLERANCE_S <= g.start - w.start <= TIME_TOLERANCE_S:
            out.append(f"{kind} starts at {g.start:.3f} s in the file, {w.start:.3f} s went in")
        if not -TIME_TOLERANCE_S <= g.end - w.end <= frame_s + TIME_TOLERANCE_S:
            out.append(f"{kind} ends at {g.end:.3f} s in the file, {w.end:.3f} s went in")
    return out


class MediaWriter:
    """Frames and audio encoded into a media file as they come, so memory does not grow with the length;
    written under a temporary name, checked (read_span against what went in) and renamed at close(): an
    OutputError and no file if they differ. A `with` block that raises removes it instead.

    size: (width, height) of every frame (even numbers for yuv420p) or None for audio alone; fps: the nominal
    frame rate; audio_rate: Hz or None for video alone; audio_layout: "mono" or "stereo"; time_base: the unit
    of the pts given to frame() (default 1/fps: frame numbers); options: the video encoder's; metadata: the
    container's tags (e.g. creation_time). After close(), `span` is what the file holds."""

    def __init__(self, path: str | Path, size: tuple[int, int] | None, fps: float = FPS,
                 audio_rate: int | None = None, audio_layout: str = "mono", vcodec: str = "libx264",
                 acodec: str = "aac", time_base: Fraction | None = None, options: dict | None = None,
                 metadata: dict | None = None):
        import av

        self.path = Path(path)
        muxer = MUXERS.get(self.path.suffix.lower()) or (None if self.path.suffix else "mp4")
        # a name that no reader takes for a recording (train lists media suffixes), should the process die
        self.tmp = self.path.with_name(f".{self.path.name}.partial" if muxer else f".tmp.{self.path.name}")
        self._out = av.open(str(self.tmp), "w", format=muxer)
        self._vs = self._as = self._convert = self._fifo = None
        self.frames = 0
        self.fps = Fraction(fps).limit_denominator(1001)
        self.time_base = time_base or 1 / self.fps
        self._tick = max(1, round(1 / (self.fps * self.time_base)))  # pts of one frame at the nominal rate
        self._pending = None  # (VideoFrame, pts): encoded once the next frame's pts gives its duration
        self._durations: dict[int, int] = {}  # pts -> duration of frames handed to the encoder
        self._first_pts = self._end_pts = None
        self.audio_start: int | None = None  # sample index (at audio_rate) of the first sample
        self.samples = 0  # samples written after it
        self.span: Span | None = None
        try:
            for k, v in (metadata or {}).items():
                self._out.metadata[k] = v
            if size is not None:
                self._vs = self._out.add_stream(vcodec, rate=self.fps)
                self._vs.width, self._vs.height = size
                if vcodec in ("libx264", "mpeg4", "h264"):
                    self._vs.pix_fmt = "yuv420p"
                if time_base is not None:
                    self._vs.time_base = self._vs.codec_context.time_base = time_base
                opts = options if options is not None else ({"crf": "28", "preset": "veryfast"}
                                                            if vcodec == "libx264" else {})
                self._vs.options = opts
            if audio_rate is not None:
                self._as = self._out.add_stream(acodec, rate=audio_rate, layout=audio_layout)
                self._frame_size = self._as.codec_context.frame_size or 1024  # known once opened; any size then
                self._convert = av.AudioResampler(format="fltp", layout=audio_layout, rate=audio_rate)
                self._fifo = av.AudioFifo()
        except BaseException:
            self._out.close()
            self.tmp.unlink(missing_ok=True)
            raise

    # video ------------------------------------------------------------------------------------------------
    def frame(self, img: np.ndarray, pts: int | None = None) -> None:
        """One BGR frame, (H, W, 3) uint8, at `pts` (in time_base units, after the previous frame's), or at
        the next step of the nominal rate."""
        import av

        if pts is None:
            pts = 0 if self._first_pts is None else self._pending[1] + self._tick
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        frame.pts, frame.time_base = pts, self.time_base
        if self._first_pts is None:
            self._first_pts = pts
        self._encode_pending(pts)
        self._pending = (frame, pts)
        self.frames += 1

    def _encode_pending(self, next_pts: int | None) -> None:
        """Encode the frame held back, lasting until next_pts (None: one step of the nominal rate)."""
        if self._pending is None:
            return
        frame, pts = self._pending
        self._pending = None
        end = next_pts if next_pts is not None else pts + self._tick
        if end <= pts:
            raise ValueError(f"frame pts {end} is not after the previous frame's {pts}")
        self._durations[pts] = end - pts
        self._end_pts = end
        self._mux_video(self._vs.encode(frame))

    def _mux_video(self, packets) -> None:
        for packet in packets:
            packet.duration = self._durations.pop(packet.pts, packet.duration)
            self._out.mux(packet)

    # audio ------------------------------------------------------------------------------------------------
    def audio(self, planar: np.ndarray | None, start: int | None = None) -> None:
        """Float audio, (channels, samples) in the writer's layout. start: the index (at the writer's rate,
        from the file's zero) of its first sample; None follows what came before. A start later than that
        leaves silence between, an earlier one drops what overlaps. None as planar flushes."""
        import av

        if planar is None:
            self._encode_audio(flush=True)
            return
        planar = np.ascontiguousarray(planar, np.float32)
        planar = self._place(planar, start)
        if planar.shape[1]:
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=self._as.layout.name)
            frame.sample_rate = self._as.rate
            self._fifo.write(frame)
            self._encode_audio()

    def audio_frame(self, frame, t: float | None = None) -> None:
        """A decoded av.AudioFrame of any format, layout or rate, converted to the writer's; t: the time (s,
        from the file's zero) of its first sample, placed as audio() places `start`."""
        frame.pts = None  # timing is ours: the converter must not insert or drop samples on its own
        for out in self._convert.resample(frame):
            self.audio(out.to_ndarray(), None if t is None else int(round(t * self._as.rate)))
            t = None

    def _place(self, planar: np.ndarray, start: int | None) -> np.ndarray:
        if self.audio_start is None:
            self.audio_start = start or 0
            return planar
        if start is None:
            return planar
        gap = start - (self.audio_start + self.samples + self._fifo.samples)
        if gap > 0:
            import av

            silence = av.AudioFrame.from_ndarray(np.zeros((planar.shape[0], gap), np.float32), format="fltp",
                                                 layout=self._as.layout.name)
            silence.sample_rate = self._as.rate
            self._fifo.write(silence)
        elif gap < 0:
            planar = planar[:, min(-gap, planar.shape[1]):]
        return planar

    def _encode_audio(self, flush: bool = False) -> None:
        """Encode what the FIFO holds in the codec's frame size; flush: all of it, and the encoder's tail."""
        while True:
            frame = self._fifo.read(self._frame_size, partial=flush)
            if frame is None:
                break
            frame.pts, frame.time_base = self.audio_start + self.samples, Fraction(1, self._as.rate)
            self.samples += frame.samples
            for packet in self._as.encode(frame):
                self._out.mux(packet)
        if flush:
            for packet in self._as.encode(None):
                self._out.mux(packet)

    # the end ----------------------------------------------------------------------------------------------
    def expected(self) -> Span:
        """What went in, as read_span would find it in a faithful file."""
        video = audio = None
        if self._vs is not None and self.frames:
            video = Track(float(self._first_pts * self.time_base), float(self._end_pts * self.time_base), self.frames)
        if self._as is not None and self.samples:
            rate = self._as.rate
            audio = Track(self.audio_start / rate, (self.audio_start + self.samples) / rate, self.samples)
        ends = [t.end for t in (video, audio) if t is not None]
        return Span(max(ends) if ends else None, video, audio)

    def close(self, end_pts: int | None = None) -> Path:
        """Flush, check and rename; end_pts: where the last frame ends (time_base units; default one step of
        the nominal rate after it starts). Raises OutputError, leaving no file, if the file is not what went
        in."""
        if self._out is None:
            return self.path
        try:
            if self._vs is not None:
                self._encode_pending(end_pts)
                self._mux_video(self._vs.encode())
            if self._as is not None:
                self._encode_audio(flush=True)
        except BaseException:
            self.abort()
            raise
        out, self._out = self._out, None
        out.close()
        want = self.expected()
        try:
            got = read_span(self.tmp)
        except Exception as exc:
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"{shown_path(self.path)}: the written file cannot be read back ({exc}): it was removed") from exc
        # a lossy codec pads its last frame; PCM and FLAC give back exactly what went in
        lossless = self._as is None or self._as.codec_context.name == "flac" or \
            self._as.codec_context.name.startswith("pcm_")
        slack = 0 if lossless else self._as.codec_context.frame_size or self._frame_size
        problems = differences(got, want, slack, self._as.rate if self._as is not None else None)
        if problems:
            self.tmp.unlink(missing_ok=True)
            raise OutputError(f"{shown_path(self.path)}: the written file is not what went in ({'; '.join(problems)}): it was "
                              f"removed; write .mkv or .mp4 (a container that keeps each frame's time), and "
                              f"report it if that was one")
        self.span = got
        self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> MediaWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_media(path: str | Path, frames, audio: np.ndarray | None, rate: int = 16000, fps: int = FPS,
                vcodec: str = "libx264", acodec: str = "aac") -> Path:
    """Write BGR frames (an iterable of (H, W, 3) uint8, encoded as they come) and/or float audio (samples,
    channels) to a media file, atomically and checked. Used for the demo sample and by the tests to make their
    own small recordings."""
    frames = iter(frames) if frames is not None else None
    first = next(frames, None) if frames is not None else None
    size = (first.shape[1], first.shape[0]) if first is not None else None
    layout = None if audio is None else ("mono" if audio.shape[1] == 1 else "stereo")
    with MediaWriter(path, size, fps, rate if audio is not None else None, layout or "mono", vcodec, acodec) as w:
        if first is not None:
            for img in itertools.chain([first], frames):
                w.frame(img)
        if audio is not None:
            planar = np.ascontiguousarray(audio.T.astype(np.float32))
            for i in range(0, planar.shape[1], 1024):
                w.audio(planar[:, i:i + 1024])
    return Path(path)
