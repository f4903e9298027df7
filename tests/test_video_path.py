"""The video CNN path: EfficientNet-Lite0 exported to ONNX, and a hybrid model replayed end to end."""

import json

import numpy as np
import torch

from actstream.engines.bundle import ModelSpec, load_spec, load_torch_modules, save_model
from actstream.engines.cache import video_encoder_onnx
from actstream.engines.efficientnet import load_pretrained
from actstream.engines.onnxrt import OnnxRuntimeEngine
from actstream.engines.features import VideoFeatures, preprocess_frame
from tests.conftest import moving_frames, run_cli


def test_video_encoder_onnx_equals_pytorch(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path))
    path = video_encoder_onnx(224)
    assert path.parent == tmp_path / "onnx" and video_encoder_onnx(224) == path  # cached, not re-exported
    frames = np.stack([preprocess_frame(f, VideoFeatures()) for f in moving_frames(3, 320, 240)])
    onnx_out = OnnxRuntimeEngine(path, threads=1).run({"image": frames})["embedding"]
    with torch.inference_mode():
        ref = load_pretrained().eval()(torch.from_numpy(frames)).numpy()
    assert onnx_out.shape == (3, 1280)
    assert np.abs(onnx_out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_hybrid_model_replays_video_and_audio(tmp_path, media, monkeypatch):
    """A hybrid model (video + audio embeddings fused per step before the LSTM), untrained temporal part
    here: what is checked is the path, not the labels."""
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    base = load_spec("default")
    audio_cnn, _ = load_torch_modules(base)
    spec = ModelSpec(name="hybrid-test", arch="hybrid", heads={"activity": ["a", "b", "c"]}, audio=base.audio,
                     video=VideoFeatures(), card={"version": 0})
    torch.manual_seed(0)
    save_model(spec, tmp_path / "hybrid", audio_cnn, spec.new_temporal())
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(media["mp4"]), "--model", str(tmp_path / "hybrid"), "--out", str(out),
                "--publish", "none")
    assert r.returncode == 0, r.stderr
    assert "video_cnn" in r.stderr and "audio_cnn" in r.stderr  # both encoders ran
    msgs = [json.loads(x) for x in out.read_text().splitlines()]
    act = [m for m in msgs if m["topic"] == "activity"]
    assert len(act) == 30 and {m["label"] for m in act} <= {"a", "b", "c"}
    assert act[0]["model"] == "hybrid-test@0"
    # a video-only file is refused by a model that needs audio, with the reason
    r = run_cli("replay", str(media["video"]), "--model", str(tmp_path / "hybrid"), "--publish", "none")
    assert r.returncode == 2 and "has no audio" in r.stderr
