import json

import numpy as np
import pytest

from actstream.engines.bundle import load_spec, open_engines
from actstream.stream.config import PolicyConfig
from actstream.stream.recognizer import CausalRecognizer
from actstream.stream.sources import FileSource
from tests.conftest import need_shared, run_cli


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_golden_replay_is_byte_identical(tmp_path, media):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.jsonl"
        r = run_cli("replay", str(media["mp4"]), "--out", str(out), "--publish", "none")
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    msgs = [json.loads(line) for line in outs[0].splitlines()]
    # 3 s at 100 ms steps: 30 steps x (speech + activity), a status every second and a last one at the end
    assert [m["topic"] for m in msgs].count("speech") == 30
    assert [m["topic"] for m in msgs].count("activity") == 30
    status = [m for m in msgs if m["topic"] == "status"]
    assert [(s["state"], s["t"], s["seq"]) for s in status] == [("running", 1.0, 0), ("running", 2.0, 1),
                                                                  ("running", 3.0, 2), ("end", 3.0, 3)]
    assert [m["t"] for m in msgs if m["topic"] == "speech"] == [round(0.1 * k, 4) for k in range(1, 31)]


@pytest.mark.parametrize("kind", ["wav", "flac", "mp4", "mkv"])
def test_every_container_kind_replays(tmp_path, media, kind):
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(media[kind]), "--out", str(out), "--publish", "none")
    assert r.returncode == 0, r.stderr
    msgs = read_jsonl(out)
    speech = [m for m in msgs if m["topic"] == "speech"]
    assert len(speech) == round(10 * (2.0 if kind in ("flac", "mkv") else 3.0))
    assert msgs[-1]["topic"] == "status" and msgs[-1]["state"] == "end"


def test_video_with_separate_audio_file(tmp_path, media):
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(media["video"]), "--audio", str(media["wav"]), "--out", str(out), "--publish", "none")
    assert r.returncode == 0, r.stderr
    msgs = read_jsonl(out)
    assert msgs[0]["source"] == "video_only.mp4+stereo44k.wav"
    assert len([m for m in msgs if m["topic"] == "speech"]) == 30


def test_resampled_and_mixed_audio_reaches_the_core(media):
    """44.1 kHz stereo comes out as 16 kHz mono with the file's loud middle where it belongs."""
    src = FileSource(media["wav"], sample_rate=16000, window_samples=1600, use_video=False)
    quiet = src.snapshot(0.5).audio
    loud = src.snapshot(1.5).audio
    assert quiet.shape == loud.shape == (1600,)
    assert np.abs(loud).max() > 0.2 > 0.05 > np.abs(quiet).max()
    assert src.snapshot(3.2) is None  # past the end
    src.close()


def test_stepped_core_equals_whole_sequence_through_both_backends(media, audio_model):
    """The LSTM stepped one step at a time with carried state gives what it gives over the whole sequence,
    on ONNX Runtime and on the PyTorch reference (an audio model: its temporal network reads audio alone)."""
    spec = load_spec(str(audio_model))
    src = FileSource(media["mp4"], sample_rate=16000, window_samples=spec.audio.window_samples, use_video=False)
    snaps = [src.snapshot(0.1 * k) for k in range(1, 31)]
    src.close()
    results = {}
    for backend in ("onnxruntime", "torch"):
        engines = open_engines(spec, backend, threads=1)
        rec = CausalRecognizer(spec, engines)
        stepped = np.stack([rec.advance(None, s.audio, s.t)[0][1]["speech"] for s in snaps])
        embs = np.stack([engines.encoders["audio"].run({"logmel": _mel(spec, s.audio)})["embedding"][0]
                         for s in snaps])
        h = np.zeros((1, 1, spec.hidden), np.float32)
        whole = engines.temporal.run({"audio": embs[None], "h0": h, "c0": h})["speech"][0]
        assert np.abs(stepped - whole).max() < 1e-5
        results[backend] = stepped
    assert np.abs(results["onnxruntime"] - results["torch"]).max() < 1e-4  # the export equals the reference


def _mel(spec, audio):
    from actstream.stream.frontend import audio_window

    return audio_window(audio, spec.audio)[None]


def test_policy_hysteresis_and_hold():
    """Drive the label policy directly with hand-made probabilities."""
    from actstream.stream.policy import HeadPolicy

    cfg = PolicyConfig(smoothing=0.6, enter=0.5, exit=0.4, switch_steps=2, min_hold_ms=300)
    p = HeadPolicy(["no_speech", "speech"], cfg)
    seq = [0.1, 0.9, 0.9, 0.9, 0.45, 0.45, 0.1, 0.1, 0.1]
    labels = [p.update(np.array([1 - s, s]), 0.1 * (i + 1)).label for i, s in enumerate(seq)]
    # smoothing 0.6: ema(speech) = .1 .58 .772 .849 .61 .514 .266 .166 .126 at t = .1 .2 ... .9
    # speech wins from t=.2 and has won 2 steps at t=.3, but no_speech (shown since t=.1) must be held 300 ms:
    # speech takes over at t=.4. It survives .61 and .514 (>= exit .4); no_speech wins at .7 and .8 -> t=.8.
    assert labels == ["no_speech", "no_speech", "no_speech", "speech", "speech", "speech", "speech", "no_speech",
                      "no_speech"]


def test_speech_labels_follow_real_speech(tmp_path):
    """A real LibriSpeech test-other utterance (held out) after 3 s of silence: speech comes on with it."""
    wav = need_shared("audio", "librispeech_test_other", "speech", "1688-142285-0000.wav")
    from actstream.stream.sources import load_audio
    from actstream.views.demo import write_media

    speech = load_audio(wav)
    x = np.concatenate([np.zeros(48000, np.float32), speech, np.zeros(48000, np.float32)])
    x += np.random.default_rng(0).standard_normal(len(x)).astype(np.float32) * 1e-3
    f = write_media(tmp_path / "mix.wav", None, x[:, None], 16000, acodec="pcm_s16le")
    out = tmp_path / "o.jsonl"
    assert run_cli("replay", str(f), "--out", str(out), "--publish", "none").returncode == 0
    labels = {round(m["t"], 1): m["label"] for m in read_jsonl(out) if m["topic"] == "speech"}
    start, end = 3.0, 3.0 + len(speech) / 16000
    inside = [lab for t, lab in labels.items() if start + 0.5 <= t <= end - 0.2]
    before = [lab for t, lab in labels.items() if t <= start - 0.2]
    after = [lab for t, lab in labels.items() if t >= end + 1.5]
    assert inside.count("speech") / len(inside) >= 0.9
    assert before.count("no_speech") / len(before) >= 0.9
    assert after.count("no_speech") / len(after) >= 0.9
