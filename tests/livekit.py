"""Real devices for the live tests, without hardware.

PulseServer: a PulseAudio server in user mode with a null sink `vmic`; its monitor `vmic.monitor` is the
default source, so what `paplay` plays into the sink is what a microphone on sounddevice's `pulse` device
(ALSA's pulse plugin) records. Each test session gets its own server (runtime folder, socket).

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
    """Serves moving test frames (or `frames`, BGR images, looped) as MJPEG at `url`, `fps` frames per second;
    controllable faults."""

    def __init__(self, w: int = 160, h: int = 120, fps: float = 25.0, frames: list[np.ndarray] | None = None):
        import cv2

        if frames:
            h, w = frames[0].shape[:2]
        self.w, self.h, self.fps, self.frames = w, h, fps, frames
        self.frames_sent = 0
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
                i = 0
                try:
                    while not kit.gone.is_set():
                        if kit.stalled.is_set():
                            time.sleep(0.02)
                            continue
                        self.wfile.write(kit._jpeg(i))
                        kit.frames_sent += 1
                        i += 1
                        time.sleep(1.0 / kit.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/camera.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _jpeg(self, i: int) -> bytes:
        if self.frames:
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
