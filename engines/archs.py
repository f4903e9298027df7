"""The architectures and the video input features, without PyTorch: the run-time path (step core, engine
bundle) imports these, and importing torch would cost every replay process over a second of start-up."""

from __future__ import annotations

import numpy as np

ARCHS = {
    "video_lstm": ("video",),
    "audio_lstm": ("audio",),
    "bilstm": ("audio",),
    "hybrid": ("video", "audio"),
}


def stream_of(part: str) -> str:
    """The input stream an LSTM input comes from: the flow is computed on the video."""
    return "video" if part == "flow" else part


VIDEO_DIM = 1280  # EfficientNet-Lite0 pooled embedding
MOTION_ALPHA = 0.1  # weight of the newest frame in the running mean of video embeddings (~1 s at 100 ms steps)


def video_motion(embs: np.ndarray, mean: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM's video input for models with `motion`: each embedding minus the running mean of those before.

    A frozen ImageNet CNN mostly describes the scene; what moves shows in the difference. Fed the raw
    embedding, a model taught from one or two recordings per class learns the room, not the action (seen on
    KTH: a boxer filmed outdoors was called "jogging", the class filmed in that scene); fed the difference,
    it learns the movement. embs: (T, 1280) in stream order; mean: the running mean carried from the previous
    step (None at a stream start). Returns ((T, 1280) features, new mean). Training and the step core both
    use this function.
    """
    out = np.empty_like(embs, dtype=np.float32)
    m = embs[0].astype(np.float32) if mean is None else mean
    for i, e in enumerate(embs):
        out[i] = e - m
        m = (1.0 - MOTION_ALPHA) * m + MOTION_ALPHA * e
    return out, m
