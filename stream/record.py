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

from actstream.engines.bundle import MAX_LABEL_CHARS

from actstream.common.errors import ConfigError, SourceError
from actstream.common.files import shown_path
from actstream.stream.sources import LiveSource

log = logging.getLogger(__name__)
RATE = 16000


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


def record(dataset: str | Path, label: str, seconds: float, camera: str, mic: str, fps: int = 25) -> Path:
    """Record `seconds` of camera and/or microphone; returns the file written (atomically). Everything that
    can be known wrong is refused before a device opens or a folder is made."""
    import av

    from actstream.stream.outputs import check_output_folder

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
    source = LiveSource(camera, mic, RATE, window_samples=1, frame_ring=fps * 2, audio_ring_s=10.0)
    source.start()
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = _free_name(folder, label)
        tmp = path.with_name(f".{path.name}.tmp.mkv")
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
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _drop_if_empty(made)
        raise
    finally:
        source.close()
    if source.camera is not None and n_frames == 0:
        tmp.unlink(missing_ok=True)
        _drop_if_empty(made)
        raise SourceError(f"camera {camera!r} gave no frames in {seconds} s: check it with `actstream devices`")
    tmp.replace(path)
    log.info("recorded %s (%d frames, %.1f s of audio)", path, n_frames, audio_done / RATE)
    return path


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
