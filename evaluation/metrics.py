"""Metrics on step-level label sequences: per-class precision/recall/F1, confusion, binary F1, onset latency.

Pure functions of integer arrays (one entry per step), so a test can check them by hand.
"""

from __future__ import annotations

import numpy as np


def confusion(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: rows are the truth, columns the prediction."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(truth), np.asarray(pred)), 1)
    return m


def per_class(conf: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    out = {}
    for i, c in enumerate(classes):
        tp = conf[i, i]
        fp = conf[:, i].sum() - tp
        fn = conf[i, :].sum() - tp
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[c] = {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                  "support": int(conf[i, :].sum())}
    return out


def binary_f1(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Frame-level F1 of the positive class (1)."""
    t, p = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"f1": round(f1, 4), "precision": round(prec, 4), "recall": round(rec, 4)}


def segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal labels as (start step, end step exclusive, label)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return []
    cuts = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, ends)]


def onset_latency(truth: np.ndarray, pred: np.ndarray, step_s: float, ignore: set[int],
                  grace_steps: int = 10) -> dict[str, float]:
    """For each truth segment of a class not in `ignore`, the time from its first step to the first step at
    which the prediction shows that class (searched until `grace_steps` after the segment ends).
    Returns the median and mean latency in seconds over detected events, and the share detected."""
    lat, missed = [], 0
    for a, b, c in segments(truth):
        if c in ignore:
            continue
        hit = np.flatnonzero(np.asarray(pred)[a:b + grace_steps] == c)
        if len(hit):
            lat.append(hit[0] * step_s)
        else:
            missed += 1
    n = len(lat) + missed
    return {"events": n, "detected": round(len(lat) / n, 4) if n else 0.0,
            "median_s": round(float(np.median(lat)), 4) if lat else None,
            "mean_s": round(float(np.mean(lat)), 4) if lat else None}
