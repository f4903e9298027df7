"""`actstream record`: webcam + microphone into one file (both tracks, timestamped), to teach a new activity.

Files land in DATASET/LABEL/<label>_<time>.mkv, the layout `actstream train` reads. The capture threads and
rings are the live path's own; this loop moves what they captured into the encoder.
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import ConfigError, SourceError
from .sources import LiveSource

log = logging.getLogger(__name__)
RATE = 16000


def record(dataset: Path, label: str, seconds: float, camera: str, mic: str, fps: int = 25) -> Path:
    """Record `seconds` of camera and/or microphone; returns the file written (atomically)."""
    import av

    if not label or "/" in label or label.startswith("."):
        raise ConfigError(f"--label {label!r} is not a usable class name: use letters, digits, - or _")
    if not 0 < seconds <= 3600:
        raise ConfigError(f"--seconds {seconds} out of range: expected 0 < seconds <= 3600")
    folder = dataset / label
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}_{time.strftime('%Y%m%d-%H%M%S')}.mkv"
    tmp = path.with_name(f".{path.name}.tmp.mkv")
    source = LiveSource(camera, mic, RATE, window_samples=1, frame_ring=fps * 2, audio_ring_s=10.0)
    source.start()
    try:
        with av.open(str(tmp), "w") as out:
            vs = st = None
            if source.camera is not None:
                h, w = source.camera.ring.shape[:2]
                vs = out.add_stream("libx264", rate=fps)
                vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
                vs.time_base = Fraction(1, 1000)
                vs.options = {"crf": "23", "preset": "veryfast"}
            if source.mic is not None:
                st = out.add_stream("flac", rate=RATE, layout="mono")
            n_frames, last_t, audio_done = 0, -1.0, 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(1.0 / fps)
                if vs is not None:
                    got = source.camera.ring.latest()
                    if got is not None and got[1] > last_t:
                        img, last_t, _ = got
                        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:vs.height, :vs.width]),
                                                           format="bgr24")
                        frame.pts = int(last_t * 1000)  # capture time since start, in ms
                        out.mux(vs.encode(frame))
                        n_frames += 1
                if st is not None:
                    ring = source.mic.ring
                    new = ring.written - audio_done
                    if new > 0:
                        chunk = ring.read(ring.written, new)
                        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                        frame.sample_rate, frame.pts, frame.time_base = RATE, audio_done, Fraction(1, RATE)
                        out.mux(st.encode(frame))
                        audio_done = ring.written
            if vs is not None:
                out.mux(vs.encode())
            if st is not None:
                out.mux(st.encode())
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    if source.camera is not None and n_frames == 0:
        tmp.unlink(missing_ok=True)
        raise SourceError(f"camera {camera!r} gave no frames in {seconds} s: check it with `actstream devices`")
    tmp.replace(path)
    log.info("recorded %s (%d frames, %.1f s of audio)", path, n_frames, audio_done / RATE)
    return path
