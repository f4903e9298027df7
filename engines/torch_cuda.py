"""PyTorch CUDA backend: the encoders in FP16, channels_last, replayed from CUDA graphs.

The GPU path that runs without TensorRT. Each encoder captures one CUDA graph per batch bucket
(1, 8, 64 by default); a batch is padded up to the smallest bucket that holds it, so a step of live
(batch 1) and a batch of fast replay each cost one graph launch. The temporal LSTM runs eagerly in FP32 on
the GPU (a few small kernels per step). Needs torch built with CUDA and a visible GPU; load() says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from stream.errors import EngineError

from .base import Engine

log = logging.getLogger(__name__)

BUCKETS = (1, 8, 64)


def require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise EngineError("backend torch-cuda needs an NVIDIA GPU and a CUDA build of PyTorch "
                          f"(torch {torch.__version__} sees no GPU): use --backend onnxruntime")
    return torch


class CudaGraphEngine(Engine):
    """An encoder (one input, one output) on the GPU in FP16 with CUDA graphs per batch bucket.

    make_module: builds the nn.Module (FP32, on the CPU); sample_shape: one item's input shape, e.g.
    (3, 224, 224); channels_last: NHWC memory layout (for 4D image input; Tensor Cores prefer it)."""

    backend = "torch-cuda"

    def __init__(self, name: str, make_module: Callable, input_name: str, output_name: str,
                 sample_shape: tuple[int, ...], buckets: tuple[int, ...] = BUCKETS, channels_last: bool = False,
                 half: bool = True):
        super().__init__(name, [input_name], [output_name])
        self._make = make_module
        self.sample_shape = tuple(sample_shape)
        self.buckets = tuple(sorted(buckets))
        self.channels_last = channels_last
        self.half = half
        self._graphs: dict[int, tuple] = {}
        self._module = None

    def load(self) -> None:
        if self._loaded:
            return
        torch = require_cuda()
        dtype = torch.float16 if self.half else torch.float32
        module = self._make().eval().to("cuda", dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self._dtype = dtype
        stream = torch.cuda.Stream()
        with torch.inference_mode():
            for b in self.buckets:
                x = torch.randn((b, *self.sample_shape), device="cuda", dtype=dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):  # warm-up on a side stream, as graph capture requires
                        module(x)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    y = module(x)
                self._graphs[b] = (graph, x, y)
        torch.cuda.synchronize()
        self._loaded = True

    def run_device(self, x):
        """x: a CUDA tensor (N, *sample_shape), any float dtype. Returns a CUDA tensor (N, D) (a view of the
        graph's output buffer: copy it before the next call)."""
        import torch

        n = x.shape[0]
        out = []
        start = 0
        while start < n:
            take = min(n - start, self.buckets[-1])
            b = next(b for b in self.buckets if b >= take)
            graph, xin, yout = self._graphs[b]
            xin[:take].copy_(x[start:start + take])
            graph.replay()
            out.append(yout[:take])
            start += take
        return out[0] if len(out) == 1 else torch.cat(out)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(feeds[self.input_names[0]])).to("cuda", non_blocking=True)
        with torch.inference_mode():
            y = self.run_device(x).float().cpu().numpy()
        return [y]

    def close(self) -> None:
        self._graphs.clear()
        self._module = None
        super().close()


class CudaEagerEngine(Engine):
    """The temporal network on the GPU in FP32 (inputs positionally in `input_names` order).

    A live step (every input with one time step) replays a CUDA graph captured at load(): one launch
    instead of a dozen small kernels. Other shapes (batched replay's T steps) run eagerly.
    step_shapes: input name -> its shape for one step, e.g. {"audio": (1, 1, 128), "h0": (1, 1, 128)}."""

    backend = "torch-cuda"

    def __init__(self, name: str, make_module: Callable, input_names: list[str], output_names: list[str],
                 step_shapes: dict[str, tuple[int, ...]] | None = None):
        super().__init__(name, input_names, output_names)
        self._make = make_module
        self._module = None
        self.step_shapes = step_shapes
        self._graph = None

    def load(self) -> None:
        if self._loaded:
            return
        torch = require_cuda()
        self._module = self._make().eval().to("cuda")
        if self.step_shapes:
            static = [torch.zeros(self.step_shapes[n], device="cuda") for n in self.input_names]
            with torch.inference_mode():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self._module(*static)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outs = self._module(*static)
            self._graph = (graph, static, outs)
        self._loaded = True

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        arrays = [np.ascontiguousarray(feeds[n], dtype=np.float32) for n in self.input_names]
        with torch.inference_mode():
            if self._graph is not None and all(a.shape == self.step_shapes[n]
                                               for a, n in zip(arrays, self.input_names)):
                graph, static, outs = self._graph
                for dst, a in zip(static, arrays):
                    dst.copy_(torch.from_numpy(a), non_blocking=True)
                graph.replay()
            else:
                outs = self._module(*[torch.from_numpy(a).to("cuda", non_blocking=True) for a in arrays])
            return [o.cpu().numpy() for o in outs]

    def close(self) -> None:
        self._module = None
        self._graph = None
        super().close()
