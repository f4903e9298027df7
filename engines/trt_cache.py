"""TensorRT engine cache: the optimization profile, the cache key an engine file is valid for, where engine and
timing-cache files live, and the engine file format (MAGIC, JSON header with the key and a SHA-256 of the
serialized engine) that recognizes a truncated, corrupt or foreign file before TensorRT sees it.

Needs neither TensorRT nor a GPU: the keys and file checks run on any machine."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from actstream.common.errors import EngineError
from actstream.common.files import shown_path

from actstream.engines.cache import cache_dir, key_digest

if TYPE_CHECKING:
    from actstream.engines.tensorrt import GpuInfo

MAGIC = b"ACTSTRT1"
BUILDER_FORMAT = 1  # bump when the build options in trt_build change what an engine file holds
PRECISIONS = ("fp16", "int8")
MAX_BATCH = 64  # largest batch of the optimization profile (batched replay runs up to this many steps)


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
        raise EngineFileError(f"engine {shown_path(path)} not built yet") from exc
    except OSError as exc:
        raise EngineFileError(f"engine {shown_path(path)} cannot be read ({exc.strerror}): it will be rebuilt") from exc
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        raise EngineFileError(f"engine {shown_path(path)} is corrupt (bad magic): it will be rebuilt")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start:start + n])
    except ValueError as exc:
        raise EngineFileError(f"engine {shown_path(path)} is corrupt (bad header): it will be rebuilt") from exc
    payload = data[start + n:]
    if header.get("key") != key:
        raise EngineFileError(f"engine {shown_path(path)} is stale (built for another ONNX, TensorRT, GPU, precision "
                              f"or shape): it will be rebuilt")
    if header.get("size") != len(payload) or header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise EngineFileError(f"engine {shown_path(path)} is corrupt (checksum mismatch, {len(payload)} bytes): "
                              f"it will be rebuilt")
    return payload
