"""Representative encoder inputs: what the step path's encoders actually see when recordings are replayed.

Each recording is replayed through the real source and the step path's own front end (FileSource, Prepare)
at the model's step times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actstream.common.errors import SourceError
from actstream.common.files import shown_path

log = logging.getLogger(__name__)

MEDIA = {".mp4", ".mkv", ".avi", ".mpg", ".mov", ".webm", ".wav", ".flac", ".mp3", ".ogg", ".m4a"}
VIDEO = {".mp4", ".mkv", ".avi", ".mpg", ".mov", ".webm"}


def media_files(paths: list[str | Path], need_video: bool = False) -> list[Path]:
    """Media files under the given files and folders, sorted (video containers only if need_video)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in MEDIA and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise SourceError(f"{p}: not found: pass recordings or folders of recordings to --data")
    if need_video:
        out = [f for f in out if f.suffix.lower() in VIDEO]
    return out


@dataclass
class Recording:
    """One replayed recording: per step, the encoder inputs. mels: (T, frames, n_mels) or None;
    images: (T, 3, size, size) or None (the newest frame at each step; zeros before the first one); flow:
    (T, pair_dim) the motion stream's descriptors, for models with flow (they do not depend on the CNN's
    precision, but the labels compared do), else None."""

    path: Path
    ts: list[float] = field(default_factory=list)
    mels: np.ndarray | None = None
    images: np.ndarray | None = None
    flow: np.ndarray | None = None

    def tail(self, n: int) -> Recording:
        """The steps from step n on."""
        return Recording(self.path, self.ts[n:], *(None if a is None else a[n:]
                                                   for a in (self.mels, self.images, self.flow)))


def replay_inputs(path: Path, spec, max_steps: int = 0, modalities: tuple[str, ...] | None = None) -> Recording:
    """Replay `path` at the model's step through the step path's own source and front end (stream/encode.py's
    Prepare: log-mel windows, frames resized and normalized, the motion stream's grey frames and its flow), and
    keep the encoder inputs of each step (its first max_steps, 0 = all)."""
    from actstream.engines.bundle import Engines
    from actstream.stream.encode import Prepare, StageTimes, VideoState, flow_descriptors
    from actstream.stream.sources import FileSource
    from actstream.stream.steps import steps

    wanted = spec.modalities if modalities is None else modalities
    use_audio, use_video = "audio" in wanted, "video" in wanted
    audio = spec.audio
    src = FileSource(path, sample_rate=audio.sample_rate if audio else 16000,
                     window_samples=audio.window_samples if audio else 1, use_audio=use_audio, use_video=use_video)
    rec = Recording(path)
    mels, images, flows = [], [], []
    prepare, video = Prepare(spec, Engines({}, None), spec.step_ms, StageTimes()), VideoState()
    image = np.zeros((3, spec.video.size, spec.video.size), np.float32) if use_video else None
    try:
        if use_audio and src.audio is None:
            raise SourceError(f"{shown_path(path)}: has no audio, but model {spec.name} needs audio")
        if use_video and src.video is None:
            raise SourceError(f"{shown_path(path)}: has no video, but model {spec.name} needs video")
        for step in steps(src, spec.step_ms, max_steps):
            rec.ts.append(step.t)
            inputs = prepare([step.snap])
            if use_audio:
                mels.append(inputs.mels[0])
            if use_video:
                if inputs.frame_of[0] >= 0:  # a new frame; else the last one holds (zeros before the first)
                    image = inputs.images[inputs.frame_of[0]]
                images.append(image)
                if spec.flow is not None:
                    flows.append(flow_descriptors(spec, inputs, video)[0])
    finally:
        src.close()
    rec.mels = np.stack(mels) if mels else None
    rec.images = np.stack(images) if images else None
    rec.flow = np.stack(flows) if flows else None
    return rec


def split(files: list[Path], held_out_every: int = 4) -> tuple[list[Path], list[Path]]:
    """Calibration files and held-out files: every `held_out_every`-th file is held out (at least one of each
    when there are two or more files; a single file serves both, its first half calibrating)."""
    if len(files) < 2:
        return files, files
    held = [f for i, f in enumerate(files) if i % held_out_every == held_out_every - 1] or [files[-1]]
    return [f for f in files if f not in held], held
