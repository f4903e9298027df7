"""Other voice activity detectors, scored on the very same audio and 100 ms steps as the model (`--compare`).

Each peer turns a 16 kHz mono float recording into one speech decision per step:
* silero: silero-vad's own segmenter `get_speech_timestamps` (default settings), read with the truth's
  convention: a step is speech when speech covers most of its last 75 ms.
* ten: TEN VAD's own frame decisions (hop 256 samples = 16 ms, its default threshold 0.5); a step is speech when
  at least half of the frames whose centre lies inside it are.
* webrtc: WebRTC VAD at aggressiveness 3 on 30 ms frames of 16-bit PCM, the same majority per step. Mode 3
  rejects non-speech hardest; it was chosen before looking at any figure (choosing it on the test splits would
  tune on them), because half the segments of the eval's timelines are office events, several of them voiced.

A peer whose package is missing fails when it is checked, with the line to install it.
"""

from __future__ import annotations

import numpy as np

from actstream.common.errors import ConfigError

PEERS = ("silero", "ten", "webrtc")
PACKAGES = {"silero": ("silero_vad", "silero-vad"), "ten": ("ten_vad", "ten-vad"),
            "webrtc": ("webrtcvad", "webrtcvad-wheels")}
TEN_HOP = 256  # samples at 16 kHz: TEN VAD's own frame (16 ms)
TEN_THRESHOLD = 0.5  # TEN VAD's default
WEBRTC_FRAME = 480  # samples at 16 kHz: 30 ms, the longest frame WebRTC VAD takes
WEBRTC_MODE = 3


def parse_peers(values: list[str] | None) -> list[str]:
    """The peers named by --compare, given once with commas or repeated, in order, each once."""
    names: list[str] = []
    for v in values or []:
        for name in v.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in PEERS:
                raise ConfigError(f"--compare {name!r} unknown: expected one or more of {', '.join(PEERS)} "
                                  f"(comma-separated)")
            if name not in names:
                names.append(name)
    return names


def check_peers(names: list[str]) -> None:
    """Each named peer can run here: its package imports (and TEN VAD's native library loads)."""
    import importlib

    for name in names:
        module, package = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--compare {name} needs the {package} package, which is not installed: "
                              f"pip install {package} (or pip install 'actstream[eval]')") from exc
        if name == "ten":
            try:
                _ten_vad()
            except OSError as exc:  # ten-vad's wheel carries libten_vad.so, linked against LLVM's libc++
                raise ConfigError(f"--compare ten: TEN VAD's native library does not load ({exc}): it needs "
                                  f"libc++ (Debian: apt-get install libc++1)") from exc


def peer_steps(name: str, audio: np.ndarray, n_steps: int, rate: int = 16000, step: int = 1600) -> np.ndarray:
    """The peer's speech decision (0/1) for each of the first n_steps steps of `step` samples of `audio`."""
    if rate != 16000:
        raise ConfigError(f"sample rate {rate} not supported by the peer VADs: expected 16000")
    if name == "silero":
        return silero_steps(audio, n_steps, rate, step)
    if name == "ten":
        return frames_to_steps(ten_frames(audio), TEN_HOP, n_steps, step)
    if name == "webrtc":
        return frames_to_steps(webrtc_frames(audio, rate), WEBRTC_FRAME, n_steps, step)
    raise ConfigError(f"peer {name!r} unknown: expected one of {', '.join(PEERS)}")


def frames_to_steps(frames: np.ndarray, frame: int, n_steps: int, step: int) -> np.ndarray:
    """Frame decisions (frames of `frame` samples from sample 0) to steps: a step is speech when at least half
    of the frames whose centre lies inside it are; a step with no frame (past the end) is not."""
    centres = np.arange(len(frames)) * frame + frame // 2
    owner = centres // step
    keep = owner < n_steps
    votes = np.bincount(owner[keep], weights=frames[keep].astype(float), minlength=n_steps)
    counts = np.bincount(owner[keep], minlength=n_steps)
    return ((counts > 0) & (votes * 2 >= counts)).astype(np.int64)


def pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def _ten_vad():
    import ctypes
    import os

    import ten_vad

    lib = os.path.join(os.path.dirname(ten_vad.__file__), "lib", "Linux", "x64", "libten_vad.so")
    if os.path.exists(lib):  # load it first: when TenVad's own load fails, its __del__ raises again on the way out
        ctypes.CDLL(lib)
    return ten_vad.TenVad(TEN_HOP, TEN_THRESHOLD)


def ten_frames(audio: np.ndarray) -> np.ndarray:
    """TEN VAD's flag for each whole 16 ms frame, one fresh detector per recording."""
    vad = _ten_vad()
    x = pcm16(audio)
    n = len(x) // TEN_HOP
    out = np.empty(n, np.int8)
    for j in range(n):
        out[j] = vad.process(np.ascontiguousarray(x[j * TEN_HOP:(j + 1) * TEN_HOP]))[1]
    return out


def webrtc_frames(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """WebRTC VAD's decision for each whole 30 ms frame, one fresh detector per recording."""
    import webrtcvad

    vad = webrtcvad.Vad(WEBRTC_MODE)
    raw = pcm16(audio).tobytes()
    n = len(raw) // (2 * WEBRTC_FRAME)
    return np.array([vad.is_speech(raw[2 * WEBRTC_FRAME * j:2 * WEBRTC_FRAME * (j + 1)], rate) for j in range(n)],
                    np.int8)


def silero_steps(audio: np.ndarray, n_steps: int, rate: int = 16000, step: int = 1600) -> np.ndarray:
    """silero-vad's speech decision per step, from its own segmenter get_speech_timestamps (default settings),
    read with the truth's convention: a step is speech when speech covers most of its last 75 ms."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad()
    stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio, np.float32)), model,
                                   sampling_rate=rate)
    mask = np.zeros(len(audio), np.int8)
    for s in stamps:
        mask[s["start"]:s["end"]] = 1
    return np.array([int(mask[max(0, (k + 1) * step - 1200):(k + 1) * step].mean() >= 0.5) for k in range(n_steps)])
