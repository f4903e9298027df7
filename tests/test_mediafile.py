"""Every file the product writes is read back and compared with what went in (stream/mediafile.py): a file
whose timestamps were misread on the way is refused, and `replay --annotate` keeps each frame and the audio
at their own times."""

from fractions import Fraction

import av
import numpy as np
import pytest

from actstream.common.errors import OutputError
from actstream.views.mediafile import MediaWriter, Span, Track, differences, read_span
from tests.conftest import run_cli, tone_and_noise

# a camera at 15 fps with a hiccup (a third of a second without a frame), in milliseconds
TIMES_MS = [0, 67, 133, 200, 267, 600] + [600 + 67 * k for k in range(1, 21)]


def test_the_check_catches_issue_22s_file(tmp_path):
    """The bug the check is for: frames stamped in milliseconds reached the encoder without a time base of
    their own, so they were read in its 1/25 s units and 6 s of video lasted 240 s."""
    path = tmp_path / "old.mkv"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        for k in range(150):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), k, np.uint8), format="bgr24")
            frame.pts = 40 * k  # milliseconds since the start, as record's capture times were
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    got = read_span(path)
    assert got.video.end > 200  # what the user saw: a file of four minutes
    problems = differences(got, Span(6.0, Track(0.0, 6.0, 150), None))
    assert problems == [f"video ends at {got.video.end:.3f} s in the file, 6.000 s went in"]


def test_a_container_that_cannot_keep_the_times_is_refused_and_no_file_left(tmp_path):
    """AVI stores a frame rate, not each frame's time: a camera's hiccup cannot be kept. OutputError, and
    neither the file nor its temporary is left."""
    path = tmp_path / "vfr.avi"
    with pytest.raises(OutputError, match=r"vfr\.avi: the written file is not what went in \(video ends at"):
        with MediaWriter(path, (160, 120), 15, time_base=Fraction(1, 1000), vcodec="mpeg4") as w:
            for k, t in enumerate(TIMES_MS):
                w.frame(np.full((120, 160, 3), 10 * k, np.uint8), t)
            w.close(TIMES_MS[-1] + 67)
    assert list(tmp_path.iterdir()) == []


def test_annotate_keeps_every_frame_and_the_audio_at_their_times(tmp_path):
    """A recording as `record` makes them: frames at the camera's uneven times, sound from 1.2 s (a late
    microphone). The annotated copy holds the same frames at the same times and the sound from 1.2 s
    (before, it was redrawn at a steady rate and its sound moved to 0 s)."""
    src = tmp_path / "rec.mkv"
    with MediaWriter(src, (160, 120), 15, 48000, time_base=Fraction(1, 1000)) as w:
        for k, t in enumerate(TIMES_MS):
            w.frame(np.full((120, 160, 3), 9 * k, np.uint8), t)
        w.audio(tone_and_noise(0.6, 48000).T, int(1.2 * 48000))
        w.close(TIMES_MS[-1] + 67)
    out = tmp_path / "annotated.mp4"
    r = run_cli("replay", str(src), "--annotate", str(out), "--publish", "none")
    assert r.returncode == 0, r.stderr
    before, after = read_span(src), read_span(out)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert [round(f.time, 3) for f in a.decode(video=0)] == [round(f.time, 3) for f in b.decode(video=0)]
    assert after.video == before.video  # the same frames, from the same start to the same end
    frame_s = 1024 / 48000  # AAC's priming and padding, one frame each way
    assert before.audio.start - frame_s - 0.002 <= after.audio.start <= before.audio.start + 0.002
    assert after.audio.start > 1.15 and after.audio.end == pytest.approx(before.audio.end, abs=frame_s + 0.002)
