"""TensorRT backend (TensorRT 10+ Python API): FP16 / INT8 engines built from the ONNX files, kept in the
engine cache, and a self-healing wrapper that never lets a missing, stale or corrupt engine stop a stream.

An engine file is only valid for the exact ONNX bytes, TensorRT version, GPU model and compute capability,
precision and input-shape profile it was built for; all of these are in its cache key (`engine_key`). The
file carries a header with the key and a SHA-256 of the serialized engine, so a truncated or foreign file is
recognized before TensorRT sees it.

`SelfHealingEngine` serves from ONNX Runtime while an engine is built in a background thread, then switches
over between two runs; if TensorRT is missing it stays on ONNX Runtime with one warning. `tensorrt` is
imported lazily: this module imports on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import EngineError

from .base import Engine
from .cache import cache_dir, file_digest, key_digest

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install actstream[gpu] (TensorRT 10+, on a machine with an NVIDIA GPU)"
MAGIC = b"ACTSTRT1"
BUILDER_FORMAT = 1  # bump when the build options below change what an engine file holds
PRECISIONS = ("fp16", "int8")
MAX_BATCH = 64  # largest batch of the optimization profile (batched replay runs up to this many steps)


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


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)


def profile_shapes(onnx_path: str | Path, max_batch: int = MAX_BATCH, opt_batch: int = 16) -> Shapes:
    """The optimization profile for an ONNX file: its dynamic dimensions (batch N, steps T) range over
    1..max_batch with opt_batch as the tuned size; every fixed dimension stays as it is."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    shapes: Shapes = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in inp.type.tensor_type.shape.dim]
        shapes[inp.name] = tuple(tuple(d if d is not None else dyn for d in dims)
                                 for dyn in (1, opt_batch, max_batch))
    return shapes


def engine_key(onnx_digest: str, trt_version: str, gpu: GpuInfo, precision: str, shapes: Shapes) -> dict:
    """Every part an engine's bytes depend on. Any change gives another key, hence another file."""
    if precision not in PRECISIONS:
        raise EngineError(f"TensorRT precision {precision!r} unknown: expected one of {', '.join(PRECISIONS)}")
    return {"onnx": onnx_digest, "tensorrt": trt_version, "gpu": gpu.name,
            "capability": f"{gpu.capability[0]}.{gpu.capability[1]}", "precision": precision,
            "shapes": {k: [list(s) for s in v] for k, v in sorted(shapes.items())}, "format": BUILDER_FORMAT}


def engine_path(onnx_path: str | Path, key: dict) -> Path:
    """Where the engine for `key` lives in the engine cache."""
    return cache_dir() / "tensorrt" / f"{Path(onnx_path).stem}_{key['precision']}_{key_digest(key)}.engine"


def timing_cache_path(trt_version: str, gpu: GpuInfo) -> Path:
    """One timing cache per TensorRT version and GPU: it makes rebuilds after an ONNX change fast."""
    tag = key_digest({"tensorrt": trt_version, "gpu": gpu.name, "capability": list(gpu.capability)})
    return cache_dir() / "tensorrt" / f"timing_{tag}.cache"


def write_engine_file(path: Path, key: dict, payload: bytes) -> None:
    """MAGIC, header length (uint32 LE), JSON header {key, sha256, size}, serialized engine; atomically."""
    header = json.dumps({"key": key, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)},
                        sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", len(header)) + header)
        fh.write(payload)
    os.replace(tmp, path)


class EngineFileError(EngineError):
    """An engine file is missing, corrupt, or was built for another key (it must be rebuilt)."""


def read_engine_file(path: Path, key: dict) -> bytes:
    """The serialized engine in `path`, checked against `key` and its checksum; EngineFileError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise EngineFileError(f"engine {path} not built yet") from exc
    except OSError as exc:
        raise EngineFileError(f"engine {path} cannot be read ({exc.strerror}): it will be rebuilt") from exc
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        raise EngineFileError(f"engine {path} is corrupt (bad magic): it will be rebuilt")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start:start + n])
    except ValueError as exc:
        raise EngineFileError(f"engine {path} is corrupt (bad header): it will be rebuilt") from exc
    payload = data[start + n:]
    if header.get("key") != key:
        raise EngineFileError(f"engine {path} is stale (built for another ONNX, TensorRT, GPU, precision or "
                              f"shape): it will be rebuilt")
    if header.get("size") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise EngineFileError(f"engine {path} is corrupt (checksum mismatch, {len(payload)} bytes): "
                              f"it will be rebuilt")
    return payload


class _Progress:
    """A text progress bar on stderr for engine builds (TensorRT's IProgressMonitor calls it)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
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
        width = 30
        fill = int(width * done / total)
        self.stream.write(f"\r{self.label}: [{'#' * fill}{'.' * (width - fill)}] {phase[:28]:<28}")
        self.stream.flush()

    def finish(self, seconds: float) -> None:
        self.stream.write(f"\r{self.label}: built in {seconds:.1f} s{' ' * 40}\n")
        self.stream.flush()


def _monitor(trt, progress: _Progress):
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
                 progress: _Progress | None = None, workspace_gb: float = 4.0) -> Path:
    """Build (or find in the cache) the engine for an ONNX file; returns its path.

    precision "fp16": FP16 kernels where faster; "int8": the ONNX must be a QDQ graph (from `actstream
    calibrate`), whose scales TensorRT uses as they are (explicit quantization), FP16 elsewhere.
    """
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
        raise EngineError(f"TensorRT cannot parse {onnx_path} ({errors[:200]}): re-export the model")
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
        config.progress_monitor = _monitor(trt, progress)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path} at {precision}: see the TensorRT log above")
    write_engine_file(path, key, bytes(serialized))
    tc_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tc_path.with_name(f".{tc_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # builds run in threads
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, tc_path)
    if progress is not None:
        progress.finish(time.monotonic() - started)
    log.info("built %s (%s) in %.1f s", path, precision, time.monotonic() - started)
    return path


class TensorRTEngine(Engine):
    """Runs a cached TensorRT engine built from `onnx_path`. load() fails (EngineError) when TensorRT or a
    GPU is missing, and EngineFileError when the engine is not built, stale or corrupt."""

    backend = "tensorrt"

    def __init__(self, onnx_path: str | Path, precision: str = "fp16", name: str | None = None,
                 shapes: Shapes | None = None):
        super().__init__(name or Path(onnx_path).stem, [], [])
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.shapes = shapes
        self._context = None
        self._engine = None

    def key(self) -> tuple[dict, Path]:
        trt = import_tensorrt()
        shapes = self.shapes or profile_shapes(self.onnx_path)
        key = engine_key(file_digest(self.onnx_path), trt.__version__, current_gpu(), self.precision, shapes)
        return key, engine_path(self.onnx_path, key)

    def build(self, progress: _Progress | None = None) -> Path:
        return build_engine(self.onnx_path, self.precision, self.shapes, progress)

    def load(self) -> None:
        if self._loaded:
            return
        trt = import_tensorrt()
        key, path = self.key()
        payload = read_engine_file(path, key)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(payload)
        if engine is None:
            raise EngineFileError(f"engine {path} cannot be deserialized by TensorRT {trt.__version__}: "
                                  f"it will be rebuilt")
        self._engine, self._context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._loaded = True

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        ctx = self._context
        keep = []
        for n in self.input_names:
            x = torch.from_numpy(np.ascontiguousarray(feeds[n], dtype=np.float32)).cuda(non_blocking=True)
            keep.append(x)
            ctx.set_input_shape(n, tuple(x.shape))
            ctx.set_tensor_address(n, x.data_ptr())
        outs = []
        for n in self.output_names:
            y = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=torch.float32, device="cuda")
            outs.append(y)
            ctx.set_tensor_address(n, y.data_ptr())
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT engine {self.name} failed to run: see the TensorRT log")
        stream.synchronize()
        return [y.cpu().numpy() for y in outs]

    def close(self) -> None:
        self._context = self._engine = None
        super().close()


class SelfHealingEngine(Engine):
    """A compiled engine with an ONNX Runtime engine beside it, so the stream never waits for or dies of
    TensorRT.

    primary: the TensorRT engine (anything with load/build/run); fallback: an ONNX Runtime engine on the
    same ONNX file. load(): the primary if its cached engine is valid; else the fallback serves and the
    engine is rebuilt in a background thread (rebuild=True), and the next run after the build switches over.
    If TensorRT is missing, or a run of the primary fails, the fallback serves with one warning.
    """

    def __init__(self, primary, fallback: Engine, rebuild: bool = True):
        super().__init__(fallback.name, fallback.input_names, fallback.output_names)
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
            log.warning("%s: %s runs on ONNX Runtime instead", exc, self.name)
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
                    expect: tuple[dict, dict] | None = None) -> SelfHealingEngine:
    """The engine `open_engines` gives for --backend tensorrt: TensorRT with ONNX Runtime beside it.
    expect: the inputs/outputs model.json implies, checked against the ONNX file by the ONNX Runtime side at
    load (engines.onnxrt.check_io), before any engine is built from it."""
    from .onnxrt import OnnxRuntimeEngine

    return SelfHealingEngine(TensorRTEngine(onnx_path, precision, name=name),
                             OnnxRuntimeEngine(onnx_path, threads, name=name, expect=expect))
