"""Front end: log-mel spectrogram windows for the audio CNN and normalized frames for the video CNN.

`logmel` is the one function that turns samples into features, in training and at run time alike.
"""

from __future__ import annotations

import functools

import numpy as np

from actstream.engines.features import AudioFeatures


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, peak 1, shape (n_fft // 2 + 1, n_mels), float32."""
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    return np.ascontiguousarray(bank.T, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _hann(win: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)).astype(np.float32)


LOG_FLOOR = 1e-6


def logmel(samples: np.ndarray, spec: AudioFeatures) -> np.ndarray:
    """Log-mel frames of mono float samples in [-1, 1] at spec.sample_rate.

    Frame j covers samples [j * hop, j * hop + win). Returns float32 (n_frames, n_mels) of
    log(mel power + 1e-6); fewer samples than one window give zero frames.
    """
    x = np.asarray(samples, dtype=np.float32)
    n = 0 if len(x) < spec.win else 1 + (len(x) - spec.win) // spec.hop
    if n == 0:
        return np.zeros((0, spec.n_mels), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(x, shape=(n, spec.win), strides=(x.strides[0] * spec.hop, x.strides[0]))
    power = np.abs(np.fft.rfft(frames * _hann(spec.win), n=spec.n_fft, axis=1)) ** 2
    mel = power.astype(np.float32) @ mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)
    return np.log(mel + LOG_FLOOR).astype(np.float32)


def audio_window(samples: np.ndarray, spec: AudioFeatures) -> np.ndarray:
    """The CNN input for the audio window ending at the last sample: (frames, n_mels) float32.

    Shorter input (the first second of a stream) is padded with silence at the start.
    """
    need = spec.window_samples
    x = np.asarray(samples, dtype=np.float32)[-need:]
    if len(x) < need:
        x = np.concatenate([np.zeros(need - len(x), dtype=np.float32), x])
    return logmel(x, spec)


def grid_windows(x: np.ndarray, spec: AudioFeatures, step: int, n: int) -> np.ndarray:
    """CNN inputs of n consecutive windows of x: window i is x[i * step : i * step + window_samples].
    Returns (n, frames, n_mels). Where `step` is a whole number of hops the windows share one log-mel frame
    grid, so each frame is computed once (32 steps of 100 ms: 406 frames instead of 3072)."""
    if step % spec.hop:
        raise ValueError(f"step {step} samples is not a multiple of the hop {spec.hop}")
    mel = logmel(np.asarray(x[:spec.window_samples + (n - 1) * step], dtype=np.float32), spec)
    idx = (np.arange(n) * (step // spec.hop))[:, None] + np.arange(spec.frames)[None, :]
    return mel[idx]


def step_windows(samples: np.ndarray, spec: AudioFeatures, step: int, n_steps: int) -> np.ndarray:
    """CNN inputs for steps 1..n_steps of a stream, step k ending at sample k * step: (n_steps, frames, n_mels).

    Equal to `audio_window(samples[:k * step])` for every k (the past before the stream is silence), so
    training sees what the step loop sees.
    """
    w = spec.window_samples
    x = np.zeros(w + n_steps * step, dtype=np.float32)
    tail = np.asarray(samples, dtype=np.float32)[:n_steps * step]
    x[w:w + len(tail)] = tail
    return grid_windows(x[step:], spec, step, n_steps)
