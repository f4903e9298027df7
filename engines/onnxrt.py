"""ONNX Runtime backend: the CPU default."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stream.errors import EngineError

from .base import Engine

log = logging.getLogger(__name__)


class OnnxRuntimeEngine(Engine):
    """Runs an ONNX file on ONNX Runtime's CPU provider.

    threads: intra-op threads (0 = one per core). Inter-op parallelism is off: the graphs are sequential,
    and two thread pools on two cores only oversubscribe them. spin: let idle pool threads spin-wait for the
    next run (lowest latency for back-to-back runs; off when another thread, such as batched replay's
    decoder, needs the cores between runs).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, name: str | None = None, spin: bool = True):
        super().__init__(name or Path(path).stem, [], [])
        self.path = Path(path)
        self.threads = threads
        self.spin = spin
        self._session = None

    def load(self) -> None:
        if self._loaded:
            return
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise EngineError("onnxruntime is not installed: pip install onnxruntime") from exc
        if not self.path.is_file():
            raise EngineError(f"model file {self.path} not found: reinstall the model or pass another --model")
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
            raise EngineError(f"model file {self.path} cannot be loaded by ONNX Runtime "
                              f"({str(exc).splitlines()[0][:160]}): re-export it or reinstall the model") from exc
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._loaded = True

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.output_names, {n: feeds[n] for n in self.input_names})

    def close(self) -> None:
        self._session = None
        super().close()
