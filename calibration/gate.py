"""The accuracy gate: INT8 may become the default only if it loses no more than a stated margin.

Measured on held-out recordings, per encoder (the other encoders kept in FP32): the cosine similarity of
INT8 and FP32 embeddings, the fraction of steps whose shown label (after the policy) is the same, and, where
a recording has a truth file, the step accuracy against the truth for both precisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Margin:
    """min_label_agreement: fraction of steps, per head, whose label must equal FP32's (0.97 = at most three
    steps in a hundred differ: FP32's own label flickers at a change of action, and a step either side of it is
    not an error a user sees); min_cosine: mean INT8-vs-FP32 embedding cosine similarity; max_metric_drop:
    accuracy against the truth that INT8 may lose per head, absolute (0.005 = half a point: what users see)."""

    min_label_agreement: float = 0.97
    min_cosine: float = 0.98
    max_metric_drop: float = 0.005

    def to_dict(self) -> dict:
        return asdict(self)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def agreement(a: list[str], b: list[str]) -> float:
    """Fraction of positions where two label sequences agree (1.0 for empty sequences)."""
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length: {len(a)} vs {len(b)}")
    return float(np.mean([x == y for x, y in zip(a, b)])) if a else 1.0


def decide(measured: dict, margin: Margin) -> tuple[bool, str]:
    """Whether INT8 passes. measured: {"cosine_mean": float, "label_agreement": {head: fraction},
    "metrics": {name: {"fp32": x, "int8": y}} (may be empty)}. Returns (passed, reason: every failed check,
    or what passed)."""
    failed = []
    if measured["cosine_mean"] < margin.min_cosine:
        failed.append(f"embedding cosine {measured['cosine_mean']:.4f} < {margin.min_cosine}")
    for head, frac in measured["label_agreement"].items():
        if frac < margin.min_label_agreement:
            failed.append(f"{head} labels agree on {frac:.2%} of steps < {margin.min_label_agreement:.2%}")
    for name, m in measured.get("metrics", {}).items():
        drop = m["fp32"] - m["int8"]
        if drop > margin.max_metric_drop:
            failed.append(f"{name} drops {drop:.4f} ({m['fp32']:.4f} -> {m['int8']:.4f}) > {margin.max_metric_drop}")
    if failed:
        return False, "; ".join(failed)
    worst = min(measured["label_agreement"].values(), default=1.0)
    return True, f"cosine {measured['cosine_mean']:.4f}, labels agree on >= {worst:.2%} of steps"
