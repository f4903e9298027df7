"""The motion stream of the video encoder: dense optical flow between the frames of consecutive steps, pooled
into a compact per-step embedding (the two-stream CNN-LSTM's second stream, without a second CNN).

Per step with a new frame: the frame is shrunk to `width` px wide and grey (`small_gray`), OpenCV's DIS flow
(preset ULTRAFAST) is computed from the previous step's frame, and the flow is described inside the box that
holds the moving pixels, so a person near or far, left or right in the picture, gives the same numbers:
a `grid` x `grid` grid of cells over the box, in each an `bins`-orientation histogram of the flow's magnitude
(box heights per second), plus six numbers for the whole frame (mean flow x and y, mean magnitude and the moving
share of the frame, the box's width/height and its height share of the frame). `flow_window` then gives the
LSTM the step's descriptor with the mean and the standard deviation of the last `window` steps' ones: the
rhythm of a periodic
motion (walk vs run, wave one hand vs two) shows in a second of them, not in one frame pair.

No torch: the runtime and training both import this.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FlowFeatures:
    """width: px of the grey frame the flow is computed on (its height keeps the aspect); grid: cells per
    side of the moving box; bins: flow orientations per cell; threshold: the speed, in frame widths per
    second, above which a pixel moves; window: steps of descriptors pooled (mean
    and std, beside the step's own) for the LSTM."""

    width: int = 64
    grid: int = 4
    bins: int = 8
    threshold: float = 0.05
    window: int = 10

    @property
    def pair_dim(self) -> int:
        """Numbers per frame pair (the cached per-step descriptor)."""
        return self.grid * self.grid * self.bins + GLOBALS

    @property
    def dim(self) -> int:
        """Numbers per step fed to the LSTM: the step's descriptor, the mean and the std of `window` of them."""
        return 3 * self.pair_dim

    def to_dict(self) -> dict:
        return dict(self.__dict__)


GLOBALS = 6
REVISION = 2  # of the descriptor's arithmetic: training's cached embeddings are keyed by it


def small_gray(frame_bgr: np.ndarray, spec: FlowFeatures) -> np.ndarray:
    """A BGR uint8 frame (H, W, 3) -> grey uint8 (h, width), the aspect kept (the flow's input)."""
    h, w = frame_bgr.shape[:2]
    height = max(8, int(round(spec.width * h / max(w, 1))))
    small = cv2.resize(frame_bgr, (spec.width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


_DIS = None


def dense_flow(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """DIS optical flow (OpenCV, preset ULTRAFAST) from prev to cur, grey uint8 of one size: (h, w, 2) in px."""
    global _DIS
    if _DIS is None:  # one per process: creating it costs more than a flow on 64 px frames
        _DIS = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    return _DIS.calc(prev, cur, None)


def describe_flow(flow: np.ndarray, dt: float, spec: FlowFeatures) -> np.ndarray:
    """One frame pair's descriptor (spec.pair_dim,) float32 from its flow (h, w, 2) px over dt seconds.
    All zeros when nothing moves faster than spec.threshold."""
    h, w = flow.shape[:2]
    out = np.zeros(spec.pair_dim, np.float32)
    v = flow / (max(dt, 1e-3) * w)  # frame widths per second
    mag = np.hypot(v[..., 0], v[..., 1])
    moving = mag > spec.threshold
    if moving.sum() < 4:
        return out
    rows, cols = np.flatnonzero(moving.any(axis=1)), np.flatnonzero(moving.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    bh, bw = y1 - y0, x1 - x0
    scale = w / bh  # widths/s -> box heights/s: a person far away moves as much as one near
    box_v, box_mag, box_moving = v[y0:y1, x0:x1] * scale, mag[y0:y1, x0:x1] * scale, moving[y0:y1, x0:x1]
    ang = np.arctan2(box_v[..., 1], box_v[..., 0])  # image y points down
    # bins centred on the axes: bin 0 points left, bins/4 up, bins/2 right, 3 bins/4 down
    b = np.floor((ang + np.pi) / (2 * np.pi) * spec.bins + 0.5).astype(np.int64) % spec.bins
    g = spec.grid
    cy = np.minimum(np.arange(bh) * g // bh, g - 1)[:, None]
    cx = np.minimum(np.arange(bw) * g // bw, g - 1)[None, :]
    cell = (cy * g + cx) * spec.bins + b
    weights = np.where(box_moving, box_mag, 0.0)
    hist = np.bincount(cell.ravel(), weights.ravel(), minlength=g * g * spec.bins)
    out[:g * g * spec.bins] = hist / (bh * bw / (g * g))  # mean per pixel of a cell
    sel = v[moving]
    out[-GLOBALS:] = (sel[:, 0].mean() * scale, sel[:, 1].mean() * scale, mag[moving].mean() * scale,
                      moving.mean(), bw / bh, bh / h)
    return out


def flow_window(descs: np.ndarray, history: np.ndarray | None,
                spec: FlowFeatures) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM's motion input for consecutive steps: per step, its descriptor, then the mean and the std of it
    and the `window - 1` before it. descs: (T, pair_dim) in stream order; history: the descriptors carried from the
    previous call (None at a stream start). Returns ((T, dim) float32, new history). The runtime and training
    both use this function."""
    past = np.zeros((0, spec.pair_dim), np.float32) if history is None else history
    joined = np.concatenate([past, descs.astype(np.float32)])
    n0 = len(past)
    out = np.empty((len(descs), spec.dim), np.float32)
    for i in range(len(descs)):
        win = joined[max(0, n0 + i + 1 - spec.window):n0 + i + 1]
        out[i, :spec.pair_dim] = win[-1]
        out[i, spec.pair_dim:2 * spec.pair_dim] = win.mean(axis=0)
        out[i, 2 * spec.pair_dim:] = win.std(axis=0)
    return out, joined[-(spec.window - 1):] if spec.window > 1 else joined[:0]
