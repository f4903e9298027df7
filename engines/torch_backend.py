"""PyTorch backend: runs the reference nn.Modules eagerly (the ground truth the exports are checked against)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from actstream.engines.base import Engine


class TorchEngine(Engine):
    """Runs `make_module()` (built at load) with inputs passed positionally in `input_names` order."""

    backend = "torch"

    def __init__(self, name: str, make_module: Callable[[], nn.Module], input_names: list[str],
                 output_names: list[str], threads: int = 0):
        super().__init__(name, input_names, output_names)
        self._make = make_module
        self.threads = threads
        self._module: nn.Module | None = None

    def load(self) -> None:
        if self._loaded:
            return
        if self.threads:  # torch has one intra-op pool per process: model.threads, wherever it was set
            torch.set_num_threads(self.threads)
        self._module = self._make().eval()
        self._loaded = True

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.inference_mode():
            out = self._module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.numpy() for o in out]

    def close(self) -> None:
        self._module = None
        super().close()
