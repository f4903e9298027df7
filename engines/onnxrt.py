"""ONNX Runtime backend: the CPU default."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from actstream.common.errors import EngineError
from actstream.common.files import shown_path

from actstream.engines.base import Engine

log = logging.getLogger(__name__)

MAX_ONNX_BYTES = 2 << 30  # protobuf's limit for one ONNX file (larger models keep weights in external files)


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None or isinstance(d, str) else str(d) for d in shape) + "]"


def check_io(path: Path, inputs: list[tuple], outputs: list[tuple],
             expect: tuple[dict[str, tuple], dict[str, tuple]]) -> None:
    """EngineError unless the ONNX file's inputs and outputs are those the model description implies.

    inputs, outputs: (name, shape, type) as ONNX Runtime reports them (a shape entry is an int, or a str or
    None for a dynamic axis); expect: (inputs, outputs) as name -> shape, None where any size goes. A
    dynamic axis in the file matches any expected size; a fixed one must be equal."""
    fix = "re-export the model (actstream train) or fix model.json"
    for kind, actual, wanted in (("inputs", inputs, expect[0]), ("outputs", outputs, expect[1])):
        names = [a[0] for a in actual]
        if sorted(names) != sorted(wanted):
            raise EngineError(f"model file {shown_path(path)} does not match model.json: its {kind} are {names[:20]}, "
                              f"model.json implies {list(wanted)[:20]} (heads, modalities): {fix}")
        for name, shape, typ in actual:
            want = wanted[name]
            if typ != "tensor(float)":
                raise EngineError(f"model file {shown_path(path)}: {kind[:-1]} {name!r} is {typ}, expected "
                                  f"tensor(float): {fix}")
            if shape is None or len(shape) != len(want) or any(
                    isinstance(d, int) and w is not None and d != w for d, w in zip(shape, want)):
                raise EngineError(f"model file {shown_path(path)} does not match model.json: {kind[:-1]} {name!r} has "
                                  f"shape {_shape(shape or [])}, model.json implies {_shape(want)} (classes per head, "
                                  f"audio features, dims): {fix}")


class OnnxRuntimeEngine(Engine):
    """Runs an ONNX file on ONNX Runtime's CPU provider.

    threads: intra-op threads (0 = one per core). Inter-op parallelism is off: the graphs are sequential,
    and two thread pools on two cores only oversubscribe them. spin: let idle pool threads spin-wait for the
    next run (lowest latency for back-to-back runs; off when another thread, such as batched replay's
    decoder, needs the cores between runs).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, name: str | None = None, spin: bool = True,
                 expect: tuple[dict[str, tuple], dict[str, tuple]] | None = None):
        super().__init__(name or Path(path).stem, [], [])
        self.path = Path(path)
        self.threads = threads
        self.spin = spin
        self.expect = expect  # (inputs, outputs) the file must have: name -> shape (None = any size)
        self._session = None

    def load(self) -> None:
        if self._loaded:
            return
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise EngineError("onnxruntime is not installed: pip install onnxruntime") from exc
        if not self.path.exists():
            raise EngineError(f"model file {shown_path(self.path)} not found: reinstall the model or pass another "
                              f"--model")
        st = os.stat(self.path)
        if not stat.S_ISREG(st.st_mode):  # ONNX Runtime would block on a FIFO, and read a device for ever
            raise EngineError(f"model file {shown_path(self.path)} is not a regular file: reinstall the model or pass "
                              f"another --model")
        if st.st_size > MAX_ONNX_BYTES:
            raise EngineError(f"model file {shown_path(self.path)} is {st.st_size} bytes, more than ONNX's "
                              f"{MAX_ONNX_BYTES}: re-export it or reinstall the model")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not self.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types; all mean the same here
            raise EngineError(f"model file {shown_path(self.path)} cannot be loaded by ONNX Runtime "
                              f"({str(exc).splitlines()[0][:160]}): re-export it or reinstall the model") from exc
        inputs = [(i.name, i.shape, i.type) for i in self._session.get_inputs()]
        outputs = [(o.name, o.shape, o.type) for o in self._session.get_outputs()]
        if self.expect is not None:
            try:
                check_io(self.path, inputs, outputs, self.expect)
            except EngineError:
                self._session = None
                raise
        self.input_names = [i[0] for i in inputs]
        self.output_names = [o[0] for o in outputs]
        # a temporal file whose state has its streams axis fixed at 1 takes one stream per run
        self._stream_batch = not any(name in ("h0", "c0") and len(shape) == 3 and shape[1] == 1
                                     for name, shape, _ in inputs)
        self._loaded = True

    @property
    def stream_batch(self) -> bool:  # type: ignore[override]
        if not self._loaded:
            self.load()
        return self._stream_batch

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.output_names, {n: feeds[n] for n in self.input_names})

    def close(self) -> None:
        self._session = None
        super().close()
