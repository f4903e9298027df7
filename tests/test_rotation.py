"""Replay applies the rotation a container declares (issue 24 item 2): a phone stores portrait video sideways
and says how to show it, with a display matrix (mp4/mov, Matroska) or, from older tools, a `rotate` tag. The
test files are written here with PyAV: `VideoStream.set_display_rotation` writes a real display matrix (the
mp4 tkhd matrix), and a stream's `rotate` metadata is kept by the Matroska muxer as a ROTATE tag (FFmpeg 8's
mp4 muxer no longer writes that tag, so the tag's files are .mkv)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from actstream.stream.sources import FileSource
from tests.conftest import need_shared, run_cli

H, W = 64, 48  # the upright picture is portrait, like a phone held upright


def upright_frames(n: int = 25) -> list[np.ndarray]:
    """Portrait frames with a colour per quadrant (BGR: blue top-left, green top-right, red bottom-left, white
    bottom-right) and a bar that moves down: any turn or flip shows."""
    out = []
    for i in range(n):
        img = np.zeros((H, W, 3), np.uint8)
        img[:H // 2, :W // 2] = (255, 0, 0)
        img[:H // 2, W // 2:] = (0, 255, 0)
        img[H // 2:, :W // 2] = (0, 0, 255)
        img[H // 2:, W // 2:] = (255, 255, 255)
        img[(2 * i) % H:(2 * i) % H + 2] = (0, 0, 0)
        out.append(img)
    return out


def write_video(path: Path, frames, fps: int = 25, rotate_tag: str | None = None,
                display: tuple[int, bool, bool] | None = None) -> Path:
    """H.264 at high quality (crf 12). rotate_tag: the stream's `rotate` metadata; display: (degrees
    counterclockwise, hflip, vflip) for set_display_rotation, the display matrix."""
    frames = list(frames)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "12", "preset": "veryfast"}
        if rotate_tag is not None:
            vs.metadata["rotate"] = rotate_tag
        if display is not None:
            vs.set_display_rotation(display[0], hflip=display[1], vflip=display[2])
        for k, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return path


def quadrants(img: np.ndarray) -> np.ndarray:
    """The mean BGR colour of each quadrant, (4, 3): what says which way up a picture is."""
    h, w = img.shape[:2]
    return np.array([img[a:b, c:d].reshape(-1, 3).mean(0) for a, b in ((0, h // 2), (h // 2, h))
                     for c, d in ((0, w // 2), (w // 2, w))])


# (what the container declares, how the pixels are stored): stored so that following the declaration shows
# the upright picture, as a phone's file does
CASES = {
    "rotate tag 90": (dict(rotate_tag="90"), lambda img: np.rot90(img, 1), "mkv"),
    "rotate tag 270": (dict(rotate_tag="270"), lambda img: np.rot90(img, -1), "mkv"),
    "display matrix -90 (a phone held upright)": (dict(display=(-90, False, False)), lambda img: np.rot90(img, 1),
                                                  "mp4"),
    "display matrix 90": (dict(display=(90, False, False)), lambda img: np.rot90(img, -1), "mp4"),
    "display matrix 180": (dict(display=(180, False, False)), lambda img: np.rot90(img, 2), "mp4"),
    "display matrix hflip (a selfie)": (dict(display=(0, True, False)), lambda img: img[:, ::-1], "mp4"),
    "display matrix -90 then hflip": (dict(display=(-90, True, False)), lambda img: np.rot90(img[:, ::-1], 1), "mkv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_replay_turns_frames_upright_as_the_container_declares(tmp_path, case):
    declares, store, ext = CASES[case]
    frames = upright_frames()
    path = write_video(tmp_path / f"rotated.{ext}", (store(f) for f in frames), **declares)
    src = FileSource(path, use_audio=False)
    try:
        assert src.video.shape == (H, W, 3), src.video.orientation
        for k in (3, 10, 20):  # frame k is shown from t = k / 25
            snap = src.snapshot(k / 25 + 0.001)
            assert snap.frame.shape == (H, W, 3)
            assert np.abs(snap.frame.astype(int) - frames[k]).mean() < 6, (case, quadrants(snap.frame))
    finally:
        src.close()


def test_a_rotation_that_is_no_quarter_turn_is_used_as_stored_with_a_warning(tmp_path, caplog):
    import logging

    tagged = write_video(tmp_path / "odd.mkv", upright_frames(5), rotate_tag="45")
    matrix = write_video(tmp_path / "odd.mp4", upright_frames(5), display=(30, False, False))
    with caplog.at_level(logging.WARNING, logger="actstream.stream.orientation"):
        for path in (tagged, matrix):
            src = FileSource(path, use_audio=False)
            src.close()
            assert src.video.shape == (H, W, 3)
    assert "rotate tag '45' is not a quarter turn" in caplog.text
    assert "display matrix rotates by 30 degrees counterclockwise, not a quarter turn" in caplog.text


def test_annotated_video_shows_the_same_upright_frames(tmp_path):
    """`replay --annotate` decodes the file again for its copy: it turns the frames the same way."""
    frames = upright_frames(25)
    path = write_video(tmp_path / "phone.mp4", (np.rot90(f, 1) for f in frames), display=(-90, False, False))
    out = tmp_path / "annotated.mp4"
    r = run_cli("replay", str(path), "--publish", "none", "--annotate", str(out))
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        shown = [f.to_ndarray(format="bgr24") for f in c.decode(c.streams.video[0])]
    assert len(shown) == len(frames)
    scale = 640 / W  # the overlay scales narrow pictures up to 640 px wide
    w, h = 640, int(round(H * scale)) // 2 * 2  # even sizes for yuv420p
    assert shown[0].shape[0] >= h
    for k in (5, 15):
        picture = shown[k][:h, :w]  # the picture left of the label panel
        np.testing.assert_allclose(quadrants(picture), quadrants(frames[k]), atol=12)


def test_a_rotated_weizmann_clip_gives_the_labels_of_the_original(tmp_path):
    """A test person waving (lena_wave2, silent), her clip turned sideways the way a phone stores portrait
    video and tagged with the display matrix that turns it back: the same `action` labels as the original.
    The sideways copy without the matrix shows what the model did before the fix."""
    clip = need_shared("video", "weizmann", "wave2", "lena_wave2.avi")
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(c.streams.video[0])]
    tagged = write_video(tmp_path / "phone.mp4", (np.rot90(f, 1) for f in frames), display=(-90, False, False))
    sideways = write_video(tmp_path / "sideways.mp4", (np.rot90(f, 1) for f in frames))
    labels = {}
    for name, path in (("original", clip), ("tagged", tagged), ("sideways", sideways)):
        out = tmp_path / f"{name}.jsonl"
        r = run_cli("replay", str(path), "--publish", "none", "--out", str(out))
        assert r.returncode == 0, r.stderr
        labels[name] = [m["label"] for m in map(json.loads, out.read_text().splitlines()) if m["topic"] == "action"]
    original, tagged_labels = labels["original"], labels["tagged"]
    assert len(tagged_labels) == len(original) > 20
    same = sum(a == b for a, b in zip(original, tagged_labels)) / len(original)
    settled = 10  # the first second: she stands at rest before waving, and the LSTM settles
    assert original[settled:].count("wave2") > 0.8 * len(original[settled:]) and same >= 0.9, labels
    assert tagged_labels[settled:].count("wave2") > 0.8 * len(tagged_labels[settled:]), labels
