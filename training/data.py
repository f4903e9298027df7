"""Training data: clips from a dataset, and stream-like timelines made from them with known truth.

A timeline is what the stream will see: clips concatenated with gaps of background, gain changes,
background noise, random cut points and transitions between classes. Its truth is one label per step.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.common.errors import SourceError
from actstream.stream.sources import load_audio

QUIET = "quiet"
SPEAKING = "speaking"
DCASE_EVENTS = ["clearthroat", "cough", "doorslam", "drawer", "keyboard", "keysDrop", "knock", "laughter",
                "pageturn", "phone"]
ACTIVITY_CLASSES = [*DCASE_EVENTS, SPEAKING, QUIET]
SPEECH_CLASSES = ["no_speech", "speech"]

# The held-out test splits of ../shared/data: never trained or tuned on.
TEST_SPLITS = {"librispeech_test_other": None, "dcase2016_task2": {"fold5"}, "fsdd": {"theo", "yweweler"},
               "kth": {"person04"}, "grid_av": None, "weizmann": {"ira", "lena"}, "ps7": {"P2"},
               "mmaction2_samples": None}


# The visual `action` head of the default model: what the video training splits teach, by their names in
# ../shared/data. PS7's one-hand `wave` is Weizmann's `wave1` (one action, one name). `still` is nothing
# whole-body happening (a person at rest, talking, fidgeting; an empty scene), `other` a movement none of the
# classes is. KTH's boxing, hand-clapping and jogging are taught as `other`: two people filmed at 160x120 could
# not teach boxing (version 3 had it, and anything unfamiliar became `boxing` with confidence), and as movements
# outside the classes they teach the head what the unknown looks like.
WEIZMANN_ACTIONS = ["bend", "jack", "jump", "pjump", "run", "side", "skip", "walk", "wave1", "wave2"]
STILL = "still"
OTHER = "other"
ACTION_SETS = {"weizmann": None, "ps7": None, "kth": None}  # dataset -> the labels taught (None: all)
SETTLE_S = 1.0  # a clip's first second is not judged: the LSTM settles, and the person often still stands at rest
ACTION_ALIASES = {"ps7": {"wave": "wave1"}, "kth": {"boxing": OTHER, "handclapping": OTHER, "jogging": OTHER}}
ACTION_CLASSES = [*WEIZMANN_ACTIONS, "arms_up_front", "arms_up_side", STILL, OTHER]


def action_label(dataset: str, label: str) -> str | None:
    """The action head's class for a video recording's label, or None where the head does not teach it."""
    taught = ACTION_SETS.get(dataset, set())
    if taught is not None and label not in taught:
        return None
    label = ACTION_ALIASES.get(dataset, {}).get(label, label)
    return label if label in ACTION_CLASSES else None


@dataclass
class Clip:
    audio: np.ndarray
    activity: str  # an ACTIVITY_CLASSES label
    speech: bool
    group: str  # speaker or fold: splits never share a group
    path: str


def is_test(dataset: str, group: str) -> bool:
    split = TEST_SPLITS.get(dataset, set())
    return split is None or group in split


def shared_clips(root: Path, rate: int = 16000) -> list[Clip]:
    """Training-split clips of ../shared/data for the default model (test splits are skipped here)."""
    clips = []
    for dataset in ("dcase2016_task2", "fsdd", "librispeech_train_clean_100"):
        manifest = root / "manifests" / f"{dataset}.csv"
        if not manifest.is_file():
            raise SourceError(f"{manifest} not found: pass --data pointing at the shared data folder")
        with manifest.open() as fh:
            for row in csv.DictReader(fh):
                group = row["subject_or_fold"]
                if is_test(dataset, group):
                    continue
                label = row["label"]
                speech = label == "speech"
                clips.append(Clip(load_audio(root / row["path"], rate), SPEAKING if speech else label, speech,
                                  f"{dataset}:{group}", row["path"]))
    return clips


def shared_action_rows(root: Path, test: bool = False) -> list[tuple[Path, str, str, str]]:
    """(path, action class, person, dataset) of the video recordings the action head teaches: the training
    splits (test=False) or the test splits (test=True) of ../shared/data."""
    rows = []
    for dataset in ACTION_SETS:
        manifest = root / "manifests" / f"{dataset}.csv"
        if not manifest.is_file():
            raise SourceError(f"{manifest} not found: pass --data pointing at the shared data folder")
        with manifest.open() as fh:
            for row in csv.DictReader(fh):
                label = action_label(dataset, row["label"])
                if label is not None and is_test(dataset, row["subject_or_fold"]) == test:
                    rows.append((root / row["path"], label, row["subject_or_fold"], dataset))
    return rows


def background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Room-like background: coloured noise at -75..-45 dBFS, sometimes a hum, sometimes digital silence."""
    if rng.random() < 0.1:
        return np.zeros(n, np.float32)
    white = rng.standard_normal(n).astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.arange(len(spec)) + 1.0
    spec /= f ** rng.uniform(0.0, 1.0)  # white .. pink
    x = np.fft.irfft(spec, n).astype(np.float32)
    if rng.random() < 0.2:
        x += 0.3 * np.std(x) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * np.arange(n) / 16000).astype(np.float32)
    level = 10 ** (rng.uniform(-75, -45) / 20)
    return (x / (np.std(x) + 1e-12) * level).astype(np.float32)


def vary_speech(a: np.ndarray, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """One speech clip as another room and another talker's pace would give it: played 0.9-1.1 times as fast
    (resampled, so the pitch moves with it, as speed perturbation in ASR training), and at half the draws
    heard in a room (a synthetic impulse response: the direct sound, then exponentially decaying noise with
    an RT60 of 0.15-0.6 s at 3-12 dB below it). The length follows the speed; the reverberant tail past the
    clip's end is cut, so the truth stays the clip's span."""
    factor = float(rng.uniform(0.9, 1.1))
    n = max(2, int(round(len(a) / factor)))
    out = np.interp(np.arange(n) * factor, np.arange(len(a)), a).astype(np.float32)
    if rng.random() < 0.5:
        rt60 = float(rng.uniform(0.15, 0.6))
        t = np.arange(int(rt60 * rate)) / rate
        tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
        tail *= 10 ** (-rng.uniform(3.0, 12.0) / 20) / (np.sqrt(np.sum(tail ** 2)) + 1e-12)
        rir = np.concatenate([[1.0], tail[1:]])
        size = 1 << int(np.ceil(np.log2(n + len(rir))))
        wet = np.fft.irfft(np.fft.rfft(out, size) * np.fft.rfft(rir, size), size)[:n]
        out = wet.astype(np.float32)
    return out


@dataclass(frozen=True)
class Segment:
    """One clip placed on a mixed timeline. start/end: the steps it owns by the speech truth's rule (it covers
    at least half of the step's last `hold // 2` samples), end exclusive; level_dbfs: the peak level it was mixed
    at, before the sum was clipped."""

    start: int
    end: int
    activity: str
    speech: bool
    level_dbfs: float


@dataclass
class Timeline:
    """A mixed timeline: samples, the truth per step (activity class index, speech 0/1) and its segments."""

    audio: np.ndarray
    activity: np.ndarray
    speech: np.ndarray
    segments: list[Segment]


def make_timeline(clips: list[Clip], seconds: float, rng: np.random.Generator, rate: int = 16000,
                  step: int = 1600, hold: int = 2400, speech_share: float = 0.4,
                  speech_gain_db: tuple[float, float] = (-30.0, -1.0), speech_variation: float = 0.0):
    """(samples, activity per step, speech per step) of mix_timeline, for callers that need no segments."""
    t = mix_timeline(clips, seconds, rng, rate, step, hold, speech_share, speech_gain_db, speech_variation)
    return t.audio, t.activity, t.speech


def mix_timeline(clips: list[Clip], seconds: float, rng: np.random.Generator, rate: int = 16000,
                 step: int = 1600, hold: int = 2400, speech_share: float = 0.4,
                 speech_gain_db: tuple[float, float] = (-30.0, -1.0), speech_variation: float = 0.0) -> Timeline:
    """One stream-like timeline of about `seconds`, with its truth per step and the clips it placed.

    Each segment is speech with probability `speech_share`, else an event of a class drawn uniformly (so rare
    classes are not drowned by the many speech clips), at a peak level drawn from -30..-1 dBFS (speech: from
    `speech_gain_db`; training teaches quieter speech than it is judged on). Segments never overlap. A speech
    clip is varied (`vary_speech`: pace, room) with probability `speech_variation` (training; the eval's
    timelines are the clips as recorded).
    Step k's truth is the class active in the last `hold`
    samples before k * step (quiet when none), so short events still own the steps that first see them.
    """
    by_class: dict[str, list[Clip]] = {}
    for c in clips:
        by_class.setdefault(c.activity, []).append(c)
    event_classes = sorted(k for k in by_class if k != SPEAKING)
    n = int(seconds * rate)
    x = background(n, rng)
    act = np.full(n, ACTIVITY_CLASSES.index(QUIET), np.int16)
    sp = np.zeros(n, np.int8)
    placed = []
    pos = int(rng.uniform(0.0, 1.5) * rate)
    while pos < n:
        if SPEAKING in by_class and (not event_classes or rng.random() < speech_share):
            pool = by_class[SPEAKING]
        else:
            pool = by_class[event_classes[rng.integers(len(event_classes))]]
        c = pool[rng.integers(len(pool))]
        a = c.audio
        if len(a) > rate and rng.random() < 0.3:  # a random cut point inside a long clip
            cut = rng.integers(0, len(a) - rate // 2)
            a = a[cut:]
        if c.speech and speech_variation and rng.random() < speech_variation:
            a = vary_speech(a, rng, rate)
        a = a[: n - pos]
        peak = np.max(np.abs(a)) + 1e-9
        level = rng.uniform(*(speech_gain_db if c.speech else (-30.0, -1.0)))
        gain = 10 ** (level / 20) / peak
        x[pos:pos + len(a)] += a * gain
        act[pos:pos + len(a)] = ACTIVITY_CLASSES.index(c.activity)
        sp[pos:pos + len(a)] = int(c.speech)
        placed.append((pos, pos + len(a), c, float(level)))
        pos += len(a) + int(rng.choice([rng.uniform(0.0, 0.4), rng.uniform(0.3, 3.0)]) * rate)
    np.clip(x, -1.0, 1.0, out=x)
    steps = n // step
    ends = np.arange(1, steps + 1) * step
    act_s = np.empty(steps, np.int64)
    sp_s = np.empty(steps, np.int64)
    quiet = ACTIVITY_CLASSES.index(QUIET)
    for i, e in enumerate(ends):
        seg = act[max(0, e - hold):e]
        nz = seg[seg != quiet]
        act_s[i] = np.bincount(nz).argmax() if len(nz) else quiet
        sp_s[i] = int(sp[max(0, e - hold // 2):e].mean() >= 0.5)
    segments = []
    for a, b, c, level in placed:
        cover = np.minimum(ends, b) - np.maximum(ends - hold // 2, a)
        owned = np.flatnonzero(cover * 2 >= hold // 2)
        if len(owned):  # a clip cut to a few samples at the very end may own no step
            segments.append(Segment(int(owned[0]), int(owned[-1]) + 1, c.activity, c.speech, level))
    return Timeline(x, act_s, sp_s, segments)
