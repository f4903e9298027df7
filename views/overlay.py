"""What a person sees: the camera image with the current labels, a probability bar per class, and the
stream's health (steps per second, drops, latency). Rendered with OpenCV into an image, so the same drawing
serves the `--show` window, `--annotate` videos and tests (off-screen).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

PANEL_W = 300  # px: the label panel right of the image
ROW_H = 18  # px per class bar
BAR_X = 118  # px from the panel's left edge to where bars start
BAR_W = 170  # px: a bar of probability 1.0
MIN_W = 640  # px: images narrower than this are scaled up, so the text stays readable
BG = (32, 32, 32)
BAR_BG = (70, 70, 70)
BAR = (80, 200, 120)  # BGR: the bars of every class
BAR_ON = (60, 170, 255)  # BGR: the bar of the label currently shown
TEXT = (235, 235, 235)

log = logging.getLogger(__name__)


@dataclass
class OverlayState:
    """The newest message per topic, fed from the label stream (the same dicts subscribers get)."""

    labels: dict[str, dict] = field(default_factory=dict)
    status: dict | None = None

    def update(self, msg: dict) -> None:
        if msg["topic"] == "status":
            self.status = msg
        else:
            self.labels[msg["topic"]] = msg


def image_size(frame_shape: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of the image part of the overlay for frames of (height, width)."""
    if frame_shape is None:
        return MIN_W, 360
    h, w = frame_shape
    scale = max(1.0, MIN_W / w)
    return int(round(w * scale)), int(round(h * scale))


def bar_origin(topic_index: int, class_index: int, classes_before: int, image_w: int) -> tuple[int, int]:
    """Top-left pixel of a class's bar: topics are stacked, each a 24 px title then one row per class."""
    y = 10 + topic_index * 28 + (classes_before + class_index) * ROW_H + 24
    return image_w + BAR_X, y


def panel_height(state: OverlayState) -> int:
    """Pixels the label panel needs for the topics and classes in `state`."""
    rows = sum(len(m["scores"]) for m in state.labels.values())
    return 10 + len(state.labels) * 28 + rows * ROW_H + 90


def render(frame: np.ndarray | None, state: OverlayState, min_height: int = 0) -> np.ndarray:
    """The overlay for one moment: (H, W + PANEL_W, 3) BGR uint8, at least min_height rows high."""
    w, h = image_size(frame.shape[:2] if frame is not None else None)
    height = max(h, panel_height(state), min_height)
    out = np.full((height, w + PANEL_W, 3), BG, np.uint8)
    if frame is not None:
        out[:h, :w] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        cv2.putText(out, "audio only", (w // 2 - 70, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (120, 120, 120), 2)
    before = 0
    for ti, (topic, msg) in enumerate(sorted(state.labels.items())):
        x0, y0 = bar_origin(ti, 0, before, w)
        cv2.putText(out, f"{topic}: {msg['label']} {msg['score']:.2f}", (w + 10, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX,
                    0.55, TEXT, 1, cv2.LINE_AA)
        for ci, (cls, p) in enumerate(msg["scores"].items()):
            x, y = bar_origin(ti, ci, before, w)
            cv2.putText(out, cls[:14], (w + 10, y + ROW_H - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, TEXT, 1, cv2.LINE_AA)
            cv2.rectangle(out, (x, y + 2), (x + BAR_W, y + ROW_H - 4), BAR_BG, -1)
            filled = int(round(BAR_W * min(1.0, max(0.0, p))))
            if filled:
                colour = BAR_ON if cls == msg["label"] else BAR
                cv2.rectangle(out, (x, y + 2), (x + filled - 1, y + ROW_H - 4), colour, -1)
        before += len(msg["scores"])
    st = state.status
    if st is not None:
        lat = st.get("latency_ms")
        lines = [f"t {st['t']:.1f} s   {st.get('steps_per_s', 0):.1f} steps/s",
                 "drops " + " ".join(f"{k} {v}" for k, v in (st.get("drops") or {}).items()),
                 f"latency p99 {lat['p99']:.1f} ms" if lat else "latency: n/a (virtual clock)"]
        for i, line in enumerate(lines):
            cv2.putText(out, line, (w + 10, height - 60 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1,
                        cv2.LINE_AA)
    return out


class Window:
    """The `--show` window: an OpenCV window redrawn at every step with the step's frame and the newest labels.
    Closing it or pressing q or Esc stops the stream."""

    def __init__(self, title: str):
        import os

        from actstream.common.errors import ConfigError

        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise ConfigError("--show needs a display (DISPLAY is not set): use --annotate OUT.mp4 or --plot OUT.png")
        self.title = title
        self.state = OverlayState()
        self._last_frame = None
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)

    def on_step(self, stop_event):
        def draw(snap) -> None:
            if snap.frame is not None:
                self._last_frame = snap.frame
            cv2.imshow(self.title, render(self._last_frame, self.state))
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                stop_event.set()

        return draw

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)


def annotate(video: str | Path, messages: list[dict], out_path: str | Path) -> int:
    """Write `video` again with the overlay of the labels in force at each frame, and its audio (mixed to mono).

    Every input frame is kept at its own time (a camera's uneven rate and a late microphone stay as they
    were), and the audio at its own; the overlay panel widens the picture. Frames and audio are decoded,
    drawn and encoded one at a time (stream/mediafile.MediaWriter, which checks the written file against what
    went in): memory does not grow with the video's length. Returns the number of frames written.
    """
    import av

    from actstream.common.errors import SourceError
    from actstream.common.files import shown_path
    from actstream.stream.orientation import video_orientation
    from actstream.views.mediafile import MediaWriter
    from actstream.stream.sources import _open_container, _start_time

    timed = sorted(messages, key=lambda m: m["t"])
    final = OverlayState()  # every topic the run published: the panel's height from the first frame on
    for m in timed:
        final.update(m)
    container = _open_container(Path(video))
    try:
        if not container.streams.video:
            raise SourceError(f"{shown_path(video)}: has no video track to annotate: use --plot for audio-only "
                              f"recordings")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        fps = float(vstream.average_rate or 25)
        t0 = _start_time(container)  # the file's zero: the tracks keep their offsets to each other
        tb = vstream.time_base
        zero = int(round(t0 / tb))
        if not (vstream.codec_context.width and vstream.codec_context.height):
            raise SourceError(f"{shown_path(video)}: its video track declares no frame size: cannot annotate it")
        # upright as replay saw it: the rotation the container declares (read from a first frame of its own)
        probe = _open_container(Path(video))
        try:
            orientation, _ = video_orientation(Path(video), probe, probe.streams.video[0])
        finally:
            probe.close()
        stored = (vstream.codec_context.height, vstream.codec_context.width)
        w, h = image_size(stored[::-1] if orientation.turns else stored)
        size = ((w + PANEL_W) // 2 * 2, max(h, panel_height(final)) // 2 * 2)
        state, k = OverlayState(), 0
        last = end = None  # the last frame's pts in the output, and where it ends
        streams = [vstream] + ([astream] if astream is not None else [])
        writer = MediaWriter(out_path, size, fps, astream.rate if astream is not None else None, time_base=tb)
        with writer:
            for packet in container.demux(*streams):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    log.warning("%s: skipping an undecodable packet while annotating: %s", shown_path(video), exc)
                    continue
                for frame in frames:
                    if packet.stream is astream:
                        writer.audio_frame(frame, None if frame.time is None else frame.time - t0)
                        continue
                    t = (frame.time or 0.0) - t0
                    while k < len(timed) and timed[k]["t"] <= t + 1e-6:
                        state.update(timed[k])
                        k += 1
                    img = render(orientation.apply(frame.to_ndarray(format="bgr24")), state, size[1])
                    if img.shape[0] >= size[1] and img.shape[1] >= size[0]:
                        img = img[:size[1], :size[0]]  # even sizes for yuv420p
                    else:  # a frame smaller than the track's declared size
                        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
                    pts = None if frame.pts is None else frame.pts - zero
                    if pts is None or (last is not None and pts <= last):
                        pts = None if last is None else last + max(1, round(1 / (fps * tb)))
                    writer.frame(img, pts)
                    last = pts if pts is not None else 0
                    end = last + (frame.duration or max(1, round(1 / (fps * tb))))
            writer.close(end)
        log.info("annotated %s: %s", out_path, writer.span.describe())
        return writer.frames
    finally:
        container.close()
