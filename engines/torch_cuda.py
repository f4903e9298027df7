"""PyTorch CUDA backend: the encoders in FP16, channels_last, replayed from CUDA graphs.

The GPU path that runs without TensorRT. Each encoder captures one CUDA graph per batch bucket
(1 and 32 by default: a live step, and a batch of fast replay at the default replay.batch_steps); a batch is
padded up to the smallest bucket that holds it (larger ones run in chunks), so each costs one graph launch.
Every bucket costs start-up time (capture, cuDNN's kernel choice), hence only two. The temporal LSTM runs eagerly in FP32 on
the GPU (a few small kernels per step). Needs torch built with CUDA and a visible GPU; load() says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from actstream.common.errors import EngineError

from actstream.engines.base import Engine

log = logging.getLogger(__name__)

BUCKETS = (1, 32)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of OpenCV's INTER_AREA downscaling along one axis: output pixel i is the
    mean of the input over [i * s, (i + 1) * s), s = n_in / n_out, partial pixels weighted by their overlap."""
    s = n_in / n_out
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        a, b = i * s, (i + 1) * s
        for j in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
            w[i, j] = min(b, j + 1) - max(a, j)
    return w / s


def area_resize(frames, wy, wx):
    """BGR uint8 frames (N, H, W, 3), as a torch tensor on any device, resized with INTER_AREA weights
    (wy: (S, H), wx: (S, W) float32 tensors on that device) and rounded as OpenCV rounds: (N, S, S, 3)
    float32 holding whole numbers 0..255 (equal to cv2.resize's, but for rare one-level rounding ties)."""
    import torch

    x = frames.float()
    y = torch.einsum("sh,nhwc->nswc", wy, x)
    y = torch.einsum("tw,nswc->nstc", wx, y)
    return torch.round(y).clamp_(0, 255)


def require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise EngineError("backend torch-cuda needs an NVIDIA GPU and a CUDA build of PyTorch "
                          f"(torch {torch.__version__} sees no GPU): use --backend onnxruntime")
    return torch



def _capture(forward, x):
    """Warm `forward(x)` up on a side stream, as CUDA graph capture requires, then capture one call.
    x: the static input (a tensor, or anything forward takes). Returns (graph, output): replaying the graph
    recomputes the output from x's buffers."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            forward(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = forward(x)
    return graph, y

class CudaGraphEngine(Engine):
    """An encoder (one input, one output) on the GPU in FP16 with CUDA graphs per batch bucket.

    make_module: builds the nn.Module (FP32, on the CPU); sample_shape: one item's input shape, e.g.
    (3, 224, 224); channels_last: NHWC memory layout (for 4D image input; Tensor Cores prefer it)."""

    backend = "torch-cuda"

    takes_frames = False  # True when frames: the engine resizes and normalizes raw frames on the GPU

    def __init__(self, name: str, make_module: Callable, input_name: str, output_name: str,
                 sample_shape: tuple[int, ...], buckets: tuple[int, ...] = BUCKETS, channels_last: bool = False,
                 half: bool = True, frames=None):
        super().__init__(name, [input_name], [output_name])
        # frames: the VideoFeatures of the model, for an image encoder that also takes BGR uint8 frames
        # (N, H, W, 3) as its input and preprocesses them on the GPU (what preprocess_frame does on the CPU)
        self.frames = frames
        self.takes_frames = frames is not None
        self._weights: dict[tuple[int, int], tuple] = {}
        self._frame_graphs: dict[tuple[int, int, int], tuple] = {}  # (bucket, H, W) -> graph with preprocessing
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
        with torch.inference_mode():
            for b in self.buckets:
                x = torch.randn((b, *self.sample_shape), device="cuda", dtype=dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                graph, y = _capture(module, x)
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

    def _prep(self, frames):
        """BGR uint8 frames (N, H, W, 3) on the GPU -> normalized RGB (N, 3, S, S), as preprocess_frame."""
        import torch

        f = self.frames
        h, w = frames.shape[1:3]
        if (h, w) not in self._weights:
            self._weights[(h, w)] = tuple(torch.from_numpy(area_weights(n, f.size).astype(np.float32)).cuda()
                                          for n in (h, w))
        x = area_resize(frames, *self._weights[(h, w)])
        x = (x.flip(-1) - f.mean) * (1.0 / f.std)  # BGR -> RGB, then (x - mean) / std
        return x.permute(0, 3, 1, 2)

    def _frame_graph(self, b: int, h: int, w: int):
        """The CUDA graph of preprocessing + CNN for `b` frames of h x w, captured on first use of that size."""
        import torch

        key = (b, h, w)
        if key not in self._frame_graphs:
            def forward(frames):
                x = self._prep(frames).to(self._dtype)
                return self._module(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)

            xin = torch.zeros((b, h, w, 3), dtype=torch.uint8, device="cuda")
            graph, y = _capture(forward, xin)  # the warm-up also uploads the resize weights, outside the capture
            self._frame_graphs[key] = (graph, xin, y)
        return self._frame_graphs[key]

    def run_frames(self, frames) -> np.ndarray:
        """BGR uint8 frames (N, H, W, 3), a host array, -> (N, D) embeddings: upload, then one graph launch
        per bucket-sized chunk doing the resize, normalization and CNN."""
        import torch

        x = torch.from_numpy(frames).to("cuda", non_blocking=True)
        n, h, w = frames.shape[:3]
        out, start = [], 0
        while start < n:
            take = min(n - start, self.buckets[-1])
            graph, xin, yout = self._frame_graph(next(b for b in self.buckets if b >= take), h, w)
            xin[:take].copy_(x[start:start + take])
            graph.replay()
            out.append(yout[:take].float().cpu().numpy())
            start += take
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        x = np.ascontiguousarray(feeds[self.input_names[0]])
        with torch.inference_mode():
            if x.dtype == np.uint8:
                if not self.takes_frames:
                    raise EngineError(f"engine {self.name}: uint8 frames given, but it takes preprocessed images")
                if x.shape[1] <= self.frames.size or x.shape[2] <= self.frames.size:
                    # smaller than the CNN input: OpenCV upscales those bilinearly; do exactly that, on the host
                    from actstream.engines.features import preprocess_frame

                    x = np.stack([preprocess_frame(f, self.frames) for f in x])
                else:
                    return [self.run_frames(x)]
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x).to("cuda", non_blocking=True)
            y = self.run_device(x).float().cpu().numpy()
        return [y]

    def close(self) -> None:
        self._graphs.clear()
        self._frame_graphs.clear()
        self._module = None
        super().close()


STREAM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # streams per step a temporal CUDA graph is captured for


class CudaEagerEngine(Engine):
    """The temporal network on the GPU in FP32 (inputs positionally in `input_names` order).

    One step of N streams (every input with one time step, N rows; N = 1 for live, the streams of a serve
    tick otherwise) replays a CUDA graph captured for the smallest bucket of STREAM_BUCKETS that holds N, its
    rows padded with zeros (their outputs are dropped): one launch instead of a dozen small kernels per tick.
    The bucket's graph is captured at its first use (the N = 1 graph at load()). Other shapes (batched
    replay's T steps, more than 256 streams) run eagerly.
    step_shapes: input name -> its shape for one step of one stream, e.g. {"audio": (1, 1, 128), "h0": (1, 1,
    128)}; the streams axis is 0 for the per-step inputs and 1 for h0/c0."""

    backend = "torch-cuda"
    STATE = ("h0", "c0")

    def __init__(self, name: str, make_module: Callable, input_names: list[str], output_names: list[str],
                 step_shapes: dict[str, tuple[int, ...]] | None = None):
        super().__init__(name, input_names, output_names)
        self._make = make_module
        self._module = None
        self.step_shapes = step_shapes
        self._graphs: dict[int, tuple] = {}  # bucket -> (graph, static inputs, outputs)

    def _bucket_shape(self, name: str, n: int) -> tuple[int, ...]:
        shape = list(self.step_shapes[name])
        shape[1 if name in self.STATE else 0] = n
        return tuple(shape)

    def _graph(self, n: int):
        """The CUDA graph of one step of `n` streams (a bucket), captured the first time it is needed."""
        if n not in self._graphs:
            import torch

            static = [torch.zeros(self._bucket_shape(name, n), device="cuda") for name in self.input_names]
            with torch.inference_mode():
                graph, outs = _capture(lambda xs: self._module(*xs), static)
            self._graphs[n] = (graph, static, outs)
        return self._graphs[n]

    def load(self) -> None:
        if self._loaded:
            return
        require_cuda()
        self._module = self._make().eval().to("cuda")
        if self.step_shapes:
            self._graph(1)
        self._loaded = True

    def _rows(self, arrays: list[np.ndarray]) -> int | None:
        """N when the feeds are one step of N streams (a graph can run them), else None."""
        if not self.step_shapes:
            return None
        ns = set()
        for a, name in zip(arrays, self.input_names):
            one = self.step_shapes[name]
            axis = 1 if name in self.STATE else 0
            if a.ndim != len(one) or any(d != o for i, (d, o) in enumerate(zip(a.shape, one)) if i != axis):
                return None
            ns.add(a.shape[axis])
        return ns.pop() if len(ns) == 1 else None

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        arrays = [np.ascontiguousarray(feeds[n], dtype=np.float32) for n in self.input_names]
        n = self._rows(arrays)
        bucket = next((b for b in STREAM_BUCKETS if n is not None and b >= n), None)
        with torch.inference_mode():
            if bucket is None:
                outs = self._module(*[torch.from_numpy(a).to("cuda", non_blocking=True) for a in arrays])
                return [o.cpu().numpy() for o in outs]
            graph, static, outs = self._graph(bucket)
            for dst, a, name in zip(static, arrays, self.input_names):
                src = torch.from_numpy(a).to("cuda", non_blocking=True)
                if name in self.STATE:
                    dst[:, :n].copy_(src)
                    dst[:, n:].zero_()
                else:
                    dst[:n].copy_(src)
                    dst[n:].zero_()
            graph.replay()
            # head outputs (N, 1, classes), then hn, cn (layers, N, hidden): the padding rows dropped
            return [(o[:, :n] if i >= len(outs) - 2 else o[:n]).cpu().numpy() for i, o in enumerate(outs)]

    def close(self) -> None:
        self._module = None
        self._graphs = {}
        super().close()
