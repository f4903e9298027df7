"""What the benchmark runs on, made by the benchmark itself: a 320x240 video with audio, an audio file, and
a hybrid (video + audio) model, so the video CNN is exercised."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SIZE = (320, 240)  # width, height
RATE = 16000


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like voiced bursts over quiet noise, (samples, 1) float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = rng.standard_normal(n) * 0.003
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    voiced = np.sin(2 * np.pi * 0.25 * t) > 0.2
    x[voiced] += 0.25 * sum(np.sin(2 * np.pi * k * np.cumsum(f0) / RATE)[voiced] / k for k in range(1, 8))
    return x[:, None].astype(np.float32)


def _frames(n: int, fps: int, seed: int = 0):
    """A textured scene with a moving object: enough detail that decoding costs what a camera's video does."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = SIZE
    base = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    for i in range(n):
        t = i / fps
        img = np.roll(base, i % w, axis=1).copy()
        cx, cy = int(w / 2 + 100 * np.sin(2 * np.pi * t / 3)), int(h / 2 + 60 * np.cos(2 * np.pi * t / 5))
        cv2.circle(img, (cx, cy), 30, (40, 200, 240), -1)
        cv2.putText(img, f"{t:6.2f}", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        yield img


def video_with_audio(path: Path, seconds: float, fps: int = 25) -> Path:
    """320x240 H.264 at `fps` with AAC audio, `seconds` long (made once per name)."""
    from actstream.views.demo import write_media

    if path.is_file():
        return path
    return write_media(path, _frames(int(seconds * fps), fps), _audio(seconds), RATE, fps)


def audio_only(path: Path, seconds: float) -> Path:
    from actstream.views.demo import write_media

    if path.is_file():
        return path
    return write_media(path, None, _audio(seconds, seed=1), RATE, acodec="pcm_s16le")


def hybrid_model(folder: Path, motion: bool = False) -> Path:
    """A hybrid model folder under `folder`: a copy of a trained one shipped in engines/weights if there is one
    (with the motion stream or without, as asked; copied, since the bench calibrates it and the shipped folder
    stays as shipped), else one made here from the default model's audio CNN and a seeded, untrained hybrid
    temporal network. Labels of the made one mean nothing; its cost is exactly a trained one's, which is what
    the benchmark measures."""
    import shutil

    import torch

    from actstream.engines.bundle import SHIPPED, ModelSpec, load_spec, load_torch_modules, save_model
    from actstream.engines.features import VideoFeatures
    from actstream.engines.flow import FlowFeatures
    from actstream.common.errors import EngineError

    if (folder / "model.json").is_file():
        return folder
    for d in sorted(SHIPPED.iterdir()) if SHIPPED.is_dir() else []:
        described = json.loads((d / "model.json").read_text()) if (d / "model.json").is_file() else {}
        if described.get("arch") == "hybrid" and bool(described.get("flow")) == motion:
            shutil.copytree(d, folder, dirs_exist_ok=True)
            return folder
    base = load_spec("default")
    try:
        audio_cnn, _ = load_torch_modules(base)
    except EngineError as exc:  # weights of another architecture version: the cost is the same either way
        log.warning("default audio CNN not loadable (%s): the bench model uses a seeded one", exc)
        torch.manual_seed(0)
        audio_cnn = base.new_audio_cnn().eval()
    spec = ModelSpec(name="bench-hybrid-motion" if motion else "bench-hybrid", arch="hybrid", heads=base.heads,
                     audio=base.audio, video=VideoFeatures(), audio_dim=base.audio_dim, hidden=base.hidden,
                     proj=base.proj, motion=motion, flow=FlowFeatures() if motion else None,
                     card={"version": 0, "note": "made by actstream bench: untrained temporal, for timing only"})
    torch.manual_seed(0)
    save_model(spec, folder, audio_cnn, spec.new_temporal())
    return folder
