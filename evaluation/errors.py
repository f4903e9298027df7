"""Where a speech detector goes wrong on the mixed timelines, from the truth the mixer knows (its segments,
their classes and levels), so a figure can be checked by hand on a few steps.

Measured for any per-step speech decision (the model's, or a peer VAD's):
* onsets: the share of speech segments none of whose first ONSET_STEPS steps (300 ms) is called speech;
* quiet speech: speech recall in each tercile of the speech segments' mixing levels (peak dBFS);
* next to events: speech recall on speech steps within NEAR_STEPS of a step whose truth is an event, and on the
  rest (segments never overlap on these timelines, so "under" an event is the steps an event's tail still owns);
* false speech per event class: the share of the steps whose truth is that event class called speech;
* sources: every wrong step counted once, under the first of SOURCES it fits, and the largest named.

And, of the truth alone (`edge_sensitivity`), how much of a timeline's F1 rides on its segments' edges: the F1
of a detector that is right everywhere but one step late at every onset and offset. Short segments (FSDD's
spoken digits last 3-8 steps) make each edge step weigh a lot.
"""

from __future__ import annotations

import numpy as np

from actstream.evaluation.metrics import binary_f1
from actstream.training.data import ACTIVITY_CLASSES, QUIET, SPEAKING, Segment

ONSET_STEPS = 3  # 300 ms at 100 ms steps
NEAR_STEPS = 5  # 500 ms either side of an event's steps
TAIL_STEPS = 3  # false speech this soon after a speech segment ends is a late offset
VOICE_LIKE = ("laughter", "cough", "clearthroat")
EVENTS = [c for c in ACTIVITY_CLASSES if c not in (QUIET, SPEAKING)]
# In the order a wrong step is attributed: missed speech first, then false speech.
SOURCES = {"missed_onset": "missed onsets (first 300 ms of speech)",
           "missed_near_event": "missed speech next to an event",
           "missed_quiet": "missed quiet speech (lowest level tercile)",
           "missed_other": "other missed speech",
           "false_tail": "late offsets (speech called just after it ended)",
           "false_voice_like": "laughter, cough or throat-clearing taken for speech",
           "false_other_event": "other events taken for speech",
           "false_background": "background taken for speech"}


def _recall(truth: np.ndarray, pred: np.ndarray) -> dict:
    n = int(truth.sum())
    hit = int((truth & pred).sum())
    return {"steps": n, "recall": round(hit / n, 4) if n else None}


def speech_errors(truth_speech: list[np.ndarray], truth_activity: list[np.ndarray],
                  segments: list[list[Segment]], pred: list[np.ndarray]) -> dict:
    """The error analysis over timelines: per timeline, truth per step (speech 0/1, activity class index into
    ACTIVITY_CLASSES), the mixer's segments (steps, class, level) and the decision per step (0/1)."""
    event_idx = {ACTIVITY_CLASSES.index(c) for c in EVENTS}
    voice_idx = {ACTIVITY_CLASSES.index(c) for c in VOICE_LIKE}
    levels = [s.level_dbfs for segs in segments for s in segs if s.speech]
    edges = [float(v) for v in np.quantile(levels, [1 / 3, 2 / 3])] if levels else [0.0, 0.0]
    onsets = missed_onsets = 0
    pooled = {k: [] for k in ("speech", "pred", "near", "tercile", "onset", "tail", "act")}
    for ts, ta, segs, p in zip(truth_speech, truth_activity, segments, pred):
        n = min(len(ts), len(ta), len(p))
        ts, ta, p = np.asarray(ts[:n]).astype(bool), np.asarray(ta[:n]), np.asarray(p[:n]).astype(bool)
        is_event = np.isin(ta, list(event_idx))
        near = np.convolve(is_event, np.ones(2 * NEAR_STEPS + 1), "same") > 0
        tercile = np.full(n, -1)
        onset = np.zeros(n, bool)
        tail = np.zeros(n, bool)
        for s in segs:
            if not s.speech or s.start >= n:
                continue
            tercile[s.start:s.end] = int(np.searchsorted(edges, s.level_dbfs, side="right"))
            onset[s.start:min(s.end, s.start + ONSET_STEPS)] = True
            tail[s.end:s.end + TAIL_STEPS] = True
            onsets += 1
            missed_onsets += not p[s.start:min(s.end, s.start + ONSET_STEPS, n)].any()
        for k, v in (("speech", ts), ("pred", p), ("near", near), ("tercile", tercile), ("onset", onset),
                     ("tail", tail), ("act", ta)):
            pooled[k].append(v)
    ts, p, near, terc, onset, tail, ta = (np.concatenate(pooled[k]) if pooled[k] else np.zeros(0)
                                          for k in ("speech", "pred", "near", "tercile", "onset", "tail", "act"))
    ts, p, near, onset, tail = (a.astype(bool) for a in (ts, p, near, onset, tail))
    out = {"onsets": {"segments": onsets, "missed": missed_onsets,
                      "missed_share": round(missed_onsets / onsets, 4) if onsets else None},
           "quiet_speech": {"level_dbfs_edges": [round(e, 2) for e in edges],
                            "recall_by_tercile": {name: _recall(ts & (terc == i), p)
                                                  for i, name in enumerate(("quiet", "middle", "loud"))}},
           "near_events": {"near": _recall(ts & near, p), "elsewhere": _recall(ts & ~near, p)},
           "false_speech_per_event": {c: {"steps": int((ta == ACTIVITY_CLASSES.index(c)).sum()),
                                          "called_speech": round(float(p[ta == ACTIVITY_CLASSES.index(c)].mean()), 4)
                                          if (ta == ACTIVITY_CLASSES.index(c)).any() else None} for c in EVENTS}}
    missed, false = ts & ~p, ~ts & p
    left = np.ones(len(ts), bool)
    counts = {}
    is_voice = np.isin(ta, list(voice_idx))
    is_event = np.isin(ta, list(event_idx))
    for key, where in (("missed_onset", missed & onset), ("missed_near_event", missed & near),
                       ("missed_quiet", missed & (terc == 0)), ("missed_other", missed),
                       ("false_tail", false & tail), ("false_voice_like", false & is_voice),
                       ("false_other_event", false & is_event), ("false_background", false)):
        counts[key] = int((where & left).sum())
        left &= ~where
    wrong = int(missed.sum() + false.sum())
    largest = max(counts, key=counts.get) if wrong else None
    out["sources"] = {"wrong_steps": wrong, "steps": counts, "largest": largest,
                      "largest_share": round(counts[largest] / wrong, 4) if wrong else None}
    return out


def edge_sensitivity(truth_speech: list[np.ndarray]) -> dict:
    """Per timeline: its speech segments (runs of speech steps), speech steps, and the F1 the truth itself
    scores when shifted one step late (every onset missed by a step, every offset held a step too long)."""
    runs, steps, late = [], [], []
    for ts in truth_speech:
        ts = np.asarray(ts).astype(np.int64)
        before = np.r_[0, ts[:-1]]  # each step's previous step: the truth one step late
        runs.append(int(((ts == 1) & (before == 0)).sum()))
        steps.append(int(ts.sum()))
        late.append(binary_f1(ts, before)["f1"])
    return {"speech_runs_per_timeline": runs, "speech_steps_per_timeline": steps,
            "one_step_late_f1_per_timeline": late}


def largest_source_line(errors: dict) -> str:
    """One line naming where most of a detector's wrong steps are."""
    src = errors["sources"]
    if not src["largest"]:
        return "no wrong steps"
    k = src["largest"]
    return (f"largest error source: {SOURCES[k]}: {src['steps'][k]} of {src['wrong_steps']} wrong steps "
            f"({src['largest_share']:.0%})")
