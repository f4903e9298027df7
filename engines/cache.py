"""The engine cache: derived model files (exported ONNX, compiled engines) kept between runs.

Entries are keyed by everything that changes their bytes, written atomically, and rebuilt when missing
or unreadable. Location: $ACTSTREAM_CACHE, else $XDG_CACHE_HOME/actstream, else ~/.cache/actstream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("ACTSTREAM_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "actstream"


def file_digest(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def key_digest(parts: dict, length: int = 16) -> str:
    """A stable digest of a dict of key parts (sorted JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:length]


def video_encoder_onnx(size: int) -> Path:
    """The EfficientNet-Lite0 ONNX for `size` px input, exported from the pip package's weights on first use."""
    import torch

    from . import efficientnet
    from .export import export_video_encoder

    weights = efficientnet.weights_path()
    key = key_digest({"weights": file_digest(weights), "size": size, "torch": torch.__version__,
                      "code": file_digest(efficientnet.__file__), "opset": 17})
    path = cache_dir() / "onnx" / f"efficientnet_lite0_{size}_{key}.onnx"
    if path.is_file() and path.stat().st_size > 0:
        return path
    log.info("exporting EfficientNet-Lite0 to %s (once)", path)
    export_video_encoder(efficientnet.load_pretrained(size), size, path)
    return path
