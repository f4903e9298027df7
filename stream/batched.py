"""Batched fast replay: the encoders run over batches of steps, the LSTM stays sequential.

One worker thread decodes the recording and prepares each batch (frames resized and normalized, log-mel
windows) while the caller's thread runs the encoders on the previous batch; a bounded queue (two batches)
between them keeps memory flat. Then the LSTM is advanced through the batch's steps in order, and the label
policy and the publisher see exactly the sequence the step-by-step loop gives them. Labels equal the
step-by-step path's; probabilities differ only by float rounding between batch sizes (well under 1e-3).

Only for fast replay of a file with a causal model: live capture and paced replay stay step by step, since
batching would add latency there.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from engines.archs import VIDEO_DIM

from .core import Recognizer, StageTimes
from .frontend import audio_window, grid_windows, preprocess_frame
from .loop import RunSummary, StepLoop

log = logging.getLogger(__name__)

_END = object()


@dataclass
class Batch:
    """Inputs for consecutive steps. ts: step times (s); mels: (T, frames, n_mels) or None; images:
    (U, 3, size, size) unique frames or None; frame_of: per step, the row of `images`, or -1 when the step
    has no new frame (none yet, or the same as the previous step's: the last embedding holds)."""

    ts: list[float]
    mels: np.ndarray | None
    images: np.ndarray | None
    frame_of: list[int]


def _batch_logmel(windows: list[np.ndarray], spec, step: int) -> np.ndarray:
    """The audio CNN inputs of consecutive steps from their audio windows: (T, frames, n_mels), equal to
    [audio_window(w) for w in windows]; on the shared frame grid (frontend.grid_windows) where it applies."""
    need = spec.window_samples
    if step % spec.hop or step > need or not all(len(w) >= need for w in windows):
        return np.stack([audio_window(w, spec) for w in windows])
    joined = np.concatenate([windows[0][-need:]] + [w[-step:] for w in windows[1:]])
    return grid_windows(joined, spec, step, len(windows))


class BatchedReplay(StepLoop):
    """A StepLoop for fast replay whose encoders run `batch_steps` steps at a time (see the module doc).

    Same messages, in the same order, as StepLoop on the virtual clock."""

    # On the CPU the video CNN runs a batch 8 frames at a time: at 224 px one frame's first activations are
    # 1.6 MB, so 8 stay in the cache where 32 would not (a GPU takes the whole batch at once).
    cpu_video_chunk = 8
    # threads that resize frames beside the decoding thread: the cores left after the decoder and the
    # caller's thread, at most 4 (0 on a 2-core machine: no spare core, the decoder resizes inline)
    prep_threads = max(0, min(4, (os.cpu_count() or 1) - 2))

    def __init__(self, source, policy, publisher, step_s: float, batch_steps: int = 32,
                 status_every_s: float = 1.0, max_seconds: float = 0.0, virtual_epoch: float = 0.0,
                 backend: str = "onnxruntime"):
        super().__init__(source, policy, publisher, step_s, False, status_every_s, max_seconds, virtual_epoch,
                         backend)
        if not isinstance(policy.recognizer, Recognizer):
            raise TypeError("BatchedReplay needs a causal Recognizer")
        self.batch_steps = batch_steps
        self.worker_times = StageTimes()
        self._error: BaseException | None = None

    # -- worker thread: decode and front end --------------------------------------------------------
    def _prepare(self, out: queue.Queue) -> None:
        spec = self.policy.recognizer.spec
        use_audio, use_video = "audio" in spec.modalities, "video" in spec.modalities
        clock = time.perf_counter
        times = self.worker_times
        k = 0
        previous_raw: np.ndarray | None = None
        lock = threading.Lock()

        def prep(frame: np.ndarray) -> np.ndarray:
            t0 = clock()
            x = preprocess_frame(frame, spec.video)
            with lock:
                times.add("preprocess", clock() - t0)
            return x

        # a GPU engine that preprocesses frames itself gets them raw (engines/torch_cuda.py); otherwise frames
        # are resized on helper threads while this one decodes on, where there are cores to spare (OpenCV
        # releases the GIL); on two cores the encoders need the second core, so it stays inline
        raw = use_video and getattr(self.policy.recognizer.engines.encoders["video"], "takes_frames", False)
        pool = (ThreadPoolExecutor(self.prep_threads, "replay-preprocess")
                if self.prep_threads and use_video and not raw else None)
        try:
            while not self.stop_event.is_set():
                ts, mels, images, frame_of = [], [], [], []
                while len(ts) < self.batch_steps and not (self.max_steps and k >= self.max_steps):
                    t = (k + 1) * self.step_ms / 1000.0
                    t0 = clock()
                    snap = self.source.snapshot(t)
                    t1 = clock()
                    times.add("decode", t1 - t0)
                    if snap is None:
                        break
                    k += 1
                    ts.append(t)
                    if use_audio:
                        mels.append(snap.audio if snap.audio is not None else np.zeros(0, np.float32))
                    if use_video:
                        frame = snap.frame
                        if frame is None:
                            frame_of.append(-1)
                        elif previous_raw is not None and np.array_equal(frame, previous_raw):
                            # the same frame as the step before (step shorter than the frame interval)
                            frame_of.append(frame_of[-1] if frame_of else -1)
                        else:
                            previous_raw = frame.copy()
                            images.append(previous_raw if raw else pool.submit(prep, previous_raw) if pool
                                          else prep(previous_raw))
                            frame_of.append(len(images) - 1)
                if not ts:
                    break
                if pool is not None:
                    images = [f.result() for f in images]
                logmels = None
                if mels:
                    t0 = clock()
                    step = int(round(self.step_ms * spec.audio.sample_rate / 1000))
                    logmels = _batch_logmel(mels, spec.audio, step)
                    times.add("audio_frontend", clock() - t0)
                batch = Batch(ts, logmels, np.stack(images) if images else None, frame_of)
                while not self.stop_event.is_set():
                    try:
                        out.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if len(ts) < self.batch_steps:
                    break
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self._error = exc
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            while True:
                try:
                    out.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    if self.stop_event.is_set():
                        break

    # -- caller's thread: encoders, LSTM, policy, publish -------------------------------------------
    def _encode(self, batch: Batch, last_video: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        rec = self.policy.recognizer
        clock = time.perf_counter
        embs: dict[str, np.ndarray] = {}
        if batch.mels is not None:
            t0 = clock()
            embs["audio"] = rec.engines.encoders["audio"].run({"logmel": batch.mels})["embedding"]
            rec.times.add("audio_cnn", clock() - t0)
        if "video" in rec.spec.modalities:
            video = None
            if batch.images is not None:
                t0 = clock()
                engine = rec.engines.encoders["video"]
                chunk = self.cpu_video_chunk if engine.backend == "onnxruntime" else len(batch.images)
                video = np.concatenate([engine.run({"image": batch.images[i:i + chunk]})["embedding"]
                                        for i in range(0, len(batch.images), chunk)])
                rec.times.add("video_cnn", clock() - t0)
            rows = []
            for i in batch.frame_of:  # -1: no new frame, the last embedding holds (as in Recognizer.step)
                if i >= 0:
                    last_video = video[i:i + 1]
                rows.append(last_video if last_video is not None else np.zeros((1, VIDEO_DIM), np.float32))
            embs["video"] = np.concatenate(rows)
        return embs, last_video

    def run(self) -> RunSummary:
        started = time.perf_counter()
        q: queue.Queue = queue.Queue(maxsize=2)
        worker = threading.Thread(target=self._prepare, args=(q,), name="replay-prepare", daemon=True)
        worker.start()
        rec = self.policy.recognizer
        k, t = 0, 0.0
        last_video = None
        clock = time.perf_counter
        try:
            while True:
                batch = q.get()
                if batch is _END:
                    break
                embs, last_video = self._encode(batch, last_video)
                probs = rec.step_many(embs, batch.ts)
                t0 = clock()
                for t, labels in self.policy.label(zip(batch.ts, probs)):
                    k += 1
                    wall = self.virtual_epoch + t
                    self._publish_labels([(t, labels)], wall)
                    if k % self.status_every == 0:
                        self._status("running", t, wall, k, self.status_every, 0.0)
                rec.times.add("publish", clock() - t0)
                if self.stop_event.is_set():
                    break
        finally:
            self.stop_event.set()
            worker.join(timeout=5.0)
            if worker.is_alive():
                log.warning("replay worker did not stop within 5 s; leaving it (daemon)")
        if self._error is not None:
            raise self._error
        self._status("end", t, self.virtual_epoch + t, k, 0, 0.0)
        stage = dict(rec.times.mean_ms())
        n = max(rec.times.steps, 1)
        stage.update({s: round(v * 1000.0 / n, 3) for s, v in self.worker_times.seconds.items()})
        return RunSummary(steps=k, media_s=t, elapsed_s=time.perf_counter() - started,
                          messages=self.publisher.sent, stage_ms=stage, drops=self.source.drops())
