"""What people see: the overlay (rendered off-screen, pixels checked), the annotated video, the timeline
plot, and the Prometheus endpoint."""

import subprocess
import sys
import time
import urllib.request

import av
import cv2
import numpy as np

from actstream.engines.bundle import load_spec
from actstream.views.overlay import (BAR, BAR_BG, BAR_ON, BAR_W, OverlayState, bar_origin, image_size,
                                      panel_height, render)
from tests.conftest import ROOT, run_cli


def msg(topic, label, scores, t=1.0):
    return {"topic": topic, "label": label, "score": scores[label], "scores": scores, "t": t}


def test_overlay_bars_sit_where_the_labels_say():
    state = OverlayState()
    state.update(msg("activity", "knock", {"knock": 1.0, "quiet": 0.0, "cough": 0.5}))
    state.update(msg("speech", "no_speech", {"no_speech": 0.75, "speech": 0.25}))
    state.update({"topic": "status", "t": 1.0, "steps_per_s": 10.0, "drops": {"video": 0}, "latency_ms": None})
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, :, 2] = 200  # a red camera image
    img = render(frame, state)
    w, h = image_size((240, 320))
    assert (w, h) == (640, 480) and img.shape[1] == 640 + 300
    assert tuple(img[h // 2, w // 2]) == (0, 0, 200)  # the camera image, scaled into the left part

    def px(topic_i, class_i, before, frac):
        x, y = bar_origin(topic_i, class_i, before, w)
        return tuple(int(v) for v in img[y + 8, x + int(frac * BAR_W)])

    # activity (topic 0): knock = 1.0 is the shown label -> its whole bar is the highlight colour
    assert px(0, 0, 0, 0.02) == BAR_ON and px(0, 0, 0, 0.98) == BAR_ON
    assert px(0, 1, 0, 0.02) == BAR_BG  # quiet = 0.0: empty bar
    assert px(0, 2, 0, 0.45) == BAR and px(0, 2, 0, 0.55) == BAR_BG  # cough = 0.5: half a bar
    # speech (topic 1, after 3 activity rows): no_speech 0.75 shown, speech 0.25
    assert px(1, 0, 3, 0.7) == BAR_ON and px(1, 0, 3, 0.8) == BAR_BG
    assert px(1, 1, 3, 0.2) == BAR and px(1, 1, 3, 0.3) == BAR_BG


def test_annotated_video_plot_and_truth(tmp_path, media):
    ann, plot = tmp_path / "a.mp4", tmp_path / "p.png"
    truth = tmp_path / "truth.csv"
    truth.write_text("start_s,end_s,label\n0.9,2.1,speech\n")
    r = run_cli("replay", str(media["mp4"]), "--publish", "none", "--annotate", str(ann), "--plot", str(plot),
                "--truth", str(truth))
    assert r.returncode == 0, r.stderr
    with av.open(str(ann)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        assert frames == 75  # every input frame: 3 s at 25 fps
        # 160x120 scaled to 640 wide; as high as the label panel of the default's three heads needs
        panel = OverlayState()
        for topic, classes in load_spec("default").heads.items():
            panel.update(msg(topic, classes[0], {c: 0.0 for c in classes}))
        assert (v.codec_context.width, v.codec_context.height) == (640 + 300, max(480, panel_height(panel)))
        assert c.streams.audio and c.streams.audio[0].rate == 48000  # the recording's own audio
    img = cv2.imread(str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.shape == (700, 1200, 3)
    # the truth is shaded: the same plot without --truth differs only in a band of columns inside the time axis
    # where the 0.9-2.1 s span of the 3 s recording lies (and in the legend's corner)
    bare = tmp_path / "bare.png"
    r = run_cli("replay", str(media["mp4"]), "--publish", "none", "--plot", str(bare))
    assert r.returncode == 0, r.stderr
    diff = np.abs(img.astype(int) - cv2.imread(str(bare)).astype(int)).sum(axis=2) > 5  # a light shade
    cols = np.flatnonzero(diff.sum(axis=0) > 50) / img.shape[1]  # columns shaded over 50 rows or more
    rows = np.flatnonzero(diff.sum(axis=1) > 50) / img.shape[0]
    # the time axis runs from x = 0.1 (0 s) to 0.93 (3 s) of the width: 0.9-2.1 s is 0.35-0.68
    assert 0.32 < cols.min() < 0.38 and 0.65 < cols.max() < 0.71 and len(cols) > 0.3 * img.shape[1]
    assert rows.min() > 0.45  # in the speech panel (the lower one) only: the truth's label is a speech class


def test_show_without_a_display_is_a_clear_error(media, monkeypatch):
    env_display = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
    r = subprocess.run([sys.executable, "-m", "actstream.cli", "replay", str(media["wav"]), "--publish", "none",
                        "--show"], capture_output=True, text=True, cwd=ROOT,
                       env={**__import__("os").environ, **env_display})
    assert r.returncode == 2 and "--show needs a display" in r.stderr


def test_prometheus_endpoint_serves_the_named_metrics(media, port):
    proc = subprocess.Popen([sys.executable, "-m", "actstream.cli", "replay", str(media["mp4"]), "--realtime",
                             "--publish", "none", "--metrics-port", str(port)], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    body = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            if "actstream_steps_total " in body and "actstream_latency_ms_count" in body and \
                    not body.count("actstream_steps_total 0.0"):
                break
        except OSError:
            pass
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert proc.returncode == 0
    for name in ("actstream_steps_total", "actstream_steps_per_second", 'actstream_drops{source="video"}',
                 "actstream_latency_ms_bucket", 'actstream_stage_ms{stage="audio_cnn"}', "actstream_build_info"):
        assert name in body, name
    assert f'model="{load_spec("default").tag}"' in body and 'backend="onnxruntime"' in body
