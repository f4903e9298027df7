"""The recognizer inside your own program: frames and audio in, with their times; each step's labels out.

    from actstream import Recognizer

    rec = Recognizer()                        # the default model (or a model folder), ONNX Runtime on the CPU
    for t, frame in my_frames:                # BGR uint8 (H, W, 3), t in seconds
        for step in rec.push_video(frame, t):
            print(step.t, step.labels["action"].label)
    rec.push_audio(samples, t0)               # mono float32 at rec.sample_rate; t0: the first sample's time
    rec.finish()                              # the steps up to the end of what was pushed
    rec.reset()                               # a new stream

A step is complete once what it needs has been pushed: the audio up to its end and, for video, a frame later
than it (so its newest frame is known). Each step goes through the same step core as `actstream replay`
(the front end, the encoders, the LSTM with its state, the label policy), so the labels and scores equal what
replay publishes for the same media (to replay's 4 decimals). Not thread-safe: one thread pushes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.common.errors import ConfigError
from actstream.stream.policy import HeadLabel
from actstream.stream.rings import AudioRing
from actstream.stream.steps import Snapshot, step_time

AUDIO_RING_S = 30.0
CONTIGUOUS_S = 0.02  # audio pushed this close to the end of the last push continues it


@dataclass(frozen=True)
class StepLabels:
    """One step's labels: t (s, the end of the step), labels (head -> HeadLabel: label, score, scores,
    changed) for the heads whose input the step had."""

    t: float
    labels: dict[str, HeadLabel]


class Recognizer:
    """A model's recognizer for one stream at a time, fed by the caller.

    model: "default" or a model folder (`actstream train`); backend: onnxruntime (CPU), torch, torch-cuda or
    tensorrt; audio, video: whether you will push audio and frames (default: what the model reads: a step
    waits for each input you said you would push)."""

    def __init__(self, model: str | Path = "default", backend: str = "onnxruntime", audio: bool | None = None,
                 video: bool | None = None, config: str | Path | None = None):
        from actstream.stream.config import load_config
        from actstream.stream.pipeline import open_model

        cfg = load_config(config).override("model", path=str(model), backend=backend)
        self.spec, self.step_ms, self._engines, self._policy = open_model(cfg)
        if not self.spec.causal:
            self.close()
            raise ConfigError(f"model {self.spec.name} is a {self.spec.arch}: it looks ahead and gives each label late; "
                              f"use `actstream replay` for it")
        self.audio = "audio" in self.spec.modalities if audio is None else audio
        self.video = "video" in self.spec.modalities if video is None else video
        if not (self.audio or self.video):
            self.close()
            raise ConfigError("a recognizer needs audio or video pushed to it: pass audio=True or video=True")
        self.sample_rate = self.spec.audio.sample_rate if self.spec.audio else 16000
        self.heads = dict(self.spec.heads)
        self.reset()

    @property
    def step_s(self) -> float:
        return self.step_ms / 1000.0

    def reset(self) -> None:
        """Forget the stream: the next push starts a new one at its own times."""
        self._policy.reset()
        self._ring = AudioRing(int(AUDIO_RING_S * self.sample_rate))
        self._audio_started = False
        self._frames: deque[tuple[float, np.ndarray]] = deque()
        self._frame_gap = 0.0  # the last interval between frames (s): how long the last frame lasts
        self._k = 0  # steps done
        self._window = self.spec.audio.window_samples if self.spec.audio else 1
        self._buf = np.zeros(self._window, np.float32)

    def push_audio(self, samples: np.ndarray, t: float | None = None) -> list[StepLabels]:
        """Mono float32 samples at `sample_rate`; t: the time of the first (s; None: right after the last
        push; within 20 ms of it, the same). A gap between pushes is silence. Returns the steps this completes."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if t is not None:  # where it goes: contiguous with the last push within CONTIGUOUS_S (a decoder's blocks
            start = int(round(t * self.sample_rate))  # carry rounded times), else a gap of silence
            slack = int(CONTIGUOUS_S * self.sample_rate) if self._audio_started else 0
            if start < self._ring.written - slack:
                raise ConfigError(f"audio at {t:.3f} s goes back in time (pushed up to "
                                  f"{self._ring.written / self.sample_rate:.3f} s): reset() for a new stream")
            if start > self._ring.written + slack:
                self._ring.skip_to(start)
        self._audio_started = True
        self._ring.write(np.where(np.isfinite(x), x, np.float32(0.0)))
        return self._steps()

    def push_video(self, frame: np.ndarray, t: float) -> list[StepLabels]:
        """A BGR uint8 frame (H, W, 3) shown from t (s). Returns the steps this completes."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ConfigError(f"a frame is BGR uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._frames and t <= self._frames[-1][0]:
            raise ConfigError(f"frame at {t:.3f} s is not after the last one ({self._frames[-1][0]:.3f} s): "
                              f"reset() for a new stream")
        if self._frames:
            self._frame_gap = t - self._frames[-1][0]
        self._frames.append((t, frame))
        return self._steps()

    def finish(self) -> list[StepLabels]:
        """The stream ended: the steps up to the end of what was pushed (the last frame lasts as long as the
        interval before it)."""
        end = max(self._ring.written / self.sample_rate if self._audio_started else 0.0,
                  self._frames[-1][0] + self._frame_gap if self._frames else 0.0)
        return self._steps(end)

    def _ready(self, t: float) -> bool:
        audio = not self.audio or self._ring.written >= int(round(t * self.sample_rate))
        video = not self.video or (bool(self._frames) and self._frames[-1][0] > t + 1e-9)
        return audio and video

    def _snapshot(self, t: float) -> Snapshot:
        frame = frame_t = None
        while len(self._frames) > 1 and self._frames[1][0] <= t + 1e-9:  # older frames no step will take
            self._frames.popleft()
        if self._frames and self._frames[0][0] <= t + 1e-9:
            frame_t, frame = self._frames[0]
        audio = None
        if self._audio_started:
            audio = self._ring.read(int(round(t * self.sample_rate)), self._window, self._buf).copy()
        return Snapshot(t, frame, audio, 0.0, frame_t)

    def _steps(self, end: float | None = None) -> list[StepLabels]:
        out = []
        while True:
            t = step_time(self._k + 1, self.step_ms)
            if end is None and not self._ready(t) or end is not None and t > end + 1e-6:
                return out
            self._k += 1
            state = self._policy.recognizer.state
            for labels in self._policy.advance_inputs(state.prepare([self._snapshot(t)])):
                out += [StepLabels(ts, ls) for ts, ls in labels]

    def close(self) -> None:
        if self._engines is not None:
            self._engines.close()
            self._engines = None

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
