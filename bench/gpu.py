"""GPU figures that run without TensorRT: PyTorch CUDA, FP16, channels_last, CUDA graphs."""

from __future__ import annotations

import time

import numpy as np


def encoder_throughput(batch: int = 64, iters: int = 200, size: int = 224) -> dict:
    """EfficientNet-Lite0 frames per second at `batch`, from CUDA-graph replays timed with CUDA events
    (median of 5 runs of `iters` replays), and the FP16 output checked against FP32 eager."""
    import torch

    from actstream.engines.efficientnet import load_pretrained
    from actstream.engines.torch_cuda import CudaGraphEngine

    eng = CudaGraphEngine("video_encoder", lambda: load_pretrained(size), "image", "embedding", (3, size, size),
                          buckets=(batch,), channels_last=True)
    eng.load()
    x = torch.randn(batch, 3, size, size, device="cuda")
    with torch.inference_mode():
        ref = load_pretrained(size).cuda().eval()(x)
        got = eng.run_device(x).float()
    rel = float((got - ref).norm() / ref.norm())
    graph, xin, _ = eng._graphs[batch]
    runs = []
    with torch.inference_mode():  # the graph's buffers are inference tensors
        xin.copy_(x.half().contiguous(memory_format=torch.channels_last))
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(iters):
                graph.replay()
            b.record()
            torch.cuda.synchronize()
            runs.append(a.elapsed_time(b) / 1000.0)
    s = float(np.median(runs))
    eng.close()
    return {"batch": batch, "frames_per_s": batch * iters / s, "ms_per_batch": s * 1000.0 / iters,
            "fp16_vs_fp32_rel_error": rel, "device": torch.cuda.get_device_name(0)}


def step_latency(model: str, steps: int = 300) -> dict:
    """One live step (front end, both encoders at batch 1, LSTM) on the GPU backend: ms percentiles, timed
    on the host around CausalRecognizer.advance (which returns host arrays, so the GPU work is finished)."""
    from actstream.engines.bundle import load_spec, open_engines
    from actstream.stream.recognizer import CausalRecognizer

    spec = load_spec(model)
    engines = open_engines(spec, "torch-cuda")
    engines.load()
    rec = CausalRecognizer(spec, engines)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    times = []
    for k in range(steps + 20):
        t0 = time.perf_counter()
        rec.advance(frame, audio, (k + 1) * spec.step_ms / 1000.0)
        if k >= 20:
            times.append((time.perf_counter() - t0) * 1000.0)
    engines.close()
    lat = np.asarray(times)
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "steps": steps, "stage_ms": rec.times.mean_ms()}
