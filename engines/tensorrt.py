"""TensorRT backend (TensorRT 10+ Python API): FP16 / INT8 engines built from the ONNX files, kept in the
engine cache, and a self-healing wrapper that never lets a missing, stale or corrupt engine stop a stream.

An engine file is only valid for the exact ONNX bytes, TensorRT version, GPU model and compute capability,
precision and input-shape profile it was built for; all of these are in its cache key (`engine_key`). The
file carries a header with the key and a SHA-256 of the serialized engine, so a truncated or foreign file is
recognized before TensorRT sees it.

`SelfHealingEngine` serves from ONNX Runtime while an engine is built in a background thread, then switches
over between two runs; if TensorRT is missing it stays on ONNX Runtime with one warning. `tensorrt` is
imported lazily: this module imports on any machine.

Layout: this module holds the import guard, GPU discovery and the fallback (SelfHealingEngine,
tensorrt_engine) and re-exports the rest; trt_cache: profile shapes, cache keys and paths, the engine file
format; trt_build: the builder (progress through a caller's callback); trt_run: TensorRTEngine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.common.errors import EngineError

from actstream.engines.base import Engine
from actstream.engines.trt_build import Progress, build_engine
from actstream.engines.trt_cache import (BUILDER_FORMAT, MAGIC, MAX_BATCH, PRECISIONS, EngineFileError, Shapes, engine_key,
                        engine_path, profile_shapes, read_engine_file, timing_cache_path, write_engine_file)
from actstream.engines.trt_run import TensorRTEngine

__all__ = ["BUILDER_FORMAT", "INSTALL_HINT", "MAGIC", "MAX_BATCH", "PRECISIONS", "EngineFileError", "GpuInfo",
           "Progress", "SelfHealingEngine", "Shapes", "TensorRTEngine", "build_engine", "current_gpu",
           "engine_key", "engine_path", "import_tensorrt", "profile_shapes", "read_engine_file",
           "tensorrt_engine", "timing_cache_path", "write_engine_file"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install actstream[gpu] (TensorRT 10+, on a machine with an NVIDIA GPU)"


def import_tensorrt():
    """The tensorrt module, or EngineError naming the extra to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(f"TensorRT is not installed (import tensorrt failed: {exc}): {INSTALL_HINT}") from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise EngineError(f"TensorRT {trt.__version__} is too old: expected 10 or newer: {INSTALL_HINT}")
    return trt


@dataclass(frozen=True)
class GpuInfo:
    """name: the device name (e.g. "NVIDIA H100 80GB HBM3"); capability: compute capability, e.g. (9, 0)."""

    name: str
    capability: tuple[int, int]


def current_gpu(index: int = 0) -> GpuInfo:
    """The GPU the engine will run on, read through PyTorch's CUDA runtime."""
    import torch

    if not torch.cuda.is_available():
        raise EngineError("no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT needs an NVIDIA "
                          "GPU; use --backend onnxruntime")
    return GpuInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)))


class SelfHealingEngine(Engine):
    """A compiled engine with an ONNX Runtime engine beside it, so the stream never waits for or dies of
    TensorRT.

    primary: the TensorRT engine (anything with load/build/run); fallback: an ONNX Runtime engine on the
    same ONNX file. load(): the primary if its cached engine is valid; else the fallback serves and the
    engine is rebuilt in a background thread (rebuild=True), and the next run after the build switches over.
    If TensorRT is missing, or a run of the primary fails, the fallback serves with one warning.
    """

    def __init__(self, primary, fallback: Engine, rebuild: bool = True, said: set[str] | None = None):
        """said: reasons already warned about, shared by the engines of one model (engines.bundle.open_engines):
        a reason that is the same for every network (TensorRT missing, no GPU) is said once, not per network."""
        super().__init__(fallback.name, fallback.input_names, fallback.output_names)
        self.said = said
        self.primary = primary
        self.fallback = fallback
        self.rebuild = rebuild
        self._active: Engine = fallback
        self._ready = threading.Event()
        self._builder: threading.Thread | None = None
        self.build_error: str | None = None

    @property
    def backend(self) -> str:  # type: ignore[override]
        return "tensorrt" if self._active is self.primary else "onnxruntime"

    @property
    def stream_batch(self) -> bool:  # type: ignore[override]
        """As the ONNX file says: both engines run it (the TensorRT profile spans its dynamic axes)."""
        return self.fallback.stream_batch

    def load(self) -> None:
        if self._loaded:
            return
        self.fallback.load()
        self.input_names, self.output_names = self.fallback.input_names, self.fallback.output_names
        try:
            self.primary.load()
            self._active = self.primary
        except EngineFileError as exc:
            log.warning("%s; ONNX Runtime serves %s until then", exc, self.name)
            if self.rebuild:
                self._start_build()
        except EngineError as exc:
            if self.said is None:
                log.warning("%s: %s runs on ONNX Runtime instead", exc, self.name)
            elif str(exc) in self.said:
                log.info("%s runs on ONNX Runtime too", self.name)
            else:
                self.said.add(str(exc))
                log.warning("%s: the model's networks run on ONNX Runtime instead", exc)
        self._loaded = True

    def _start_build(self) -> None:
        def work():
            try:
                self.primary.build()
                self.primary.load()
                self._ready.set()
            except Exception as exc:  # a build failure must never reach the stream: report and stay on ORT
                self.build_error = f"{type(exc).__name__}: {exc}"
                log.warning("rebuilding the TensorRT engine for %s failed (%s): staying on ONNX Runtime",
                            self.name, self.build_error)

        self._builder = threading.Thread(target=work, name=f"trt-build-{self.name}", daemon=True)
        self._builder.start()

    def wait_built(self, timeout_s: float | None = None) -> bool:
        """Block until the background build is done (tests, `actstream build`); True if the engine is ready."""
        if self._builder is not None:
            self._builder.join(timeout_s)
        return self._ready.is_set()

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._ready.is_set() and self._active is not self.primary:
            log.info("TensorRT engine for %s is ready: switching over from ONNX Runtime", self.name)
            self._active = self.primary
        if self._active is self.primary:
            try:
                out = self.primary.run(feeds)  # by name: an engine may order its outputs otherwise than ONNX
                return [out[n] for n in self.output_names]
            except Exception as exc:  # a GPU fault must not end the stream: fall back for good
                log.warning("TensorRT engine %s failed (%s): ONNX Runtime serves from now on", self.name, exc)
                self._active = self.fallback
                self._ready.clear()
        return self.fallback._run(feeds)

    def close(self) -> None:
        if self._builder is not None and self._builder.is_alive():
            self._builder.join(timeout=5.0)
            if self._builder.is_alive():
                log.warning("TensorRT build for %s still running at shutdown; leaving it (daemon)", self.name)
        for e in (self.primary, self.fallback):
            e.close()
        super().close()


def tensorrt_engine(onnx_path: str | Path, precision: str, threads: int, name: str,
                    expect: tuple[dict, dict] | None = None, said: set[str] | None = None) -> SelfHealingEngine:
    """The engine `open_engines` gives for --backend tensorrt: TensorRT with ONNX Runtime beside it.
    expect: the inputs/outputs model.json implies, checked against the ONNX file by the ONNX Runtime side at
    load (engines.onnxrt.check_io), before any engine is built from it; said: see SelfHealingEngine."""
    from actstream.engines.onnxrt import OnnxRuntimeEngine

    return SelfHealingEngine(TensorRTEngine(onnx_path, precision, name=name),
                             OnnxRuntimeEngine(onnx_path, threads, name=name, expect=expect), said=said)
