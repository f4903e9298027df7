"""The Engine contract every backend implements.

Constructing an engine is cheap and touches no files; `load()` reads or builds it; `run()` maps named
float32 inputs to named outputs. A backend whose package is missing fails at `load()`, naming the extra.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np

from actstream.common.errors import EngineError


class Engine(abc.ABC):
    """One network on one backend."""

    backend: str = "?"
    # capabilities the step core reads (declared here, never probed):
    takes_frames: bool = False  # run() takes raw BGR uint8 frames and resizes/normalizes them itself
    preferred_batch: int = 0  # the most inputs one run() should get (0: any number)
    # a temporal network: run() takes the rows of several streams at once (inputs (N, T, D), state (layers, N,
    # hidden)); files exported before the streams axis run one stream per call
    stream_batch: bool = True

    def __init__(self, name: str, input_names: list[str], output_names: list[str]):
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._loaded = False

    @abc.abstractmethod
    def load(self) -> None:
        """Read or build the network. Idempotent."""

    @abc.abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in `output_names` order."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._loaded:
            self.load()
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineError(f"engine {self.name}: missing inputs {missing}: expected {self.input_names}")
        return dict(zip(self.output_names, self._run(feeds)))

    def close(self) -> None:
        """Release the network. Idempotent."""
        self._loaded = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
