"""Each head publishes where its input exists (issue 9, item 3): a hybrid model told which input each head
needs replays a silent video, a wav and an A/V file and publishes exactly the heads that have input; its
`present` input masks a missing stream; model.json's head_inputs is checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actstream.engines.bundle import ModelSpec, load_spec, open_engines, save_model
from actstream.engines.features import VideoFeatures
from actstream.engines.flow import FlowFeatures
from actstream.engines.models import Temporal
from actstream.stream.config import PolicyConfig
from actstream.stream.policy import LabelPolicy
from actstream.stream.recognizer import CausalRecognizer
from tests.conftest import run_cli

HEAD_INPUTS = {"speech": ("audio",), "activity": ("audio",), "action": ("video",)}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """An untrained hybrid with per-head inputs and the motion stream, the shape of the default model."""
    folder = tmp_path_factory.mktemp("hybrid")
    spec = ModelSpec(name="heads", arch="hybrid", heads={"speech": ["no_speech", "speech"], "activity": ["a", "b"],
                                                          "action": ["c", "d", "e"]},
                     audio=load_spec("default").audio, video=VideoFeatures(), motion=True, flow=FlowFeatures(),
                     head_inputs=HEAD_INPUTS, card={"version": 0})
    torch.manual_seed(0)
    save_model(spec, folder, spec.new_audio_cnn(), spec.new_temporal())
    return folder


def topics(path):
    msgs = [json.loads(line) for line in path.read_text().splitlines()]
    return msgs, {m["topic"] for m in msgs}


@pytest.mark.parametrize("kind, expected, n", [
    ("video", {"action"}, 20),  # a silent video (2 s): the visual head only
    ("wav", {"speech", "activity"}, 30),  # audio alone (3 s): the audio heads only
    ("mp4", {"speech", "activity", "action"}, 30),  # both (3 s)
])
def test_a_hybrid_replay_publishes_exactly_the_heads_with_input(hybrid, media, tmp_path, kind, expected, n):
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(media[kind]), "--model", str(hybrid), "--out", str(out), "--publish", "none")
    assert r.returncode == 0, r.stderr
    msgs, seen = topics(out)
    assert seen == expected | {"status"}
    steps = {len([m for m in msgs if m["topic"] == h]) for h in expected}
    assert steps == {n}  # at 100 ms steps: every step of every head with input
    status = [m for m in msgs if m["topic"] == "status"]
    assert all(s["heads"] == [h for h in ("speech", "activity", "action") if h in expected] for s in status)


def test_a_recording_with_neither_input_is_one_line(hybrid, media):
    r = run_cli("replay", str(media["neither"]), "--model", str(hybrid), "--publish", "none")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_stream_that_loses_its_camera_keeps_its_audio_heads(hybrid):
    """Step by step through the core: frames, then none (a camera gone), then frames again; the visual head's
    smoothing starts afresh when it is back."""
    spec = load_spec(str(hybrid))
    engines = open_engines(spec, "onnxruntime")
    policy = LabelPolicy(CausalRecognizer(spec, engines), PolicyConfig())
    rng = np.random.default_rng(0)
    seen = []
    for k in range(30):
        frame = rng.integers(0, 255, (120, 160, 3), np.uint8) if not 10 <= k < 20 else None
        audio = rng.standard_normal(spec.audio.window_samples).astype(np.float32) * 0.01
        for _, labels in policy.advance(frame, audio, 0.1 * (k + 1)):
            seen.append(set(labels))
    assert seen[:10] == seen[20:] == [{"speech", "activity", "action"}] * 10
    assert seen[10:20] == [{"speech", "activity"}] * 10
    engines.close()


def test_a_missing_stream_does_not_reach_the_lstm():
    """With presence, a stream marked missing changes nothing, whatever its features hold; a present one
    does."""
    torch.manual_seed(0)
    net = Temporal({"video": 6, "flow": 5, "audio": 4}, {"speech": 2, "action": 3}, hidden=8, proj=4,
                   presence=("video", "audio")).eval()
    n, t = 3, 7
    x = {"video": torch.randn(n, t, 6), "flow": torch.randn(n, t, 5), "audio": torch.randn(n, t, 4)}
    audio_only = torch.zeros(n, t, 2)
    audio_only[..., 1] = 1.0
    h0, c0 = net.zero_state(n)
    with torch.inference_mode():
        a = net.logits({**x, "present": audio_only}, h0, c0)[0]["speech"]
        b = net.logits({**x, "video": torch.randn(n, t, 6), "flow": torch.randn(n, t, 5), "present": audio_only},
                       h0, c0)[0]["speech"]
        c = net.logits({**x, "audio": torch.randn(n, t, 4), "present": audio_only}, h0, c0)[0]["speech"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_modality_dropout_with_presence_never_drops_a_whole_stream():
    """Training: appearance or flow may be dropped from a sequence, never both (the video stream's heads are
    taught from it), and the audio stream (one input) never."""
    torch.manual_seed(0)
    net = Temporal({"video": 6, "flow": 5, "audio": 4}, {"action": 3}, hidden=8, proj=4, modality_dropout=0.5,
                   presence=("video", "audio"))
    n = 400
    x = {"video": torch.randn(n, 7, 6), "flow": torch.randn(n, 7, 5), "audio": torch.randn(n, 7, 4),
         "present": torch.ones(n, 7, 2)}

    def out(inputs):
        torch.manual_seed(1)
        h0, c0 = net.zero_state(n)
        return net.logits(inputs, h0, c0)[0]["action"]

    net.train()
    base = out(x)
    same = {m: (out({**x, m: torch.randn_like(x[m])}) == base).flatten(1).all(dim=1) for m in ("video", "flow", "audio")}
    assert not same["audio"].any()
    assert 0.25 < same["video"].float().mean() < 0.5 and 0.25 < same["flow"].float().mean() < 0.5
    assert not (same["video"] & same["flow"]).any()


@pytest.mark.parametrize("value, words", [
    ({"speech": ["audio"], "activity": ["audio"]}, "head_inputs lacks action"),
    ({"speech": ["audio"], "activity": ["audio"], "action": []}, "head_inputs.action"),
    ({"speech": ["audio"], "activity": ["audio"], "action": ["camera"]}, "head_inputs.action"),
    ({"speech": ["audio"], "activity": ["audio", "audio"], "action": ["video"]}, "head_inputs.activity"),
    ({"speech": ["audio"], "activity": ["audio"], "action": ["video"], "other": ["video"]}, "head_inputs key"),
    (["audio"], "head_inputs"),
])
def test_bad_head_inputs_are_one_line(hybrid, tmp_path, value, words):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(hybrid, folder)
    data = json.loads((folder / "model.json").read_text())
    data["head_inputs"] = value
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(Exception) as exc:
        load_spec(str(folder))
    msg = str(exc.value)
    assert words in msg and "\n" not in msg, msg
