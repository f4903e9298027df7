"""TensorRT engine runner: loads a cached engine (checked by trt_cache) and runs it on the GPU through
PyTorch's CUDA tensors and stream."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from actstream.common.errors import EngineError
from actstream.common.files import shown_path

from actstream.engines.base import Engine
from actstream.engines.cache import file_digest
from actstream.engines.trt_build import Progress, build_engine
from actstream.engines.trt_cache import EngineFileError, Shapes, engine_key, engine_path, profile_shapes, read_engine_file


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
        from actstream.engines.tensorrt import current_gpu, import_tensorrt

        trt = import_tensorrt()
        shapes = self.shapes or profile_shapes(self.onnx_path)
        key = engine_key(file_digest(self.onnx_path), trt.__version__, current_gpu(), self.precision, shapes)
        return key, engine_path(self.onnx_path, key)

    def build(self, progress: Progress | None = None) -> Path:
        return build_engine(self.onnx_path, self.precision, self.shapes, progress)

    def load(self) -> None:
        from actstream.engines.tensorrt import import_tensorrt

        if self._loaded:
            return
        trt = import_tensorrt()
        key, path = self.key()
        payload = read_engine_file(path, key)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(payload)
        if engine is None:
            raise EngineFileError(f"engine {shown_path(path)} cannot be deserialized by TensorRT {trt.__version__}: "
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
