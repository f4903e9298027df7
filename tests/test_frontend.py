import numpy as np
import pytest

from actstream.engines.features import AudioFeatures, VideoFeatures, preprocess_frame
from actstream.stream.frontend import audio_window, hz_to_mel, logmel, mel_filterbank, step_windows

SPEC = AudioFeatures()


def reference_logmel(x: np.ndarray, spec: AudioFeatures) -> np.ndarray:
    """Straight from the definitions, in float64 and loops: Hann-windowed DFT per frame, triangular HTK
    mel filters built point by point, log of power + 1e-6."""
    n = 1 + (len(x) - spec.win) // spec.hop
    hann = np.array([0.5 - 0.5 * np.cos(2 * np.pi * i / spec.win) for i in range(spec.win)])
    k = np.arange(spec.n_fft // 2 + 1)
    basis = np.exp(-2j * np.pi * np.outer(k, np.arange(spec.win)) / spec.n_fft)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = [imel(mel(spec.fmin) + i * (mel(spec.fmax) - mel(spec.fmin)) / (spec.n_mels + 1))
           for i in range(spec.n_mels + 2)]
    fb = np.zeros((len(k), spec.n_mels))
    for m in range(spec.n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for j, f in enumerate(k * spec.sample_rate / spec.n_fft):
            if lo < f <= c:
                fb[j, m] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[j, m] = (hi - f) / (hi - c)
    out = np.zeros((n, spec.n_mels))
    for i in range(n):
        frame = x[i * spec.hop: i * spec.hop + spec.win].astype(np.float64) * hann
        power = np.abs(basis @ frame) ** 2
        out[i] = np.log(power @ fb + 1e-6)
    return out


def test_logmel_matches_reference_computation():
    rng = np.random.default_rng(1)
    t = np.arange(4000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ours = logmel(x, SPEC)
    ref = reference_logmel(x, SPEC)
    assert ours.shape == ref.shape == (1 + (4000 - 400) // 160, 64)
    assert np.abs(ours - ref).max() < 2e-3  # float32 FFT against float64 DFT, in log units


def test_tone_lands_in_its_band():
    t = np.arange(16000) / 16000
    mel = logmel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), SPEC)
    centres = np.linspace(hz_to_mel(SPEC.fmin), hz_to_mel(SPEC.fmax), SPEC.n_mels + 2)[1:-1]
    assert abs(int(mel.mean(0).argmax()) - int(np.abs(centres - hz_to_mel(1000)).argmin())) <= 1


def test_mel_scale_and_filters():
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.5)  # the HTK scale's anchor point
    fb = mel_filterbank(16000, 512, 64, 60.0, 7800.0)
    assert fb.shape == (257, 64)
    assert fb.max() <= 1.0 and (fb.max(axis=0) > 0.5).all()  # every band sees at least one bin near its peak


def test_window_geometry_and_padding():
    assert SPEC.window_samples == 15600
    short = audio_window(np.ones(100, np.float32), SPEC)
    assert short.shape == (96, 64)
    assert np.allclose(short[0], np.log(1e-6))  # the missing past is silence


def test_step_windows_equal_per_step_windows():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32)
    batch = step_windows(x, SPEC, 1600, 30)
    for k in (1, 7, 9, 10, 30):
        assert np.allclose(batch[k - 1], audio_window(x[:k * 1600], SPEC), atol=1e-4)


def test_preprocess_frame():
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    x = preprocess_frame(frame, VideoFeatures())
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x[0], (255 - 127) / 128) and np.allclose(x[2], -127 / 128)  # RGB order, normalized
