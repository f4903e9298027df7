"""The motion stream (engines/flow.py): the flow descriptor of a moving square points the way it moves and
vanishes on a still picture; the flow window streamed in pieces equals the window over the whole stream; the
step core computes the same descriptors step by step and in a batch; and a model taught three square motions
(left, right, up) recognises them in a render it never saw."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from actstream.common.errors import EngineError
from actstream.engines.bundle import load_spec
from actstream.engines.flow import FlowFeatures, dense_flow, describe_flow, flow_window, small_gray
from actstream.engines.models import Temporal
from actstream.evaluation.video import Clip, judge_model
from actstream.views.demo import write_media
from tests.conftest import SHARED, run_cli

SPEC = FlowFeatures()
BINS = {"left": 0, "up": SPEC.bins // 4, "right": SPEC.bins // 2, "down": 3 * SPEC.bins // 4}
MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def square(x: float, y: float, bg: int = 90, size: int = 60) -> np.ndarray:
    f = np.full((240, 320, 3), bg, np.uint8)
    cv2.rectangle(f, (int(x), int(y)), (int(x) + size, int(y) + size), (230, 200, 180), -1)
    return f


def descriptor(a: np.ndarray, b: np.ndarray, dt: float = 0.1) -> np.ndarray:
    return describe_flow(dense_flow(small_gray(a, SPEC), small_gray(b, SPEC)), dt, SPEC)


@pytest.mark.parametrize("way", sorted(MOVES))
def test_a_moving_square_points_the_way_it_moves(way):
    dx, dy = MOVES[way]
    d = descriptor(square(130, 90), square(130 + 8 * dx, 90 + 8 * dy))
    hist = d[:-6].reshape(SPEC.grid * SPEC.grid, SPEC.bins).sum(axis=0)
    assert int(np.argmax(hist)) == BINS[way], hist
    assert hist[BINS[way]] > 0.8 * hist.sum(), hist  # nearly all of the motion in that one direction
    mean_x, mean_y = d[-6], d[-5]
    assert np.sign(round(mean_x, 2)) == dx and np.sign(round(mean_y, 2)) == dy, (mean_x, mean_y)
    # a speed per second: the same 8 px over 0.2 s is slower (not exactly half: fewer pixels pass the
    # threshold, so the moving box and its height change too)
    slow = descriptor(square(130, 90), square(130 + 8 * dx, 90 + 8 * dy), dt=0.2)
    assert 0.3 * d[-4] < slow[-4] < 0.8 * d[-4], (slow[-4], d[-4])


def test_a_still_picture_has_no_motion():
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for frame in (square(130, 90), noisy):
        assert not descriptor(frame, frame.copy()).any()


def test_the_window_streamed_in_pieces_equals_the_whole():
    descs = np.random.default_rng(1).standard_normal((37, SPEC.pair_dim)).astype(np.float32)
    whole, _ = flow_window(descs, None, SPEC)
    parts, history = [], None
    for lo, hi in ((0, 1), (1, 4), (4, 20), (20, 37)):
        out, history = flow_window(descs[lo:hi], history, SPEC)
        parts.append(out)
    assert np.array_equal(np.concatenate(parts), whole)
    k = 15  # the step's own descriptor, then the mean and std of the last `window` (10) descriptors
    assert np.array_equal(whole[k, :SPEC.pair_dim], descs[k])
    assert np.allclose(whole[k, SPEC.pair_dim:2 * SPEC.pair_dim], descs[k - 9:k + 1].mean(axis=0), atol=1e-6)
    assert np.allclose(whole[k, 2 * SPEC.pair_dim:], descs[k - 9:k + 1].std(axis=0), atol=1e-6)


def render(way: str, seed: int, n: int = 50):
    """A square of a random colour on a random background moving `way` at 3-5 px per frame, wrapping."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 200, (120, 160, 3), dtype=np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    dx, dy = MOVES[way]
    speed, x, y, size = rng.uniform(3, 5), rng.uniform(20, 120), rng.uniform(20, 80), int(rng.integers(18, 30))
    for i in range(n):
        img = bg.copy()
        cx, cy = int(x + dx * speed * i) % 160, int(y + dy * speed * i) % 120
        cv2.rectangle(img, (cx, cy), (cx + size, cy + size), colour, -1)
        yield img


@pytest.mark.slow  # about a minute; tests/test_teach.py teaches a motion model in the default run
def test_teaching_three_square_motions_recognises_a_new_render(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    ways = ("left", "right", "up")
    for way in ways:
        (tmp_path / "ds" / way).mkdir(parents=True)
        for person in (1, 2):
            write_media(tmp_path / "ds" / way / f"p{person}_{way}.mp4", render(way, 10 * person + len(way)), None)
    r = run_cli("train", str(tmp_path / "ds"), "--out", str(tmp_path / "m"), "--epochs", "15", timeout=400)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "m" / "model.json").read_text())
    assert model["flow"] == SPEC.to_dict() and model["arch"] == "video_lstm"  # the default arch sees motion
    assert model["card"]["mirrored"].startswith("no (auto)")  # left mirrored is right: not taught mirrored
    held = []
    for way in ways:
        clip = write_media(tmp_path / f"held_{way}.mp4", render(way, 99 + len(way)), None)
        held.append(Clip(clip, way, "someone", "renders"))
        out = tmp_path / f"{way}.jsonl"
        r = run_cli("replay", str(clip), "--model", str(tmp_path / "m"), "--out", str(out), "--publish", "none")
        assert r.returncode == 0, r.stderr
        got = [m["label"] for m in map(json.loads, out.read_text().splitlines()) if m["topic"] == "activity"]
        assert got[5:].count(way) / len(got[5:]) >= 0.8, (way, got)
    # eval's judge (the step path, clips by the majority of their steps after 1 s) agrees
    judged = judge_model(load_spec(str(tmp_path / "m")), held)
    assert judged["clip_accuracy"] == 1.0 and judged["per_person"] == {"someone": 1.0}, judged
    assert np.trace(judged["confusion"]) == 3 and judged["wrong"] == []
    # `actstream eval` judges video models on the shared video test splits: these classes are not there
    if SHARED.is_dir():
        r = run_cli("eval", str(tmp_path / "m"), str(SHARED), "--out", str(tmp_path / "ev"))
        assert r.returncode == 2 and "none of its classes (left, right, up)" in r.stderr, r.stderr


def test_modality_dropout_drops_whole_inputs_in_training_only():
    torch.manual_seed(0)
    net = Temporal({"video": 6, "flow": 5}, {"action": 3}, hidden=8, proj=4, modality_dropout=0.5)
    n = 400
    x = {"video": torch.randn(n, 7, 6), "flow": torch.randn(n, 7, 5)}
    changed = {"video": torch.randn(n, 7, 6), "flow": torch.randn(n, 7, 5)}

    def out(inputs):
        torch.manual_seed(1)  # the same dropout masks for each call
        h0, c0 = net.zero_state(n)
        return net.logits(inputs, h0, c0)[0]["action"]

    net.train()
    base = out(x)
    same = {m: (out({**x, m: changed[m]}) == base).flatten(1).all(dim=1) for m in x}
    for m in x:  # each input alone is dropped in 3/8 of the sequences (1/4, plus half of the 1/4 both drawn)
        assert 0.25 < same[m].float().mean() < 0.5, (m, same[m].float().mean())
    assert not (same["video"] & same["flow"]).any()  # never both: a sequence always keeps one stream
    net.eval()
    h0, c0 = net.zero_state(n)
    with torch.inference_mode():
        a = net.logits(x, h0, c0)[0]["action"]
        b = net.logits({**x, "flow": changed["flow"]}, h0, c0)[0]["action"]
    assert (a != b).flatten(1).any(dim=1).all()  # served, every input counts


@pytest.mark.parametrize("flow, words", [
    ({"width": 64, "grid": 4, "bins": 8, "threshold": 0.05}, "flow lacks window"),
    ({"width": 4, "grid": 4, "bins": 8, "threshold": 0.05, "window": 10}, "flow.width"),
    ({"width": 64, "grid": 4, "bins": 8, "threshold": -1, "window": 10}, "flow.threshold"),
])
def test_a_bad_flow_in_model_json_is_refused(tmp_path, flow, words):
    folder = tmp_path / "m"
    folder.mkdir()
    spec = json.loads((Path(load_spec("default").folder) / "model.json").read_text())  # a hybrid with flow
    assert spec["arch"] == "hybrid" and spec["flow"] and spec["video"]
    (folder / "model.json").write_text(json.dumps({**spec, "flow": flow}))
    with pytest.raises(EngineError, match=words):
        load_spec(str(folder))
    listens = {k: v for k, v in spec.items() if k not in ("video", "head_inputs")}
    (folder / "model.json").write_text(json.dumps({**listens, "arch": "audio_lstm", "flow": FlowFeatures().to_dict()}))
    with pytest.raises(EngineError, match="arch audio_lstm reads no video"):
        load_spec(str(folder))
