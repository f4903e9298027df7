"""Training the default audio model: the 2D CNN over log-mel windows, then the LSTM and its heads.

Stage 1 trains the audio CNN (with temporary linear heads) on windows cut from stream-like timelines.
Stage 2 freezes it, computes each timeline's step embeddings once, and trains the LSTM and heads on
sequences the way the stream will see them. Validation is split by group (speaker, fold); the test splits
of ../shared/data are never loaded. Everything is seeded.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from actstream.engines.features import AudioFeatures
from actstream.stream.frontend import step_windows

from actstream.engines.bundle import DEFAULT_STEP_MS, ModelSpec, save_model
from actstream.training.fit import class_weights, fit_temporal, plot_history
from actstream.training.data import ACTIVITY_CLASSES, SPEECH_CLASSES, Clip, make_timeline, shared_clips

log = logging.getLogger(__name__)

VALIDATION_GROUPS = ("dcase2016_task2:fold4", "fsdd:nicolas")


def _split(clips: list[Clip], rng: np.random.Generator) -> tuple[list[Clip], list[Clip]]:
    """Validation = DCASE fold4, FSDD speaker nicolas and 10 % of LibriSpeech speakers."""
    libri = sorted({c.group for c in clips if c.group.startswith("librispeech")})
    held = set(rng.choice(libri, size=max(1, len(libri) // 10), replace=False)) | set(VALIDATION_GROUPS)
    return [c for c in clips if c.group not in held], [c for c in clips if c.group in held]


def _timelines(clips, count, seconds, rng, spec: AudioFeatures, step: int):
    """(windows (N, steps, frames, mels), activity (N, steps), speech (N, steps)) for `count` timelines."""
    xs, acts, sps = [], [], []
    for _ in range(count):
        x, a, s = make_timeline(clips, seconds, rng, spec.sample_rate, step)
        xs.append(step_windows(x, spec, step, len(a)))
        acts.append(a)
        sps.append(s)
    return np.stack(xs), np.stack(acts), np.stack(sps)


class _WindowClassifier(nn.Module):
    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn
        self.act = nn.Linear(cnn.dim, len(ACTIVITY_CLASSES))
        self.sp = nn.Linear(cnn.dim, 2)

    def forward(self, x):
        e = torch.relu(self.cnn(x))
        return self.act(e), self.sp(e)


def _embed(cnn, windows: np.ndarray, batch: int = 512) -> np.ndarray:
    flat = windows.reshape(-1, *windows.shape[2:])
    out = []
    with torch.inference_mode():
        for i in range(0, len(flat), batch):
            out.append(cnn(torch.from_numpy(flat[i:i + batch])).numpy())
    return np.concatenate(out).reshape(*windows.shape[:2], -1)


def _metrics(act_p: np.ndarray, sp_p: np.ndarray, act: np.ndarray, sp: np.ndarray) -> dict:
    pred = sp_p.argmax(-1).reshape(-1)
    truth = sp.reshape(-1)
    tp = int(((pred == 1) & (truth == 1)).sum())
    fp = int(((pred == 1) & (truth == 0)).sum())
    fn = int(((pred == 0) & (truth == 1)).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    acc = float((act_p.argmax(-1) == act).mean())
    return {"speech_f1": round(f1, 4), "activity_step_accuracy": round(acc, 4)}


def train_default(out: Path, data_root: Path, seed: int = 0, quick: bool = False, progress=None) -> dict:
    """Train the shipped `default` model from the training splits under data_root and write it to `out`."""
    t_start = time.time()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    spec_a = AudioFeatures()
    step = spec_a.sample_rate * DEFAULT_STEP_MS // 1000  # the shipped model steps at 100 ms (model.json step_ms)
    clips = shared_clips(data_root, spec_a.sample_rate)
    train, val = _split(clips, rng)
    log.info("clips: %d train, %d validation", len(train), len(val))
    n_tl, secs = (12, 20.0) if quick else (100, 30.0)
    tr_w, tr_a, tr_s = _timelines(train, n_tl, secs, rng, spec_a, step)
    va_w, va_a, va_s = _timelines(val, max(4, n_tl // 4), secs, rng, spec_a, step)

    # stage 1: the audio CNN on windows
    spec = ModelSpec(name="default", arch="audio_lstm", heads={"speech": SPEECH_CLASSES,
                                                               "activity": ACTIVITY_CLASSES}, audio=spec_a)
    cnn = spec.new_audio_cnn()
    flat = tr_w.reshape(-1, spec_a.frames, spec_a.n_mels)
    cnn.band_mean.copy_(torch.from_numpy(flat.mean(axis=(0, 1))))
    cnn.band_std.copy_(torch.from_numpy(flat.std(axis=(0, 1)) + 1e-3))
    clf = _WindowClassifier(cnn)
    fa, fs = tr_a.reshape(-1), tr_s.reshape(-1)
    w_act = class_weights(fa, len(ACTIVITY_CLASSES))
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, weight_decay=1e-3)
    epochs1 = 2 if quick else 10
    per_epoch = len(flat) if quick else 14000  # neighbouring windows overlap 90 %: a random part per epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs1 * (min(per_epoch, len(flat)) // 128 + 1))
    for epoch in range(epochs1):
        clf.train()
        order = rng.permutation(len(flat))[:per_epoch]
        total = 0.0
        for i in range(0, len(order), 128):
            b = order[i:i + 128]
            x = torch.from_numpy(flat[b])
            x = x + torch.randn(len(b), 1, spec_a.n_mels) * 0.5  # spectral tilt / gain jitter per window
            la, ls = clf(x)
            loss = (nn.functional.cross_entropy(la, torch.from_numpy(fa[b]), weight=w_act)
                    + nn.functional.cross_entropy(ls, torch.from_numpy(fs[b])))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        log.info("cnn epoch %d: loss %.3f", epoch + 1, total / len(order))
        if progress:
            progress("cnn epochs", epoch + 1, epochs1)
    cnn.eval()

    # stage 2: the LSTM on step embeddings of whole timelines
    tr_e, va_e = _embed(cnn, tr_w), _embed(cnn, va_w)
    temporal = spec.new_temporal()
    seq, batch = 100, 16  # 10 s sequences with random cut points; the state starts at zero like a fresh stream
    w_speech = None

    def sample(rng):
        i = rng.integers(0, len(tr_e), batch)
        s = rng.integers(0, tr_e.shape[1] - seq + 1, batch)
        pick = lambda arr: torch.from_numpy(np.stack([arr[a, b:b + seq] for a, b in zip(i, s)]))  # noqa: E731
        return {"audio": pick(tr_e)}, {"activity": pick(tr_a), "speech": pick(tr_s)}

    def validate(temporal):
        with torch.inference_mode():
            h0, c0 = temporal.zero_state(len(va_e))
            lg, _, _ = temporal.logits({"audio": torch.from_numpy(va_e)}, h0, c0)
        m = _metrics(lg["activity"].numpy(), lg["speech"].numpy(), va_a, va_s)
        return m["speech_f1"] + m["activity_step_accuracy"], m

    fitted = fit_temporal(temporal, sample, validate, {"activity": w_act, "speech": w_speech},
                          epochs=3 if quick else 40, steps_per_epoch=max(1, tr_e.size // tr_e.shape[-1] // (seq * batch)),
                          rng=rng, progress=(lambda e, m: progress("temporal epochs", e, 40)) if progress else None)
    history = fitted.pop("history")
    best_m = fitted
    card = {"version": 2, "trained": datetime.date.today().isoformat(), "seed": seed, "quick": quick,
            "data": "../shared/data training splits: LibriSpeech train-clean-100, FSDD george/jackson/lucas/nicolas, "
                    "DCASE2016 task 2 folds 1-4",
            "validation": "DCASE fold4, FSDD nicolas, 10% of LibriSpeech train speakers (by speaker)",
            "never_used": "LibriSpeech test-other, DCASE fold5, FSDD theo/yweweler",
            "validation_metrics": best_m, "train_seconds": round(time.time() - t_start, 1),
            "command": "actstream train ../shared/data --recipe default --out engines/weights/default --seed 0"}
    spec = ModelSpec(name=spec.name, arch=spec.arch, heads=spec.heads, audio=spec_a, card=card)
    save_model(spec, out, cnn, temporal)
    (out / "MODEL_CARD.md").write_text(_card_md(spec))
    plot_history(history, out / "training.png", "default: temporal model (stage 2)")
    log.info("wrote %s (%s)", out, best_m)
    return card


def _card_md(spec: ModelSpec) -> str:
    c = spec.card
    lines = [f"# Model card: {spec.name} (version {c['version']})", "",
             f"- Architecture: {spec.arch} (2D CNN over log-mel windows -> LSTM, hidden {spec.hidden})",
             f"- Heads: " + "; ".join(f"`{h}`: {', '.join(v)}" for h, v in spec.heads.items()),
             f"- Front end: {json.dumps(spec.audio.to_dict())}",
             f"- Trained: {c['trained']} in {c['train_seconds']} s, seed {c['seed']}",
             f"- Data: {c['data']}", f"- Validation split: {c['validation']}",
             f"- Never used for training or tuning: {c['never_used']}",
             f"- Validation metrics (per 100 ms step): {json.dumps(c['validation_metrics'])}",
             f"- Reproduce: `{c['command']}`", ""]
    return "\n".join(lines)
