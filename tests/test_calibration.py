"""INT8 calibration and its accuracy gate, on a small model and recordings the test makes."""

import json
import os
import logging

import numpy as np
import pytest
import torch

from actstream.calibration.calibrate import calibrate
from actstream.calibration.gate import Margin, agreement, cosine, decide
from actstream.engines.bundle import ModelSpec, load_spec, save_model
from actstream.engines.precision import encoder_file
from actstream.views.demo import write_media
from actstream.engines.features import AudioFeatures, VideoFeatures
from tests.conftest import run_cli, tone_and_noise


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small audio model (seeded, untrained) and four recordings, one with a truth file."""
    d = tmp_path_factory.mktemp("cal")
    torch.manual_seed(0)
    spec = ModelSpec(name="small", arch="audio_lstm", heads={"speech": ["no_speech", "speech"]},
                     audio=AudioFeatures(), audio_dim=32, hidden=16, proj=16, card={"version": 1})
    cnn = spec.new_audio_cnn().eval()
    save_model(spec, d / "model", cnn, spec.new_temporal())
    data = d / "data"
    data.mkdir()
    for i in range(4):
        write_media(data / f"rec{i}.wav", None, tone_and_noise(3.0, 16000, 1, seed=i), 16000, acodec="pcm_s16le")
    # rec3 is held out (every 4th file); its truth: voiced in the middle (tone_and_noise's 0.3..0.7 of 3 s)
    (data / "rec3.truth.csv").write_text("start_s,end_s,label\n0.0,0.9,no_speech\n0.9,2.1,speech\n2.1,3.0,no_speech\n")
    return d


def test_gate_decisions():
    ok = {"cosine_mean": 0.995, "label_agreement": {"speech": 1.0, "activity": 0.975},
          "metrics": {"speech_accuracy": {"fp32": 0.90, "int8": 0.896}}}
    assert decide(ok, Margin())[0]  # 0.4 of a point lost, 2.5 % of steps labelled otherwise: within the margin
    passed, reason = decide({**ok, "metrics": {"speech_accuracy": {"fp32": 0.90, "int8": 0.894}}}, Margin())
    assert not passed and "speech_accuracy drops 0.0060" in reason  # over half a point
    passed, reason = decide({**ok, "label_agreement": {"speech": 0.96}, "cosine_mean": 0.9}, Margin())
    assert not passed and "cosine 0.9000 < 0.98" in reason and "speech labels agree on 96.00%" in reason
    assert agreement(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    np.testing.assert_allclose(cosine(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])),
                               [1.0, -1.0])


def test_calibrate_gates_int8_and_precision_follows_the_gate(small, tmp_path, caplog):
    model, data = small / "model", small / "data"
    strict = calibrate(str(model), [str(data)], str(tmp_path / "strict"), Margin(min_cosine=1.5), threads=1,
                       timing_s=0.02)
    enc = strict["encoders"]["audio"]
    assert strict["calibration_files"] == [os.path.relpath(data / f"rec{i}.wav") for i in range(3)]
    assert strict["held_out_files"] == [os.path.relpath(data / "rec3.wav")] and enc["held_out_steps"] == 30
    assert 0.9 < enc["cosine_mean"] <= 1.0 + 1e-9
    # the share of the 30 held-out steps whose INT8 label is the FP32 one: encoders this close mostly agree
    agree = enc["label_agreement"]["speech"] * enc["held_out_steps"]
    assert abs(agree - round(agree)) < 1e-6 and agree >= 0.8 * enc["held_out_steps"]
    assert set(enc["metrics"]) == {"speech_accuracy"}  # from the truth file of the held-out recording
    assert not enc["passed"] and "cosine" in enc["reason"]  # no INT8 can reach a cosine of 1.5
    assert enc["speed"]["fp32_ms_batch1"] > 0 and enc["speed"]["speedup_batch32"] > 0
    folder = tmp_path / "strict"
    assert json.loads((folder / "int8.json").read_text())["encoders"]["audio"]["passed"] is False
    assert (folder / "audio_encoder.trt.cache").read_text().startswith("TRT-")
    fp32 = folder / "audio_encoder.onnx"
    assert encoder_file(folder, "audio", fp32, "auto") == fp32  # refused: auto stays FP32
    with caplog.at_level(logging.WARNING, logger="actstream.engines.precision"):
        assert encoder_file(folder, "audio", fp32, "int8") == folder / "audio_encoder.int8.onnx"
    assert "failed the accuracy gate" in caplog.text

    lenient = calibrate(str(model), [str(data)], str(tmp_path / "lenient"), Margin(0.0, 0.0, 1.0), threads=1,
                        timing_s=0.02)
    assert lenient["encoders"]["audio"]["passed"]
    folder = tmp_path / "lenient"
    fp32 = folder / "audio_encoder.onnx"
    assert encoder_file(folder, "audio", fp32, "auto") == folder / "audio_encoder.int8.onnx"
    assert encoder_file(folder, "audio", fp32, "fp32") == fp32
    # the FP32 model changes (retrained): the INT8 file no longer matches it, and auto goes back to FP32
    spec = load_spec(str(folder))
    torch.manual_seed(1)
    save_model(spec, folder, spec.new_audio_cnn().eval(), spec.new_temporal())
    with caplog.at_level(logging.WARNING, logger="actstream.engines.precision"):
        assert encoder_file(folder, "audio", fp32, "auto") == fp32
    assert "calibrated from another FP32 model" in caplog.text


def test_calibrate_command_and_int8_replay(small, tmp_path):
    out = tmp_path / "m"
    r = run_cli("calibrate", "--model", str(small / "model"), "--data", str(small / "data"), "--out", str(out),
                "--min-cosine", "0", "--min-label-agreement", "0", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "audio encoder INT8: passed" in r.stdout and "int8.json" in r.stdout
    o = tmp_path / "o.jsonl"
    r = run_cli("replay", str(small / "data" / "rec3.wav"), "--model", str(out), "--precision", "int8",
                "--publish", "none", "--out", str(o))
    assert r.returncode == 0, r.stderr
    assert len([m for m in map(json.loads, o.read_text().splitlines()) if m["topic"] == "speech"]) == 30
    r = run_cli("calibrate", "--model", str(small / "model"), "--data", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_a_hybrids_video_encoder_calibrates_on_silent_videos_and_gates_on_their_truth(tmp_path):
    """A model that looks and listens has its video encoder calibrated on videos without sound (a camera's
    recordings), gated on held-out ones by the action head alone, against the truth given for them; its
    audio encoder is left as it was."""
    torch.manual_seed(0)
    spec = ModelSpec(name="small-av", arch="hybrid", heads={"speech": ["no_speech", "speech"], "action": ["a", "b"]},
                     audio=AudioFeatures(), video=VideoFeatures(), audio_dim=32, hidden=16, proj=16,
                     head_inputs={"speech": ["audio"], "action": ["video"]}, card={"version": 1})
    save_model(spec, tmp_path / "model", spec.new_audio_cnn().eval(), spec.new_temporal())
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):  # 1 s at 10 fps each, no audio track; a bright square moves across noise
        frames = []
        for k in range(10):
            img = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
            img[30:60, 10 * k:10 * k + 30] = 230
            frames.append(img)
        paths.append(write_media(tmp_path / f"cam{i}.mp4", frames, None, fps=10))
    record = calibrate(str(tmp_path / "model"), [str(p) for p in paths[:2]], str(tmp_path / "out"),
                       Margin(0.0, 0.0, 1.0), threads=1, timing_s=0.02, encoders=["video"],
                       held_out=[(paths[2], [(0.0, 5.0, "a")])])
    enc = record["encoders"]["video"]
    assert list(record["encoders"]) == ["video"] and enc["passed"]
    assert enc["calibration_inputs"] == 20 and enc["held_out_steps"] == 10  # every step of both, then the third
    assert set(enc["label_agreement"]) == {"action"}  # the speech head is fed by the audio encoder alone
    assert enc["truth_steps"] == {"action_accuracy": 10}
    assert 0.0 <= enc["metrics"]["action_accuracy"]["int8"] <= 1.0
    assert (tmp_path / "out" / "video_encoder.int8.onnx").is_file()
    assert not (tmp_path / "out" / "audio_encoder.int8.onnx").exists()


def test_the_shipped_default_runs_its_video_encoder_in_int8_where_its_gate_passed():
    """The default's INT8 video encoder passed its gate (int8.json, written by `actstream calibrate --model
    default --data ../shared/data`): what `precision = auto` (the configuration's default) runs; its audio
    encoder stays FP32 (INT8 buys it nothing)."""
    from actstream.engines.cache import video_encoder_onnx
    from actstream.engines.precision import read_gate
    from actstream.stream.config import ModelConfig

    spec = load_spec("default")
    gate = read_gate(spec.folder)
    video = gate["encoders"]["video"]
    assert video["passed"] and "audio" not in gate["encoders"]
    assert video["metrics"]["action_accuracy"]["fp32"] - video["metrics"]["action_accuracy"]["int8"] <= 0.005
    assert min(video["label_agreement"].values()) >= 0.97
    assert ModelConfig().precision == "auto"
    fp32 = video_encoder_onnx(spec.video.size)
    assert encoder_file(spec.folder, "video", fp32, "auto") == spec.folder / "video_encoder.int8.onnx"
    assert encoder_file(spec.folder, "audio", spec.folder / "audio_encoder.onnx", "auto") == \
        spec.folder / "audio_encoder.onnx"


@pytest.mark.slow
def test_the_default_int8_encoder_is_reproduced_by_its_command(tmp_path):
    """`actstream calibrate --model default --data ../shared/data` (the command the shipped INT8 file came from,
    README "Speed") makes the same file again and the same gate decision (a minute on 2 cores)."""
    from tests.conftest import need_shared

    root = need_shared()
    out = tmp_path / "default"
    r = run_cli("calibrate", "--model", "default", "--data", str(root), "--out", str(out))
    assert r.returncode == 0, r.stderr
    shipped = load_spec("default").folder
    assert (out / "video_encoder.int8.onnx").read_bytes() == (shipped / "video_encoder.int8.onnx").read_bytes()
    made = json.loads((out / "int8.json").read_text())["encoders"]["video"]
    ours = json.loads((shipped / "int8.json").read_text())["encoders"]["video"]
    assert made["passed"] and made["held_out_steps"] == ours["held_out_steps"]
    assert abs(made["label_agreement"]["action"] - ours["label_agreement"]["action"]) <= 0.01
