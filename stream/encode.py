"""The front end and the encoders: the snapshots of a stream's steps in, per step the LSTM's inputs out.

`Prepare` turns snapshots into encoder inputs (log-mel windows, frames resized and normalized, the small grey
frames of the motion stream); `encode_many` runs each encoder once over the inputs of many streams (the video
rows of the streams that have a new frame, the audio rows of those that have audio) and gives each stream its
embeddings back, with what its video encoders carry from step to step (`VideoState`). One stream is the
N = 1 case of the same code. No sockets, devices or threads of its own: live capture, paced and fast replay,
training, calibration and evaluation all use it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from actstream.engines.archs import VIDEO_DIM
from actstream.engines.bundle import Engines, ModelSpec
from actstream.engines.features import preprocess_frame
from actstream.engines.flow import dense_flow, describe_flow, small_gray
from actstream.stream.frontend import audio_window, grid_windows


@dataclass
class StageTimes:
    """Cumulative seconds per stage and step count, for status messages and the benchmark."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def mean_ms(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {k: round(v * 1000.0 / n, 3) for k, v in self.seconds.items()}


@dataclass
class Inputs:
    """Encoder inputs of consecutive steps of one stream, made by `Prepare`. ts: step times (s); mels:
    (T, frames, n_mels) or None; images: (U, 3, size, size) preprocessed unique frames, or (U, H, W, 3) raw BGR
    frames for an engine that takes frames, or None; frame_of: per step, the row of `images`, or -1 when the
    step has no new frame (none yet, or the same as the previous step's: the last embedding holds); grays: per
    row of `images`, the small grey frame the motion stream's flow is computed on (models with `flow`), else
    None, and gray_ts the frames' own times (s); present: (T, streams) 1.0 where the step has that input stream
    (a frame, an audio window), in spec.presence order, for models told their inputs' presence, else None."""

    ts: list[float]
    mels: np.ndarray | None
    images: np.ndarray | None
    frame_of: list[int]
    grays: list[np.ndarray] | None = None
    gray_ts: list[float] | None = None
    present: np.ndarray | None = None


def _batch_logmel(windows: list[np.ndarray], spec, step: int) -> np.ndarray:
    """The audio CNN inputs of consecutive steps from their audio windows: (T, frames, n_mels), equal to
    [audio_window(w) for w in windows]; on the shared frame grid (frontend.grid_windows) where it applies."""
    need = spec.window_samples
    if len(windows) == 1 or step % spec.hop or step > need or not all(len(w) >= need for w in windows):
        return np.stack([audio_window(w, spec) for w in windows])
    joined = np.concatenate([windows[0][-need:]] + [w[-step:] for w in windows[1:]])
    return grid_windows(joined, spec, step, len(windows))


class Prepare:
    """The front end of one stream: snapshots of consecutive steps -> Inputs (log-mel windows, frames resized
    and normalized). It remembers the stream's last frame, so a frame repeated by a step shorter than the frame
    interval is encoded once. pool: an executor to resize frames on (fast replay with cores to spare)."""

    def __init__(self, spec: ModelSpec, engines: Engines, step_ms: int, times: StageTimes, pool=None):
        self.spec = spec
        self.use_audio, self.use_video = "audio" in spec.modalities, "video" in spec.modalities
        # a GPU engine that preprocesses frames itself gets them raw (engines/torch_cuda.py)
        self.raw = self.use_video and "video" in engines.encoders and engines.encoders["video"].takes_frames
        self.step_samples = int(round(step_ms * spec.audio.sample_rate / 1000)) if spec.audio else 0
        self.times = times
        self.pool = pool if self.use_video and not self.raw else None
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the last frame (a new stream starts)."""
        self._previous: np.ndarray | None = None

    def use_pool(self, pool) -> None:
        """Resize frames on `pool` from now on (where frames are resized here at all)."""
        self.pool = pool if self.use_video and not self.raw else None

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        x = preprocess_frame(frame, self.spec.video)
        with self._lock:
            self.times.add("preprocess", time.perf_counter() - t0)
        return x

    def __call__(self, snaps) -> Inputs:
        ts, windows, images, frame_of, present = [], [], [], [], []
        grays = [] if self.spec.flow is not None and self.use_video else None
        gray_ts = [] if grays is not None else None
        for snap in snaps:
            ts.append(snap.t)
            present.append([snap.frame is not None if m == "video" else snap.audio is not None
                            for m in self.spec.presence])
            if self.use_audio:
                windows.append(snap.audio if snap.audio is not None else np.zeros(0, np.float32))
            if self.use_video:
                frame = snap.frame
                if frame is None:
                    frame_of.append(-1)
                elif self._previous is not None and np.array_equal(frame, self._previous):
                    frame_of.append(frame_of[-1] if frame_of else -1)
                else:
                    self._previous = frame.copy()
                    if grays is not None:
                        t0 = time.perf_counter()
                        grays.append(small_gray(self._previous, self.spec.flow))
                        gray_ts.append(snap.t if snap.frame_t is None else snap.frame_t)
                        self.times.add("flow", time.perf_counter() - t0)
                    images.append(self._previous if self.raw else self.pool.submit(self._frame, self._previous)
                                  if self.pool is not None else self._frame(self._previous))
                    frame_of.append(len(images) - 1)
        if self.pool is not None:
            images = [f.result() for f in images]
        mels = None
        if windows:
            t0 = time.perf_counter()
            mels = _batch_logmel(windows, self.spec.audio, self.step_samples)
            self.times.add("audio_frontend", time.perf_counter() - t0)
        return Inputs(ts, mels, np.stack(images) if images else None, frame_of, grays, gray_ts,
                      np.asarray(present, np.float32) if self.spec.presence else None)


@dataclass
class VideoState:
    """What the video encoders carry from step to step for one stream: the newest embedding (a step without
    a new frame reuses it), the newest small grey frame and its time (the flow's previous frame), and the
    newest flow descriptor (held, like the embedding, on a step without a new frame)."""

    last: np.ndarray | None = None
    gray: np.ndarray | None = None
    gray_t: float = 0.0
    flow: np.ndarray | None = None


def flow_descriptors(spec: ModelSpec, inputs: Inputs, state: VideoState) -> np.ndarray:
    """Per step, the flow descriptor between its frame and the previous step's frame, its speeds measured
    by the frames' own times (at 25 fps, 100 ms steps take frames 80 or 120 ms apart): (T, pair_dim)."""
    rows, seen = [], -1
    zero = np.zeros((1, spec.flow.pair_dim), np.float32)
    for i in inputs.frame_of:
        if i >= 0 and i != seen:
            seen, gray, t = i, inputs.grays[i], inputs.gray_ts[i]
            if state.gray is not None and state.gray.shape == gray.shape and t > state.gray_t:
                state.flow = describe_flow(dense_flow(state.gray, gray), t - state.gray_t, spec.flow)[None]
            else:  # the first frame, or the picture changed size: no motion yet
                state.flow = zero
            state.gray, state.gray_t = gray, t
        rows.append(state.flow if state.flow is not None else zero)
    return np.concatenate(rows)


def _run_video(engine, images: list[np.ndarray]) -> list[np.ndarray]:
    """The video CNN over the unique frames of several streams: one run per `preferred_batch` frames, rows
    handed back per stream. Raw frames (an engine that resizes them itself) batch only with frames of their
    own size."""
    sizes = [len(x) for x in images]
    if engine.takes_frames and len({x.shape[1:] for x in images}) > 1:
        return [_run_video(engine, [x])[0] for x in images]
    joined = images[0] if len(images) == 1 else np.concatenate(images)
    chunk = engine.preferred_batch or len(joined)
    out = np.concatenate([engine.run({"image": joined[i:i + chunk]})["embedding"]
                          for i in range(0, len(joined), chunk)])
    return np.split(out, np.cumsum(sizes)[:-1])


def encode_many(spec: ModelSpec, engines: Engines, times: StageTimes,
                items: list[tuple[Inputs, VideoState]]) -> list[dict[str, np.ndarray]]:
    """The encoders over the prepared steps of several streams at once: per stream, LSTM input name -> (T, D)
    embeddings; each stream's `VideoState` carries its video encoders' memory to its next call (and `present`,
    its steps' input streams, for models told it). Each encoder runs once for all the streams (the audio rows of
    the streams with audio, the video rows of the streams with a new frame). Training computes its cached
    embeddings with this same function (training/teach.py). Motion features over several steps (the running
    mean of video embeddings, the flow window), where the model uses them, are added by the recognizer."""
    clock = time.perf_counter
    outs: list[dict[str, np.ndarray]] = [{} for _ in items]
    with_audio = [k for k, (inputs, _) in enumerate(items) if inputs.mels is not None]
    if with_audio:
        t0 = clock()
        mels = [items[k][0].mels for k in with_audio]
        joined = mels[0] if len(mels) == 1 else np.concatenate(mels)
        emb = engines.encoders["audio"].run({"logmel": joined})["embedding"]
        for k, part in zip(with_audio, np.split(emb, np.cumsum([len(m) for m in mels])[:-1])):
            outs[k]["audio"] = part
        times.add("audio_cnn", clock() - t0)
    if "video" in spec.modalities:
        with_frames = [k for k, (inputs, _) in enumerate(items) if inputs.images is not None]
        video: dict[int, np.ndarray] = {}
        if with_frames:
            t0 = clock()
            rows = _run_video(engines.encoders["video"], [items[k][0].images for k in with_frames])
            video = dict(zip(with_frames, rows))
            times.add("video_cnn", clock() - t0)
        for k, (inputs, state) in enumerate(items):
            rows = []
            for i in inputs.frame_of:
                if i >= 0:
                    state.last = video[k][i:i + 1]
                rows.append(state.last if state.last is not None else np.zeros((1, VIDEO_DIM), np.float32))
            outs[k]["video"] = np.concatenate(rows)
    if spec.flow is not None:
        t0 = clock()
        for k, (inputs, state) in enumerate(items):
            outs[k]["flow"] = flow_descriptors(spec, inputs, state)
        times.add("flow", clock() - t0)
    for k, (inputs, _) in enumerate(items):
        if inputs.present is not None:
            outs[k]["present"] = inputs.present
    return outs


def encode(spec: ModelSpec, engines: Engines, times: StageTimes, inputs: Inputs,
           state: VideoState) -> dict[str, np.ndarray]:
    """One stream's prepared steps through the encoders: `encode_many` with N = 1."""
    return encode_many(spec, engines, times, [(inputs, state)])[0]
