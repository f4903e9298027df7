"""ONNX export of the networks, with the input and output names the engines use."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from actstream.engines.models import AudioCNN, Temporal

OPSET = 17


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    """Export to a temporary file and rename, so a crash never leaves a half-written model behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that an LSTM with a batch axis may not generalise; tests run it at several batch sizes
        torch.onnx.export(module.eval(), args, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    os.replace(tmp, path)


def export_audio_encoder(cnn: AudioCNN, frames: int, n_mels: int, path: Path) -> None:
    """logmel (N, frames, n_mels) -> embedding (N, dim); N is dynamic for batched replay."""
    _export(cnn, (torch.zeros(1, frames, n_mels),), path, ["logmel"], ["embedding"],
            {"logmel": {0: "N"}, "embedding": {0: "N"}})


def export_video_encoder(cnn: nn.Module, size: int, path: Path) -> None:
    """image (N, 3, size, size) normalized RGB -> embedding (N, 1280); N is dynamic."""
    _export(cnn, (torch.zeros(1, 3, size, size),), path, ["image"], ["embedding"],
            {"image": {0: "N"}, "embedding": {0: "N"}})


def temporal_io(temporal: Temporal) -> tuple[list[str], list[str]]:
    """The temporal engine's input names (modalities, h0, c0) and output names (heads, hn, cn)."""
    return [*temporal.input_names, "h0", "c0"], [*temporal.head_names, "hn", "cn"]


def export_temporal(temporal: Temporal, dims: dict[str, int], path: Path) -> None:
    """modalities (N, T, D) [+ present (N, T, streams)] + h0, c0 (layers, N, hidden) -> head probabilities
    (N, T, classes) + hn, cn. N (streams) and T (steps) are dynamic, so one file serves one step of one stream,
    whole sequences, and one step of many streams at once, each row with its own state."""
    h0, c0 = temporal.zero_state(2)
    present = [torch.ones(2, 4, len(temporal.presence))] if temporal.presence else []
    args = (*[torch.zeros(2, 4, dims[m]) for m in temporal.modalities], *present, h0, c0)
    inputs, outputs = temporal_io(temporal)
    dynamic = ({m: {0: "N", 1: "T"} for m in temporal.input_names} | {h: {0: "N", 1: "T"} for h in temporal.head_names}
               | {s: {1: "N"} for s in ("h0", "c0", "hn", "cn")})
    _export(temporal, args, path, inputs, outputs, dynamic)
