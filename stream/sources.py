"""Sources fill ring buffers; the step loop reads a Snapshot from them at each step time.

FileSource decodes a recording with PyAV on the caller's thread (replay: the virtual or the paced clock).
LiveSource drives one supervised capture per device (stream/capture.py: OpenCV camera, sounddevice
microphone), each owning its handle and writing into a preallocated ring.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from actstream.common.files import escaped, file_kind, shown_path
from actstream.common.errors import SourceError
from actstream.stream.orientation import video_orientation
from actstream.stream.rings import AudioRing, FrameRing
from actstream.stream.steps import Snapshot

log = logging.getLogger(__name__)

MAX_SIDE = 4096  # frames larger than this are refused: no webcam or recording of activity needs more
AUDIO_RATES = (4000, 384000)  # Hz accepted for an audio track (resampled to the model's rate)
MAX_CHANNELS = 32  # more is not a recording of a room (and FFmpeg's mixer refuses some layouts)
MAX_SAMPLE = 1e6  # |sample| beyond this (full scale is 1) is no recording; its square overflows the front end
MIN_SECONDS = 0.01  # the shortest step (step.step_ms >= 10): a recording shorter than this can give no label


def _open_container(path: Path):
    import av

    shown = shown_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise SourceError(f"{shown}: file not found: check the path") from exc
    except (OSError, ValueError) as exc:
        raise SourceError(f"{shown}: cannot be read ({getattr(exc, 'strerror', None) or exc}): check the path") from exc
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{shown}: is a folder, not a media file: pass a file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder, a device never ends: neither is a recording
        raise SourceError(f"{shown}: not a regular file ({file_kind(st.st_mode)}): pass a recording saved to a file")
    if st.st_size == 0:
        raise SourceError(f"{shown}: file is empty: pass a recording with audio or video")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise SourceError(f"{shown}: not a readable media file ({type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}): pass an mp4/mkv/avi/mpg/wav/flac/mp3 file") from exc


def _creation_time(metadata: dict) -> float:
    """The container's creation_time tag as Unix seconds (0.0 if absent): t = 0 on the virtual clock."""
    import datetime

    value = metadata.get("creation_time") if metadata else None
    if not value:
        return 0.0
    try:
        ts = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.timezone.utc)
    return ts.timestamp()


def _start_time(container) -> float:
    times = [float(s.start_time * s.time_base) for s in container.streams if s.start_time is not None
             and s.time_base is not None and s.type in ("audio", "video")]
    return min(times) if times else 0.0


def _check_audio_stream(path: Path, stream) -> None:
    """Refuse an audio track that has no decoder here or an absurd rate or channel count, before decoding."""
    ctx = stream.codec_context
    if ctx is None:
        tag = getattr(stream, "codec_tag", None) or "unknown"
        raise SourceError(f"{shown_path(path)}: audio codec {tag!r} is not supported (no decoder in this FFmpeg): convert it, "
                          f"e.g. ffmpeg -i IN -ar 16000 -ac 1 OUT.wav")
    if not AUDIO_RATES[0] <= (ctx.sample_rate or 0) <= AUDIO_RATES[1]:
        raise SourceError(f"{shown_path(path)}: audio sample rate {ctx.sample_rate} Hz not supported: expected "
                          f"{AUDIO_RATES[0]} to {AUDIO_RATES[1]} Hz (the file may be corrupt)")
    if not 1 <= (ctx.channels or 0) <= MAX_CHANNELS:
        # FFmpeg drops a count above its limit of 512 (FF_SANE_NB_CHANNELS) to 0 while probing the stream, so
        # PyAV reports "0 channels" for 65,535: the count the file declares is read from its header instead
        declared = ctx.channels or _declared_channels(path)
        count = f"{declared} audio channels" if declared else "an audio channel count of 0 or more than 512"
        raise SourceError(f"{shown_path(path)}: {count} not supported: expected 1 to {MAX_CHANNELS} (the file may be corrupt; "
                          f"mix it down, e.g. ffmpeg -i IN -ac 1 OUT.wav)")


def _declared_channels(path: Path) -> int | None:
    """The channel count a WAV (RIFF, RF64, BW64) header declares, or None: its `fmt ` chunk, found in the
    first 64 KiB."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
        return None
    i = 12
    while i + 8 <= len(head):
        cid, size = head[i:i + 4], struct.unpack_from("<I", head, i + 4)[0]
        if cid == b"fmt " and i + 12 <= len(head):
            return struct.unpack_from("<H", head, i + 10)[0]
        i += 8 + size + (size & 1)
    return None


def broken_samples(x: np.ndarray) -> np.ndarray | None:
    """A mask of the samples that are no usable audio, or None when there are none: NaN and infinity (a float
    WAV can hold them, and a float64 sample beyond float32's range becomes infinite when decoded) and
    magnitudes beyond MAX_SAMPLE. They would reach the front end and the model, and numpy would print its own
    warnings."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(x) <= MAX_SAMPLE)  # NaN compares False
    return bad if bad.any() else None


class _AudioTrack:
    """Decodes one audio stream to mono float32 at `rate` into an AudioRing, on demand."""

    def __init__(self, path: Path, rate: int, ring_s: float):
        import av

        self.path = path
        self.container = _open_container(path)
        if not self.container.streams.audio:
            self.container.close()
            raise SourceError(f"{shown_path(path)}: has no audio track: pass a file with audio to --audio")
        self.stream = self.container.streams.audio[0]
        try:
            _check_audio_stream(path, self.stream)
        except SourceError:
            self.container.close()
            raise
        self.rate = rate
        self.t0 = _start_time(self.container)
        self.ring = AudioRing(int(ring_s * rate))
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self._frames = self._decode()
        self.done = False
        self.errors = 0
        self.nonfinite = 0  # samples (at `rate`) replaced by silence because they were NaN or infinite
        dur = self.stream.duration * self.stream.time_base if self.stream.duration else None
        self.duration = float(dur) if dur else (self.container.duration / 1e6 if self.container.duration else None)

    def _decode(self) -> Iterator:
        import av

        first = True
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                self.errors += 1
                log.warning("%s: skipping an undecodable audio packet: %s", shown_path(self.path), exc)
                continue
            for frame in frames:
                if first and frame.time is not None:
                    # leading offset of the audio track against the container start, as silence
                    self.ring.skip_to(max(0, int(round((frame.time - self.t0) * self.rate))))
                    first = False
                for out in self.resampler.resample(frame):
                    yield out
        for out in self.resampler.resample(None):
            yield out

    def fill_until(self, index: int) -> None:
        import av

        while not self.done and self.ring.written < index:
            try:
                frame = next(self._frames)
            except StopIteration:
                self.done = True
                break
            except (av.error.FFmpegError, ValueError) as exc:  # a frame the resampler cannot take: stop there
                log.warning("%s: audio decoding stopped early: %s", shown_path(self.path), exc)
                self.done = True
                break
            self.ring.write(self._finite(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)))

    def _finite(self, x: np.ndarray) -> np.ndarray:
        """x with every sample that is no usable number replaced by silence, said once per track (see
        broken_samples)."""
        bad = broken_samples(x)
        if bad is None:
            return x
        if not self.nonfinite:
            first = (self.ring.written + int(np.argmax(bad))) / self.rate
            log.warning("%s: audio samples that are not finite numbers (NaN, infinity or beyond +-%g) from %.2f s "
                        "on: replaced with silence", shown_path(self.path), MAX_SAMPLE, first)
        self.nonfinite += int(bad.sum())
        return np.where(bad, np.float32(0.0), x)

    def close(self) -> None:
        self.container.close()


class _VideoTrack:
    """Decodes one video stream to BGR frames into a FrameRing, on demand."""

    def __init__(self, path: Path, capacity: int = 64):
        import av

        self.path = path
        self.container = _open_container(path)
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{shown_path(path)}: has no video track")
        self.stream = self.container.streams.video[0]
        if self.stream.codec_context is None:
            self.container.close()
            raise SourceError(f"{shown_path(path)}: video codec {getattr(self.stream, 'codec_tag', None) or 'unknown'!r} is not "
                              f"supported (no decoder in this FFmpeg): convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
        self.stream.thread_type = "AUTO"
        w, h = self.stream.codec_context.width, self.stream.codec_context.height
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            self.container.close()
            raise SourceError(f"{shown_path(path)}: video size {w}x{h} not supported: expected 1..{MAX_SIDE} px a side")
        # the rotation the container declares (a phone's portrait video) is applied before anything sees a frame
        self.orientation, self._frames = video_orientation(path, self.container, self.stream)
        self.shape = (w, h, 3) if self.orientation.turns else (h, w, 3)
        self.ring = FrameRing(capacity, self.shape)
        self.t0 = _start_time(self.container)
        self._pending = None  # (av frame, t): decoded, not yet converted; later than the last step time asked
        self.done = False
        self.last_t = -1.0
        self.av = av

    def fill_until(self, t: float) -> None:
        """Decode until a frame later than t is decoded, so the newest frame at or before t is known and in
        the ring. Only frames a step can see are converted to BGR and written: a frame followed by another
        at or before t never is, and converting costs about three times what decoding does (320x240)."""
        while not self.done and self.last_t <= t:
            try:
                frame = next(self._frames)
            except StopIteration:
                self.done = True
                break
            except self.av.error.FFmpegError as exc:
                log.warning("%s: video decoding stopped early: %s", shown_path(self.path), exc)
                self.done = True
                break
            ft = (frame.time if frame.time is not None else self.last_t + 0.04) - self.t0
            if self._pending is not None and ft > t:
                self._write(*self._pending)  # the newest frame at or before t
            self._pending = (frame, ft)
            self.last_t = ft
        if self._pending is not None and self.done:
            self._write(*self._pending)
            self._pending = None

    def _write(self, frame, ft: float) -> None:
        import cv2

        try:
            img = self.orientation.apply(frame.to_ndarray(format="bgr24"))
        except (self.av.error.FFmpegError, ValueError) as exc:  # a damaged frame: skip it, keep the stream
            log.warning("%s: skipping a frame that cannot be converted: %s", shown_path(self.path), exc)
            return
        if img.shape != self.shape:  # resolution changed mid-stream: keep the first size
            img = cv2.resize(img, (self.shape[1], self.shape[0]))
        self.ring.write(img, ft, 0.0)

    def close(self) -> None:
        self.container.close()


class FileSource:
    """Replay of a recording: video+audio container, audio alone, video alone, or video with --audio FILE.

    Timestamps come from the container (t = 0 at its start); audio is resampled to `sample_rate` and
    mixed to mono. `snapshot(t)` decodes just enough to answer for step time t.
    """

    live = False

    def __init__(self, path: str | Path, audio_path: str | Path | None = None, sample_rate: int = 16000,
                 window_samples: int = 15600, use_audio: bool = True, use_video: bool = True,
                 min_seconds: float = MIN_SECONDS):
        """min_seconds: refuse, before any step, a recording shorter than this (pass the step length: a
        recording shorter than one step gives no label). A recording between MIN_SECONDS and one step that
        got here is refused at its first step instead."""
        self.path = Path(path)
        self.name = escaped(self.path.name)  # `source` on the wire: text, whatever bytes the file name holds
        self.sample_rate = sample_rate
        self.window = window_samples
        self.audio: _AudioTrack | None = None
        self.video: _VideoTrack | None = None
        container = _open_container(self.path)
        try:
            has_a, has_v = bool(container.streams.audio), bool(container.streams.video)
            container_duration = container.duration / 1e6 if container.duration else None
            self.creation_time = _creation_time(container.metadata)
        finally:
            container.close()
        if not has_a and not has_v:
            raise SourceError(f"{shown_path(self.path)}: has no audio and no video track: pass a recording with either")
        try:
            if use_video and has_v:
                self.video = _VideoTrack(self.path)
            if use_audio and audio_path is not None:
                self.audio = _AudioTrack(Path(audio_path), sample_rate, ring_s=30.0)
                self.name = f"{escaped(self.path.name)}+{escaped(Path(audio_path).name)}"
            elif use_audio and has_a:
                self.audio = _AudioTrack(self.path, sample_rate, ring_s=30.0)
        except Exception:
            self.close()
            raise
        self.has_audio_track, self.has_video_track = has_a or audio_path is not None, has_v
        self.duration = container_duration
        self._buf = np.zeros(window_samples, dtype=np.float32)
        self._served = 0  # snapshots returned: none before the end means the recording is shorter than a step
        try:
            self._refuse_shorter_than(min_seconds)
        except SourceError:
            self.close()
            raise

    def _refuse_shorter_than(self, seconds: float) -> None:
        """Decode the first `seconds` (kept in the rings for the first steps) and refuse a shorter recording."""
        if self.audio is not None:
            self.audio.fill_until(int(round(seconds * self.sample_rate)))
        if self.video is not None:
            self.video.fill_until(seconds)
        if self.audio is None and self.video is None:
            return  # no track wanted (the caller refuses that, naming what the model needs)
        finished = (self.audio is None or self.audio.done) and (self.video is None or self.video.done)
        if finished and seconds > self.end_time() + 1e-6:
            raise self._too_short(seconds, "the shortest step" if seconds == MIN_SECONDS else "one step")

    def _too_short(self, step_s: float, what: str = "one step") -> SourceError:
        end = self.end_time()
        if end <= 0:
            return SourceError(f"{shown_path(self.path)}: no audio or video could be decoded (the recording is empty or damaged): "
                               f"pass a recording at least {what} ({step_s * 1000:.0f} ms) long")
        fix = "pass a longer recording" + (" or a model trained at a shorter step (actstream train --step-ms)"
                                           if step_s > MIN_SECONDS else "")
        return SourceError(f"{shown_path(self.path)}: the recording is {end * 1000:.1f} ms long, shorter than {what} "
                           f"({step_s * 1000:.0f} ms), so it gives no label: {fix}")

    def start(self) -> None:
        pass

    def end_time(self) -> float:
        """Media time of the end of the stream, known once decoding has finished."""
        ends = []
        if self.audio is not None:
            ends.append(self.audio.ring.written / self.sample_rate)
        if self.video is not None:
            ends.append(self.video.last_t + 1.0 / float(self.video.stream.average_rate or 25))
        return max(ends) if ends else 0.0

    def snapshot(self, t: float) -> Snapshot | None:
        """The inputs for step time t, or None once t is past the end of the recording."""
        end = int(round(t * self.sample_rate))
        if self.audio is not None:
            self.audio.fill_until(end)
        if self.video is not None:
            self.video.fill_until(t)
        finished = (self.audio is None or self.audio.done) and (self.video is None or self.video.done)
        if finished and t > self.end_time() + 1e-6:
            if self._served == 0:
                raise self._too_short(t)
            return None
        self._served += 1
        audio = self.audio.ring.read(end, self.window, self._buf).copy() if self.audio is not None else None
        frame = None
        if self.video is not None:
            got = self.video.ring.latest(t)
            frame, frame_t = (got[0], got[1]) if got is not None else (None, None)
        return Snapshot(t, frame, audio, 0.0, frame_t if frame is not None else None)

    def drops(self) -> dict[str, int]:
        return {"video": self.video.ring.dropped if self.video else 0,
                "audio": self.audio.ring.dropped if self.audio else 0}

    def health(self) -> None:
        return None

    def close(self) -> None:
        for track in (self.audio, self.video):
            if track is not None:
                track.close()


class LoopingSource:
    """A recording played again from its start each time it ends, time running on (a served stream that
    stands in for a camera). open_file(): a new FileSource of the recording. The LSTM sees one continuous
    stream; the picture jumps from the last frame to the first, as a cut does."""

    live = False

    def __init__(self, open_file):
        self._open = open_file
        self.inner = open_file()
        self.name = self.inner.name
        self.has_audio_track, self.has_video_track = self.inner.has_audio_track, self.inner.has_video_track
        self.duration = None
        self.creation_time = self.inner.creation_time
        self.offset = 0.0  # stream time at which the current pass started
        self._last_t = 0.0
        self.loops = 0

    def start(self) -> None:
        self.inner.start()

    def snapshot(self, t: float) -> Snapshot | None:
        snap = self.inner.snapshot(t - self.offset)
        if snap is None:
            if self._last_t <= self.offset:  # a pass that gave nothing: never loop on an empty file
                return None
            self.inner.close()
            self.inner = self._open()
            self.offset, self.loops = self._last_t, self.loops + 1
            snap = self.inner.snapshot(t - self.offset)
            if snap is None:
                return None
        self._last_t = t
        frame_t = None if snap.frame_t is None else snap.frame_t + self.offset
        return Snapshot(t, snap.frame, snap.audio, snap.wall, frame_t)

    def drops(self) -> dict[str, int]:
        return self.inner.drops()

    def health(self) -> None:
        return None

    def close(self) -> None:
        self.inner.close()


class ArraySource:
    """A recording already in memory (mono float32 samples at `sample_rate`): the evaluation's mixed timelines.
    Step t gets the `window` samples ending at sample round(t * rate); the stream ends where they run out."""

    live = False

    def __init__(self, samples: np.ndarray, sample_rate: int, window: int, name: str = "memory"):
        self.samples, self.sample_rate, self.window, self.name = samples, sample_rate, window, name

    def start(self) -> None:
        pass

    def snapshot(self, t: float) -> Snapshot | None:
        end = int(round(t * self.sample_rate))
        if end > len(self.samples):
            return None
        return Snapshot(t, None, self.samples[max(0, end - self.window):end], 0.0)

    def drops(self) -> dict[str, int]:
        return {"audio": 0}

    def health(self) -> None:
        return None

    def close(self) -> None:
        pass


class LiveSource:
    """Webcam and/or microphone, each a supervised capture (stream/capture.py), read at each step on the
    wall clock. A device that stalls or is lost is reconnected in the background; meanwhile the model gets
    no frame (the last embedding is reused) or no audio (silence), and `health()` says so in every status.
    A model that knows which heads need which input (model.json head_inputs) publishes only the heads whose
    input is there: a camera that drops out leaves the audio labels running."""

    live = True

    def __init__(self, camera: str, mic: str, sample_rate: int, window_samples: int, frame_ring: int = 8,
                 audio_ring_s: float = 5.0, audio_block_ms: int = 20, stall_s: float = 2.0):
        from actstream.stream.capture import CameraCapture, MicCapture
        from actstream.stream.devices import redact

        if camera == "none" and mic == "none":
            raise SourceError("both --camera and --mic are none: enable at least one device")
        self.start_wall = time.time()
        self.camera = (CameraCapture(camera, frame_ring, self.start_wall, stall_s=stall_s)
                       if camera != "none" else None)
        self.mic = MicCapture(mic, sample_rate, audio_ring_s, audio_block_ms, stall_s=stall_s) if mic != "none" else None
        self.name = escaped("live:" + "+".join(x for x in (f"camera={redact(camera)}" if self.camera else "",
                                                           f"mic={mic}" if self.mic else "") if x))
        self.window = window_samples
        self.has_audio_track, self.has_video_track = self.mic is not None, self.camera is not None
        self._buf = np.zeros(window_samples, dtype=np.float32)

    def start(self) -> None:
        try:
            if self.camera is not None:
                self.camera.start()
            if self.mic is not None:
                self.mic.start()
        except Exception:
            self.close()
            raise
        self.start_wall = time.time()
        if self.camera is not None:
            self.camera.start_wall = self.start_wall

    def snapshot(self, t: float) -> Snapshot:
        walls = []
        frame = audio = frame_wall = None
        if self.camera is not None and self.camera.ring is not None and self.camera.fresh():
            got = self.camera.ring.latest()
            if got is not None:
                frame, _, frame_wall = got
                walls.append(frame_wall)
        if self.mic is not None:
            ring = self.mic.ring
            if self.mic.fresh():
                audio = ring.read(ring.written, self.window, self._buf).copy()
                if ring.written:
                    walls.append(ring.wall)
            # else no audio: a model told its inputs' presence stops the audio heads; another hears silence
        return Snapshot(t, frame, audio, min(walls) if walls else time.time(), frame_wall)

    def drops(self) -> dict[str, int]:
        return {"video": self.camera.ring.dropped if self.camera and self.camera.ring else 0,
                "audio": self.mic.ring.dropped if self.mic else 0,
                "audio_overruns": self.mic.ring.overruns if self.mic else 0}

    def health(self) -> dict[str, dict]:
        """Per device: state (ok, stalled, lost, reconnecting, stopped), reconnects, and the last problem."""
        out = {}
        if self.camera is not None:
            out["camera"] = self.camera.health()
        if self.mic is not None:
            out["mic"] = self.mic.health()
        return out

    def close(self) -> None:
        if self.mic is not None:
            self.mic.close()
        if self.camera is not None:
            self.camera.close()


def load_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Decode any audio file to mono float32 at `rate` with PyAV (the same decoder as replay)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SourceError(f"{shown_path(path)}: has no audio track")
            res = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in res.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
    except av.error.FFmpegError as exc:
        raise SourceError(f"{shown_path(path)}: cannot be decoded: {exc}") from exc
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    bad = broken_samples(x)
    if bad is not None:
        log.warning("%s: %d audio samples that are not finite numbers (NaN, infinity or beyond +-%g): replaced with "
                    "silence", shown_path(path), int(bad.sum()), MAX_SAMPLE)
        x[bad] = 0.0
    return x
