"""The torch-cuda backend: its GPU frame preprocessing (checked on the CPU here), and, where a CUDA GPU is
visible, its embeddings against ONNX Runtime's."""

import cv2
import numpy as np
import pytest
import torch

from actstream.engines.torch_cuda import area_resize, area_weights
from actstream.engines.features import VideoFeatures, preprocess_frame


@pytest.mark.parametrize("shape", [(240, 320), (480, 640), (720, 1280)])
def test_area_resize_is_opencvs_inter_area(shape):
    h, w = shape
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
    ref = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    wy, wx = (torch.from_numpy(area_weights(n, 224).astype(np.float32)) for n in (h, w))
    out = area_resize(torch.from_numpy(img)[None], wy, wx)[0].numpy()
    diff = np.abs(out - ref)
    assert diff.max() <= 1.0 and (diff > 0).mean() < 0.005  # rare rounding ties only
    assert np.allclose(area_weights(h, 224).sum(axis=1), 1.0)  # each output pixel is a weighted mean


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_torch_cuda_engines_match_onnxruntime(tmp_path, monkeypatch):
    from actstream.bench.media import hybrid_model
    from actstream.engines.bundle import load_spec, open_engines

    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    spec = load_spec(str(hybrid_model(tmp_path / "hybrid")))
    gpu, cpu = open_engines(spec, "torch-cuda"), open_engines(spec, "onnxruntime", precision="fp32")
    gpu.load(), cpu.load()
    rng = np.random.default_rng(0)
    frames = np.stack([cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 2)
                       for _ in range(3)])
    ref = cpu.encoders["video"].run({"image": np.stack([preprocess_frame(f, VideoFeatures()) for f in frames])})
    got = gpu.encoders["video"].run({"image": frames})  # raw frames: resized and normalized on the GPU
    a, b = ref["embedding"], got["embedding"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.995
    mel = rng.standard_normal((5, spec.audio.frames, spec.audio.n_mels)).astype(np.float32) - 8
    a, b = cpu.encoders["audio"].run({"logmel": mel})["embedding"], gpu.encoders["audio"].run({"logmel": mel})["embedding"]
    assert np.abs(a - b).max() < 0.05 * max(1.0, np.abs(a).max())
    gpu.close(), cpu.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
@pytest.mark.parametrize("streams", [1, 3, 16, 40])
def test_the_temporal_graph_of_a_streams_bucket_equals_the_network_run_eagerly(streams):
    """One step of N streams through the temporal network's CUDA graph of N's bucket (rows padded) gives, per
    row, what the network gives that row alone on the CPU."""
    from actstream.engines.bundle import load_spec, open_engines

    spec = load_spec("default")
    gpu, cpu = open_engines(spec, "torch-cuda"), open_engines(spec, "onnxruntime", precision="fp32")
    gpu.load(), cpu.load()
    rng = np.random.default_rng(streams)
    feeds = {m: rng.standard_normal((streams, 1, d)).astype(np.float32) for m, d in spec.dims.items()}
    feeds["present"] = np.ones((streams, 1, len(spec.presence)), np.float32)
    feeds["h0"] = rng.standard_normal((1, streams, spec.hidden)).astype(np.float32) * 0.1
    feeds["c0"] = rng.standard_normal((1, streams, spec.hidden)).astype(np.float32) * 0.1
    got = gpu.temporal.run(feeds)
    for r in range(streams):
        one = {k: (v[:, r:r + 1] if k in ("h0", "c0") else v[r:r + 1]) for k, v in feeds.items()}
        ref = cpu.temporal.run(one)
        for k in ref:
            row = got[k][:, r:r + 1] if k in ("hn", "cn") else got[k][r:r + 1]
            np.testing.assert_allclose(row, ref[k], atol=1e-4)
