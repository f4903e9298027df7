"""Capture devices: list cameras (V4L2) and microphones (PortAudio), and resolve a --camera value.

A camera is given by index (`0`), by V4L2 path (`/dev/video2`), by name (a case-insensitive part of the
name the driver reports, e.g. `logitech`), or by URL (`rtsp://`, `http://...mjpg`), which OpenCV opens
with FFmpeg exactly like a webcam. A microphone is given by sounddevice index or name (sounddevice matches
a part of the name itself), or `default`.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from actstream.common.errors import SourceError

V4L_SYSFS = Path("/sys/class/video4linux")


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    detail: str


def list_cameras(sysfs: Path = V4L_SYSFS, dev: Path = Path("/dev")) -> list[Device]:
    """V4L2 capture nodes, with the name the driver reports (empty if sysfs does not say)."""
    cams = []
    for node in sorted(glob.glob(str(dev / "video*")), key=lambda p: int(re.sub(r"\D", "", Path(p).name) or 0)):
        digits = re.sub(r"\D", "", Path(node).name)
        if not digits:
            continue
        name_file = sysfs / Path(node).name / "name"
        name = name_file.read_text().strip() if name_file.exists() else ""
        cams.append(Device(int(digits), name, node))
    return cams


def list_microphones() -> list[Device]:
    """PortAudio input devices; raises SourceError when PortAudio is missing."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise SourceError(f"PortAudio is missing ({exc}): apt-get install libportaudio2") from exc
    mics = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] > 0:
            mics.append(Device(i, d["name"], f"{d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz"))
    return mics


def redact(value: str) -> str:
    """A device value fit for logs and the bus: credentials in a URL (rtsp://user:pass@host) are hidden."""
    return re.sub(r"(://)[^/@\s]*@", r"\1***@", value)


def resolve_camera(value: str, sysfs: Path = V4L_SYSFS, dev: Path = Path("/dev")) -> int | str:
    """What cv2.VideoCapture opens for a --camera value: an index, a path or URL, or the index of the camera
    whose name contains `value`. Raises SourceError for a name no camera has."""
    v = value.strip()
    if v.lstrip("-").isdigit():
        return int(v)
    if "://" in v or v.startswith("/") or Path(v).exists():
        return v
    cams = list_cameras(sysfs, dev)
    matches = [c for c in cams if c.name and v.lower() in c.name.lower()]
    if not matches:
        known = ", ".join(f"{c.index}: {c.name or c.detail}" for c in cams) or "none found"
        raise SourceError(f"no camera named {value!r} (cameras: {known}): pass an index, a /dev/video path, "
                          f"a URL, or a part of a name from `actstream devices`")
    return matches[0].index
