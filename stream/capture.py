"""Live capture: one supervised capture per device, each writing into a preallocated ring.

CameraCapture: a reader thread owns an OpenCV VideoCapture (index, V4L2 path or URL) and copies frames into a
FrameRing; a watchdog thread restarts it when `read()` stalls (OpenCV can block for ever on a V4L2 device or
an IP camera that reconnected) or the device disappears, with exponential backoff. A stalled reader cannot be
interrupted: it is abandoned (its frames are ignored) and releases its handle when `read()` returns.

MicCapture: a sounddevice InputStream whose callback copies into an AudioRing (no blocking, no allocation)
and counts device overflows; a watchdog reopens the stream, with backoff, when callbacks stop arriving.

Each also keeps what a recorder needs to stamp every frame and sample with its capture time: the camera hands
every frame to an optional FrameQueue (`tap`), the microphone logs each block's arrival in a BlockLog.

Both report `health()`: state ("ok", "stalled", "lost", "reconnecting", "stopped"), reconnects, stalls and
the last problem, which the step loop puts into each status message.
"""

from __future__ import annotations

import logging
import threading
import time

from actstream.stream.devices import redact, resolve_camera
from actstream.common.errors import SourceError
from actstream.stream.rings import AudioRing, BlockLog, FrameQueue, FrameRing

log = logging.getLogger(__name__)

OPEN_GRACE_S = 5.0  # a newly opened microphone stream must deliver its first block within this
MAX_ABANDONED = 4  # stalled readers left blocked in read(); past this, no new reader starts until one exits


class Backoff:
    """Delays between reconnect attempts in seconds: first, first*2, ... up to most; reset() after a success."""

    def __init__(self, first: float = 0.25, most: float = 8.0):
        self.first, self.most = first, most
        self.next = first

    def take(self) -> float:
        delay = self.next
        self.next = min(self.most, self.next * 2)
        return delay

    def reset(self) -> None:
        self.next = self.first


class CameraCapture:
    """A supervised camera. device: index, name, V4L2 path or URL (see devices.resolve_camera);
    ring_capacity: frames kept; start_wall: Unix time of t = 0; open_timeout_s: the first frame must arrive
    within this; stall_s: no frame for this long means the camera stalled; backoff: reconnect delays."""

    def __init__(self, device: str, ring_capacity: int, start_wall: float, open_timeout_s: float = 10.0,
                 stall_s: float = 2.0, backoff: Backoff | None = None):
        self.device = redact(device)  # for messages; the target keeps any credentials
        self.target = resolve_camera(device)
        self.ring_capacity = ring_capacity
        self.start_wall = start_wall
        self.open_timeout_s = open_timeout_s
        self.stall_s = stall_s
        self.backoff = backoff or Backoff()
        self.ring: FrameRing | None = None
        self.tap: FrameQueue | None = None  # set before start() by a reader that needs every frame (record)
        self.stop_event = threading.Event()
        self.state = "starting"
        self.reconnects = 0
        self.stalls = 0
        self.problem: str | None = None
        self._gen = 0  # the current reader's generation; older readers are abandoned
        self._gen_frames = 0  # frames the current reader delivered
        self._progress = time.monotonic()  # when the current reader last delivered a frame (or started)
        self._first = threading.Event()
        self._reader: threading.Thread | None = None
        self._abandoned: list[threading.Thread] = []
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()

    # reader side -------------------------------------------------------------------------------------
    def _open(self):
        import cv2

        ms = int(self.open_timeout_s * 1000)
        # FFmpeg's own timeouts (URLs) let an abandoned reader exit; the watchdog acts well before them
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_s * 3000)]
        return cv2.VideoCapture(self.target, cv2.CAP_ANY, params)

    def _read_loop(self, gen: int) -> None:
        import cv2

        cap = None
        try:
            cap = self._open()
            if not cap.isOpened():
                self.problem = f"camera {self.device!r} cannot be opened"
                return
            while not self.stop_event.is_set() and gen == self._gen:
                ok, frame = cap.read()
                if gen != self._gen or self.stop_event.is_set():
                    break  # abandoned while blocked in read(): a newer reader owns the ring now
                if not ok or frame is None:
                    self.problem = f"camera {self.device!r} stopped giving frames"
                    break
                wall = time.time()
                with self._lock:
                    if gen != self._gen:
                        break
                    if self.ring is None:
                        if frame.ndim != 3 or frame.shape[2] != 3:
                            self.problem = f"camera {self.device!r} gives {frame.shape} frames, not colour (H, W, 3)"
                            return
                        self.ring = FrameRing(self.ring_capacity, frame.shape)
                    elif frame.shape != self.ring.shape:  # the camera changed resolution: keep the first size
                        frame = cv2.resize(frame, (self.ring.shape[1], self.ring.shape[0]))
                    self.ring.write(frame, wall - self.start_wall, wall)
                    if self.tap is not None:
                        self.tap.put(frame, wall)
                    self._gen_frames += 1
                    self._progress = time.monotonic()
                self._first.set()
        except cv2.error as exc:
            self.problem = f"camera {self.device!r}: OpenCV error: {str(exc).strip().splitlines()[-1]}"
        finally:
            if cap is not None:
                cap.release()

    def _spawn(self) -> None:
        with self._lock:
            self._gen += 1
            self._gen_frames = 0
            self._progress = time.monotonic()
            gen = self._gen
        self._reader = threading.Thread(target=self._read_loop, args=(gen,), name=f"camera-read-{gen}", daemon=True)
        self._reader.start()

    # supervisor side ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the camera; raises SourceError if no frame arrives within open_timeout_s."""
        self._spawn()
        deadline = time.monotonic() + self.open_timeout_s
        while not self._first.is_set() and time.monotonic() < deadline and self._reader.is_alive():
            self._first.wait(0.05)
        if not self._first.is_set():
            self.stop_event.set()
            self._gen += 1  # abandon the reader
            if self._reader.is_alive():
                raise SourceError(f"camera {self.device!r} did not give a frame within {self.open_timeout_s:.0f} s: "
                                  f"check the device or URL (`actstream devices`), or pass --camera none")
            raise SourceError(f"camera {self.device!r} cannot be opened or gives no frames: check `actstream devices`, "
                              f"or pass --camera none to run without it")
        self.state = "ok"
        self._watchdog = threading.Thread(target=self._watch, name="camera-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self.stop_event.wait(0.05):
            age = time.monotonic() - self._progress
            limit = self.stall_s if self._gen_frames else self.open_timeout_s
            reader = self._reader
            if reader.is_alive() and age <= limit:
                if self._gen_frames and self.state != "ok":
                    log.warning("camera %r is back after %d reconnect(s)", self.device, self.reconnects)
                    self.state = "ok"
                    self.backoff.reset()
                continue
            was_ok = self.state == "ok"
            if reader.is_alive():
                self.stalls += 1
                self.state = "stalled"
                self.problem = f"camera {self.device!r} gave no frame for {age:.1f} s (read() stalled)"
                with self._lock:
                    self._gen += 1  # abandon it; it releases its handle if read() ever returns
                self._abandoned.append(reader)
            else:
                self.state = "lost"
            # one warning when the camera goes; each further failed attempt is logged at INFO (no log flood)
            log.log(logging.WARNING if was_ok or self.state == "stalled" else logging.INFO, "%s; reconnecting",
                    self.problem or f"camera {self.device!r} lost")
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            delay = self.backoff.take()
            if self.stop_event.wait(delay):
                return
            while len(self._abandoned) >= MAX_ABANDONED and not self.stop_event.wait(self.stall_s):
                self._abandoned = [t for t in self._abandoned if t.is_alive()]
            self.state = "reconnecting"
            self.reconnects += 1
            self._spawn()

    def fresh(self) -> bool:
        """True while frames keep arriving (state ok); a stale frame is not passed to the model."""
        return self.state == "ok"

    def health(self) -> dict:
        return {"state": self.state, "reconnects": self.reconnects, "stalls": self.stalls,
                "frames": self.ring.written if self.ring is not None else 0, "problem": self.problem}

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the watchdog and the reader; a reader blocked in read() is left behind (daemon) and logged."""
        self.stop_event.set()
        with self._lock:
            self._gen += 1
        for th in (self._watchdog, self._reader):
            if th is not None and th is not threading.current_thread():
                th.join(timeout=timeout_s)
                if th.is_alive():
                    log.warning("camera thread %s did not stop within %.0f s; leaving it (daemon)", th.name, timeout_s)
        self.state = "stopped"


class MicCapture:
    """A supervised microphone. device: sounddevice index or name, or "default"; sample_rate: Hz (mono);
    ring_s: seconds kept; block_ms: callback block length; stall_s: no callback for this long means the
    microphone is lost and the stream is reopened."""

    def __init__(self, device: str, sample_rate: int, ring_s: float, block_ms: int, stall_s: float = 2.0,
                 backoff: Backoff | None = None):
        self.device = None if device == "default" else (int(device) if device.strip().isdigit() else device)
        self.name = device
        self.sample_rate = sample_rate
        self.ring = AudioRing(int(ring_s * sample_rate))
        self.block = int(sample_rate * block_ms / 1000)
        # when each block arrived, for a reader that stamps every sample with its capture time (record)
        self.blocks = BlockLog(max(16, int(ring_s * 1000 / block_ms)))
        self._new_stream = True  # the next block starts a stream: samples before it are not contiguous with it
        self.stall_s = stall_s
        self.backoff = backoff or Backoff()
        self.state = "starting"
        self.reconnects = 0
        self.problem: str | None = None
        self.stop_event = threading.Event()
        self._stream = None
        self._last_cb = self._opened_at = time.monotonic()
        self._watchdog: threading.Thread | None = None
        self._sd = None

    def _callback(self, indata, frames, time_info, status) -> None:
        wall = time.time()
        if status.input_overflow:
            self.ring.overruns += 1
        self.ring.write(indata[:, 0], wall)
        self.blocks.write(self.ring.written, wall, self._new_stream or bool(status.input_overflow))
        self._new_stream = False
        self._last_cb = time.monotonic()

    def _open(self) -> None:
        sd = self._sd
        try:
            stream = sd.InputStream(device=self.device, channels=1, samplerate=self.sample_rate,
                                    blocksize=self.block, dtype="float32", callback=self._callback)
            self._opened_at = self._last_cb = time.monotonic()
            self._new_stream = True
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise SourceError(f"microphone {self.name!r} cannot be opened at {self.sample_rate} Hz mono "
                              f"({str(exc).splitlines()[0]}): check `actstream devices` or pass --mic none") from exc
        self._stream = stream

    def start(self) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:
            raise SourceError(f"PortAudio is missing ({exc}): apt-get install libportaudio2, or pass --mic none") from exc
        self._sd = sd
        self._open()
        self._watchdog = threading.Thread(target=self._watch, name="mic-watchdog", daemon=True)
        self._watchdog.start()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort()
            stream.close()
        except self._sd.PortAudioError as exc:
            log.info("microphone %r: closing the lost stream: %s", self.name, exc)

    def _watch(self) -> None:
        while not self.stop_event.wait(0.1):
            stream, now = self._stream, time.monotonic()
            flowing = self._last_cb > self._opened_at  # a callback arrived since this stream was opened
            # a fresh stream may take a while to deliver its first block (PulseAudio resuming a source)
            age = now - (self._last_cb if flowing else self._opened_at)
            if stream is not None and stream.active and age <= (self.stall_s if flowing else OPEN_GRACE_S):
                if flowing and self.state != "ok":
                    if self.reconnects:
                        log.warning("microphone %r is back after %d reconnect(s)", self.name, self.reconnects)
                    self.state = "ok"
                    self.backoff.reset()
                continue
            was_ok, self.state = self.state == "ok", "lost"
            if stream is not None:
                self.problem = f"microphone {self.name!r} gave no audio for {age:.1f} s"
            log.log(logging.WARNING if was_ok else logging.INFO, "%s; reopening", self.problem)
            self._close_stream()
            while not self.stop_event.wait(self.backoff.take()):
                self.state = "reconnecting"
                self.reconnects += 1
                try:
                    self._open()
                except SourceError as exc:
                    self.problem = str(exc)
                    continue
                break

    def fresh(self) -> bool:
        return self.state == "ok"

    def health(self) -> dict:
        return {"state": self.state, "reconnects": self.reconnects, "overruns": self.ring.overruns,
                "problem": self.problem}

    def close(self, timeout_s: float = 2.0) -> None:
        self.stop_event.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=timeout_s)
            if self._watchdog.is_alive():
                log.warning("microphone watchdog did not stop within %.0f s; leaving it (daemon)", timeout_s)
        if self._sd is not None:
            self._close_stream()
        self.state = "stopped"
