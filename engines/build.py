"""`actstream build`: the TensorRT engines of a model, built ahead of time into the engine cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from actstream.engines.bundle import load_spec
from actstream.engines.cache import video_encoder_onnx
from actstream.engines.precision import encoder_file

log = logging.getLogger(__name__)


def build_all(model: str, precision: str = "fp16",
              progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
    """Build (or find cached) the engines of every network of `model`; returns their paths.

    precision "int8" builds the encoders from their calibrated QDQ files (explicit quantization) and the
    temporal network in FP16. Raises EngineError, naming the extra, where TensorRT or a GPU is missing.
    progress: called (stage, done, total) while an engine builds, stage e.g. "temporal (fp16)", done/total
    in percent; the caller draws it (`actstream build`: a bar on a terminal)."""
    from actstream.engines.tensorrt import build_engine, import_tensorrt

    import_tensorrt()  # fail before exporting anything
    spec = load_spec(model)
    onnx = []
    enc_precision = "int8" if precision == "int8" else "fp32"
    if "audio" in spec.modalities:
        onnx.append(("audio_encoder", encoder_file(spec.folder, "audio", spec.folder / "audio_encoder.onnx",
                                                   enc_precision), precision))
    if "video" in spec.modalities:
        onnx.append(("video_encoder", encoder_file(spec.folder, "video", video_encoder_onnx(spec.video.size),
                                                   enc_precision), precision))
    onnx.append(("temporal", spec.folder / "temporal.onnx", "fp16"))

    def stage(label: str):
        return None if progress is None else (lambda fraction: progress(label, round(100 * fraction), 100))

    return [build_engine(path, prec, progress=stage(f"{name} ({prec})")) for name, path, prec in onnx]
