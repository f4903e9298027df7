"""How fast the replay source alone delivers steps (decode + colour conversion, no inference)."""

from __future__ import annotations

import time
from pathlib import Path


def source_rate(path: str | Path, step_s: float = 0.1, max_steps: int = 0) -> dict:
    """Steps and video frames per second that FileSource.snapshot gives on this machine, single-threaded."""
    from actstream.stream.sources import FileSource
    from actstream.stream.steps import steps

    src = FileSource(path, sample_rate=16000, window_samples=15600)
    k, t0 = 0, time.perf_counter()
    try:
        for step in steps(src, int(round(step_s * 1000)), max_steps):
            k = step.k
        elapsed = time.perf_counter() - t0
        fps = float(src.video.stream.average_rate or 25) if src.video else 0.0
    finally:
        src.close()
    return {"steps": k, "seconds": elapsed, "steps_per_s": k / elapsed, "frames_per_s": k * step_s * fps / elapsed}
