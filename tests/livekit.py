"""Real devices for the live tests, without hardware.

PulseServer: a PulseAudio server in user mode with a null sink `vmic`; its monitor `vmic.monitor` is the
default source, so what `paplay` plays into the sink is what a microphone on sounddevice's `pulse` device
(ALSA's pulse plugin) records. Each test session gets its own server (runtime folder, socket).

PipeMic: a PulseAudio pipe source in that server, fed by the test in real time: a microphone whose every
sample's capture time the test knows (for A/V sync), that can start late or pause.

MjpegServer: an MJPEG stream over HTTP on loopback (multipart/x-mixed-replace, like an IP camera), which
OpenCV opens through FFmpeg on the same VideoCapture path as a webcam. It can stall (connection open, no
frames), go away (connections dropped, new ones refused) and come back.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socketserver
import subprocess
import threading
import time
import wave
from pathlib import Path

import numpy as np


class PulseServer:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = self.folder / "native"
        self.env = {**os.environ, "PULSE_RUNTIME_PATH": str(self.folder), "PULSE_SERVER": f"unix:{self.socket}"}

    @staticmethod
    def missing() -> str | None:
        """Why it cannot run here (a reason to skip), or None."""
        for exe in ("pulseaudio", "paplay", "pactl"):
            if shutil.which(exe) is None:
                return f"{exe} not installed (make setup installs pulseaudio pulseaudio-utils libasound2-plugins)"
        if not any(Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so",
                                              "/usr/lib/aarch64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so")):
            return "ALSA's pulse plugin is not installed (apt-get install libasound2-plugins)"
        return None

    def start(self, timeout_s: float = 15.0) -> None:
        r = subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--use-pid-file=yes",
                            "--disallow-module-loading=no", f"--load=module-native-protocol-unix socket={self.socket} "
                            "auth-anonymous=1", "--load=module-null-sink sink_name=vmic rate=16000 channels=1"],
                           env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if r.returncode != 0:
            raise RuntimeError(f"pulseaudio did not start: {r.stderr.strip()}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("pulseaudio started but does not answer pactl info")

    def pid(self) -> int | None:
        f = self.folder / "pid"
        try:
            return int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Kill the server at once, as when a USB microphone is pulled (no goodbye to clients)."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        (self.folder / "pid").unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)

    def play(self, wav: Path, wait: bool = True) -> subprocess.Popen:
        p = subprocess.Popen(["paplay", "--device=vmic", str(wav)], env=self.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if wait:
            p.wait(timeout=120)
        return p


class PipeMic:
    """A microphone whose every sample the test makes: a PulseAudio pipe source (`name`) fed in real time by a
    thread. Chunks of `chunk_ms` are written when their last sample is due, as a device delivers what it has
    captured, so when each sample was captured is known: `log` holds (Unix time of the write, samples written
    so far) per chunk. `sound(i, n)`: samples i..i+n of the signal (float in [-1, 1]; silence by default).
    Child processes record it through `env` (PULSE_SOURCE names it for libpulse, under ALSA's pulse device)."""

    def __init__(self, pulse: PulseServer, name: str = "pipemic", rate: int = 16000, chunk_ms: int = 10):
        self.pulse, self.name, self.rate, self.chunk = pulse, name, rate, rate * chunk_ms // 1000
        self.fifo = pulse.folder / f"{name}.fifo"
        r = subprocess.run(["pactl", "load-module", "module-pipe-source", f"source_name={name}", f"file={self.fifo}",
                            "format=s16le", f"rate={rate}", "channels=1"], env=pulse.env, capture_output=True,
                           text=True, timeout=15)
        if r.returncode != 0:
            raise RuntimeError(f"module-pipe-source did not load: {r.stderr.strip()}")
        self.module = r.stdout.strip()
        self.env = {**pulse.env, "PULSE_SOURCE": name}
        self.log: list[tuple[float, int]] = []
        self.sound = lambda i, n: np.zeros(n)
        self._pause_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, at: float | None = None) -> None:
        """Start delivering at Unix time `at` (now if None): nothing is captured before it."""
        self._thread = threading.Thread(target=self._feed, args=(at or time.time(),), daemon=True)
        self._thread.start()

    def pause(self, seconds: float) -> None:
        """Deliver nothing for `seconds` from now (the signal goes on: what would have come meanwhile is lost)."""
        self._pause_until = time.time() + seconds

    def _feed(self, at: float) -> None:
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            i = 0
            while not self._stop.is_set():
                due = at + (i + self.chunk) / self.rate  # the chunk's last sample has been captured
                time.sleep(max(0.0, due - time.time()))
                x = self.sound(i, self.chunk)
                i += self.chunk
                if time.time() < self._pause_until:
                    continue
                os.write(fd, (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
                self.log.append((time.time(), i))
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    def recorded(self) -> bool:
        """Whether a client records from it now (a stream is connected to the source)."""
        env = self.pulse.env
        sources = subprocess.run(["pactl", "list", "sources", "short"], env=env, capture_output=True, text=True,
                                 timeout=15).stdout.splitlines()
        index = next((x.split()[0] for x in sources if x.split()[1:2] == [self.name]), None)
        outputs = subprocess.run(["pactl", "list", "source-outputs", "short"], env=env, capture_output=True,
                                 text=True, timeout=15).stdout.splitlines()
        return index is not None and any(x.split()[1:2] == [index] for x in outputs)

    def captured_at(self, i: int) -> float:
        """Unix time at which sample i was captured: its chunk's write time, less the samples after it."""
        for wall, through in self.log:
            if through > i:
                return wall - (through - i) / self.rate
        raise ValueError(f"sample {i} was never delivered")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        subprocess.run(["pactl", "unload-module", self.module], env=self.pulse.env, capture_output=True, timeout=15)

    def __enter__(self) -> "PipeMic":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    """Mono float in [-1, 1] as 16-bit PCM."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


class MjpegServer:
    """Serves moving test frames (or `frames`, BGR images, looped, or `picture(when)`: the image for the frame
    sent at Unix time `when`) as MJPEG at `url`, `fps` frames per second on a fixed schedule (frame i of a
    connection is sent at its start + i / fps, so the rate is the camera's own); controllable faults. `sent`
    holds the Unix time each frame was sent at (its capture time, for a real camera)."""

    def __init__(self, w: int = 160, h: int = 120, fps: float = 25.0, frames: list[np.ndarray] | None = None,
                 picture=None):
        import cv2

        if frames:
            h, w = frames[0].shape[:2]
        self.w, self.h, self.fps, self.frames, self.picture = w, h, fps, frames, picture
        self.frames_sent = 0
        self.sent: list[float] = []  # when each frame went out (Unix s)
        self.due: list[float] = []  # when it was due: the time its picture was made for
        self.stalled = threading.Event()  # connections stay open but no frame is sent
        self.gone = threading.Event()  # connections are dropped and new ones refused
        self._cv2 = cv2
        kit = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if kit.gone.is_set():
                    self.send_error(503, "camera offline")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i, due = 0, time.time()
                try:
                    while not kit.gone.is_set():
                        if kit.stalled.is_set():
                            time.sleep(0.02)
                            due = time.time()  # the schedule restarts after a stall (no burst of catch-up)
                            continue
                        data = kit._jpeg(i, due)  # encoded ahead, so it goes out on time
                        time.sleep(max(0.0, due - time.time()))
                        when = time.time()
                        self.wfile.write(data)
                        kit.sent.append(when)
                        kit.due.append(due)
                        kit.frames_sent += 1
                        i += 1
                        due += 1.0 / kit.fps
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/camera.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _jpeg(self, i: int, when: float) -> bytes:
        if self.picture is not None:
            img = self.picture(when)
        elif self.frames:
            img = self.frames[i % len(self.frames)]
        else:
            img = np.zeros((self.h, self.w, 3), np.uint8)
            img[:, (i * 3) % self.w] = 255
            img[self.h // 2, :, 1] = (i * 7) % 256
        ok, jpg = self._cv2.imencode(".jpg", img)
        data = jpg.tobytes()
        return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n"

    def __enter__(self) -> "MjpegServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.gone.set()
        self.server.shutdown()
        self.server.server_close()
