"""Static INT8 quantization (ONNX Runtime, QDQ format, per-channel weights) and the TensorRT calibration cache.

The QDQ graph is what both runtimes use: ONNX Runtime runs it with its INT8 kernels (VNNI on this CPU), and
TensorRT 10 builds an INT8 engine from it directly (explicit quantization, the scales taken as they are).
The calibration cache beside it, in TensorRT's text format, holds the same ranges for the older implicit
quantization route.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import numpy as np

from actstream.common.errors import EngineError

log = logging.getLogger(__name__)


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over an array of inputs, `batch` at a time.

    Its length is in batches, and set_range() narrows it to some of them: with CalibStridedMinMax = 1 the
    calibrator collects one batch at a time and merges the ranges, so memory holds one batch's activations
    (EfficientNet-Lite0's for 8 frames: about 0.3 GB) however many inputs there are."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 8):
        self.name, self.data, self.batch = name, data, batch
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, end_index

    def get_next(self):
        if self.i >= self.end:
            return None
        x = np.ascontiguousarray(self.data[self.i * self.batch:(self.i + 1) * self.batch], dtype=np.float32)
        self.i += 1
        return {self.name: x}

    def rewind(self) -> None:
        self.set_range(0, len(self))


def quantize_encoder(fp32: Path, out: Path, input_name: str, data: np.ndarray, ranges_json: Path) -> Path:
    """Write the QDQ INT8 version of `fp32` to `out`, calibrated (min-max) on `data`; the tensor ranges go to
    `ranges_json`. Activations uint8, weights int8 per output channel (the pair ONNX Runtime's x86 INT8
    kernels are fastest with); inputs and outputs stay float32, so the engine contract is unchanged."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(data) == 0:
        raise EngineError(f"no calibration inputs for {fp32.name}: pass recordings with the model's modalities")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    pre = out.with_name(f".{out.name}.{os.getpid()}.pre.onnx")
    if ranges_json.exists():
        ranges_json.unlink()  # ranges are recomputed from this data, never reused from another run
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), _Reader(input_name, data), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibStridedMinMax": 1},
                        calibration_cache_path=str(ranges_json))
        os.replace(tmp, out)
    finally:
        for p in (tmp, pre):
            if p.exists():
                p.unlink()
    return out


def tensorrt_calibration_cache(ranges_json: Path, out: Path, calibrator: str = "MinMaxCalibration") -> Path:
    """TensorRT's calibration cache (text: a header, then `tensor: scale` with the scale as big-endian
    float32 hex, scale = max(|min|, |max|) / 127) from the ranges of `quantize_encoder`."""
    data = json.loads(ranges_json.read_text())
    ranges = data.get("data", data) if isinstance(data, dict) else {}
    lines = [f"TRT-100000-{calibrator}"]
    for name in sorted(ranges):
        lo, hi = _range(ranges[name])
        if lo is None:
            continue
        scale = max(abs(lo), abs(hi)) / 127.0 or 1e-8
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    out.write_text("\n".join(lines) + "\n")
    return out


def _range(entry) -> tuple[float | None, float | None]:
    """(lowest, highest) from one tensor's entry in ONNX Runtime's range cache
    ({"lowest": {"data": [x], ...}, "highest": {...}})."""

    def scalar(v) -> float:
        if isinstance(v, dict):
            v = v.get("data")
        return float(np.asarray(v, dtype=np.float64).reshape(-1)[0])

    if not isinstance(entry, dict) or entry.get("lowest") is None or entry.get("highest") is None:
        return None, None
    return scalar(entry["lowest"]), scalar(entry["highest"])
