"""Batched fast replay (the scheduler with batch_steps > 1) against step by step."""

import json

import numpy as np
import pytest

from actstream.bench.media import hybrid_model
from actstream.engines.bundle import load_spec, open_engines
from actstream.stream.config import Config
from actstream.stream.policy import LabelPolicy
from actstream.stream.recognizer import CausalRecognizer
from actstream.stream.publish import Channel, Publisher
from actstream.stream.scheduler import Scheduler
from actstream.stream.streams import Stream
from actstream.stream.sources import FileSource
from tests.conftest import run_cli

SCORE_TOLERANCE = 1e-3  # probabilities: batch sizes change float rounding only; labels must be equal


def _replay(model: str, path, out, batch_steps: int):
    spec = load_spec(model)
    cfg = Config()
    engines = open_engines(spec, "onnxruntime", threads=1, spin=batch_steps == 1)
    engines.load()
    policy = LabelPolicy(CausalRecognizer(spec, engines), cfg.policy)
    audio = spec.audio
    source = FileSource(path, sample_rate=audio.sample_rate, window_samples=audio.window_samples,
                        use_audio="audio" in spec.modalities, use_video="video" in spec.modalities)
    publisher = Publisher(None, out, source.name, spec.tag)
    try:
        scheduler = Scheduler(policy, publisher, 100, False, batch_steps=batch_steps)
        scheduler.add(Stream(None, policy.recognizer.state, Channel(publisher), source))
        summary = scheduler.run()[None]
    finally:
        source.close()
        publisher.close()
        engines.close()
    return summary, [json.loads(x) for x in out.read_text().splitlines()]


@pytest.mark.parametrize("model,prep_threads", [("hybrid", 0), ("hybrid", 2), ("default", 0)])
def test_batched_equals_stepped(tmp_path, media, monkeypatch, model, prep_threads):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Scheduler, "prep_threads", prep_threads)  # frames resized inline, or on 2 helpers
    name = str(hybrid_model(tmp_path / "hybrid")) if model == "hybrid" else "default"
    stepped, a = _replay(name, media["mp4"], tmp_path / "a.jsonl", 1)
    batched, b = _replay(name, media["mp4"], tmp_path / "b.jsonl", 8)  # 30 steps: 3 full batches and a short one
    assert stepped.steps == batched.steps == 30
    assert [(m["topic"], m["seq"], m["t"], m["label"]) for m in a] == [(m["topic"], m["seq"], m["t"], m["label"])
                                                                        for m in b]
    for x, y in zip(a, b):
        if x["topic"] != "status":
            assert x["scores"].keys() == y["scores"].keys()
            assert max(abs(x["scores"][k] - y["scores"][k]) for k in x["scores"]) <= SCORE_TOLERANCE
        else:
            assert x == y
    assert {"decode", "audio_frontend", "audio_cnn", "lstm", "publish"} <= set(batched.stage_ms)
    if model == "hybrid":
        assert {"preprocess", "video_cnn"} <= set(batched.stage_ms)


def test_batched_replay_is_byte_identical_and_counts_steps(tmp_path, media):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.jsonl"
        r = run_cli("replay", str(media["mkv"]), "--out", str(out), "--publish", "none", "--batch-steps", "16",
                    "--stats", str(tmp_path / "stats.json"))
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["steps"] == 20 and stats["media_s"] == pytest.approx(2.0)
    assert len([x for x in outs[0].splitlines() if b'"topic":"speech"' in x]) == 20


def test_the_lstm_resets_on_a_gap_within_a_batch_as_between_steps():
    spec = load_spec("default")
    engines = open_engines(spec, "onnxruntime", threads=1)
    engines.load()
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, spec.audio_dim)).astype(np.float32)
    ts = [0.1, 0.2, 0.3, 5.0, 5.1, 5.2]  # a 4.7 s gap: the state resets before the fourth step
    many = CausalRecognizer(spec, engines).lstm({"audio": emb}, ts)
    fresh = CausalRecognizer(spec, engines).lstm({"audio": emb[3:]}, ts[3:])
    assert set(many[3]) == {"speech", "activity"}  # audio alone: the audio heads
    for h in many[3]:
        np.testing.assert_allclose(many[3][h], fresh[0][h], atol=1e-6)
        assert not np.allclose(many[1][h], CausalRecognizer(spec, engines).lstm({"audio": emb[1:2]}, [0.2])[0][h],
                               atol=1e-6)
    engines.close()
