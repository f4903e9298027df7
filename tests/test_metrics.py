"""eval's numbers on hand-made timelines equal what is computed here by hand."""

import numpy as np

from actstream.evaluation.metrics import binary_f1, confusion, onset_latency, per_class, segments


def test_binary_f1_by_hand():
    truth = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    pred = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1, 0])
    # tp = 4 (steps 2,3,6,7), fp = 2 (4, 8), fn = 1 (1): P = 4/6, R = 4/5, F1 = 2PR/(P+R) = 8/11
    assert binary_f1(truth, pred) == {"f1": round(8 / 11, 4), "precision": round(4 / 6, 4), "recall": 0.8}


def test_confusion_and_per_class_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1])
    conf = confusion(truth, pred, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]
    pc = per_class(conf, ["a", "b", "c"])
    # a: P = 2/3, R = 2/3; b: P = 2/4, R = 2/2; c: P = 2/2, R = 2/4
    assert pc["a"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert pc["b"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 2}
    assert pc["c"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 4}


def test_onset_latency_by_hand():
    q = 9  # the quiet class is ignored
    truth = np.array([q, q, 3, 3, 3, 3, q, q, 5, 5, q, q, q, 7, 7, q])
    pred = np.array([q, q, q, q, 3, 3, 3, q, 5, 5, q, q, q, q, q, q])
    # event 3 starts at step 2, first shown at step 4: 0.2 s; event 5 shown at once: 0 s; event 7 never
    r = onset_latency(truth, pred, 0.1, ignore={q}, grace_steps=2)
    assert r == {"events": 3, "detected": 0.6667, "median_s": 0.1, "mean_s": 0.1}
    assert segments(np.array([1, 1, 2])) == [(0, 2, 1), (2, 3, 2)]
