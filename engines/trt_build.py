"""TensorRT engine builder: builds the engine for an ONNX file into the engine cache (trt_cache), reusing
the timing cache, and reports build progress to a caller's callback (no display here: the caller draws it)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from actstream.common.errors import EngineError
from actstream.common.files import shown_path

from actstream.engines.cache import file_digest
from actstream.engines.trt_cache import (EngineFileError, Shapes, engine_key, engine_path, profile_shapes, read_engine_file,
                        timing_cache_path, write_engine_file)

log = logging.getLogger(__name__.rpartition(".")[0] + ".tensorrt")  # the backend's one logger, as before the split

Progress = Callable[[float], None]  # fraction of the build done, 0.0 .. 1.0; called with 1.0 when it is built


class _Phases:
    """TensorRT's build phases folded into one fraction for a Progress callback, at most every 0.2 s
    (always at a phase's last step)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.phases: dict[str, tuple[int, int]] = {}
        self._last = 0.0

    def update(self, phase: str, step: int, steps: int) -> None:
        self.phases[phase] = (step, steps)
        now = time.monotonic()
        if now - self._last < 0.2 and step + 1 < steps:
            return
        self._last = now
        done = sum(s for s, _ in self.phases.values())
        total = max(sum(n for _, n in self.phases.values()), 1)
        self.progress(done / total)


def _monitor(trt, progress: _Phases):
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.update(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            progress.update(phase_name, step + 1, progress.phases.get(phase_name, (0, step + 1))[1])
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            steps = progress.phases.get(phase_name, (1, 1))[1]
            progress.update(phase_name, steps, steps)

    return Monitor()


def build_engine(onnx_path: str | Path, precision: str = "fp16", shapes: Shapes | None = None,
                 progress: Progress | None = None, workspace_gb: float = 4.0) -> Path:
    """Build (or find in the cache) the engine for an ONNX file; returns its path.

    precision "fp16": FP16 kernels where faster; "int8": the ONNX must be a QDQ graph (from `actstream
    calibrate`), whose scales TensorRT uses as they are (explicit quantization), FP16 elsewhere.
    progress: called with the fraction done while TensorRT builds (not when the engine is cached), and
    with 1.0 once built.
    """
    from actstream.engines.tensorrt import current_gpu, import_tensorrt

    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    gpu = current_gpu()
    shapes = shapes or profile_shapes(onnx_path)
    key = engine_key(file_digest(onnx_path), trt.__version__, gpu, precision, shapes)
    path = engine_path(onnx_path, key)
    try:
        read_engine_file(path, key)
        return path
    except EngineFileError as exc:
        log.info("%s", exc)
    started = time.monotonic()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {shown_path(onnx_path)} ({errors[:200]}): re-export the model")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    tc_path = timing_cache_path(trt.__version__, gpu)
    timing = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=True)
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _monitor(trt, _Phases(progress))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {shown_path(onnx_path)} at {precision}: see the TensorRT log "
                          f"above")
    write_engine_file(path, key, bytes(serialized))
    tc_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tc_path.with_name(f".{tc_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # builds run in threads
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, tc_path)
    if progress is not None:
        progress(1.0)
    log.info("built %s (%s) in %.1f s", path, precision, time.monotonic() - started)
    return path
