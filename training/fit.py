"""The training loop shared by every recipe: the temporal model (LSTM or BiLSTM + heads) on sequences of
step embeddings, with early stopping on a validation score."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from actstream.engines.models import Temporal

log = logging.getLogger(__name__)

Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # embeddings (N, T, D), targets (N, T)


def class_weights(labels: np.ndarray, n: int) -> torch.Tensor:
    """Inverse-square-root frequency weights: rare classes count more without inverting the imbalance fully."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=n).astype(np.float64) + 1.0
    w = (counts.sum() / counts) ** 0.5
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def fit_temporal(temporal: Temporal, sample: Callable[[np.random.Generator], Batch],
                 validate: Callable[[Temporal], tuple[float, dict]] | None, weights: dict[str, torch.Tensor | None],
                 epochs: int, steps_per_epoch: int, rng: np.random.Generator, patience: int = 6,
                 lr: float = 2e-3, progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train in place; keep the weights of the best validation score (or the last epoch without validation).
    Returns the metrics of the kept epoch."""
    opt = torch.optim.AdamW(temporal.parameters(), lr=lr, weight_decay=1e-3)
    best, best_state, best_m, waited = -np.inf, None, {}, 0
    history: list[dict] = []
    for epoch in range(epochs):
        temporal.train()
        total = 0.0
        for _ in range(steps_per_epoch):
            emb, targets = sample(rng)
            n = next(iter(emb.values())).shape[0]
            h0, c0 = temporal.zero_state(n)
            logits, _, _ = temporal.logits(emb, h0, c0)
            loss = sum(nn.functional.cross_entropy(logits[h].reshape(-1, logits[h].shape[-1]), y.reshape(-1),
                                                   weight=weights.get(h)) for h, y in targets.items())
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(temporal.parameters(), 1.0)
            opt.step()
            total += loss.item()
        temporal.eval()
        score, m = validate(temporal) if validate else (float(epoch), {"train_loss": round(total / steps_per_epoch, 4)})
        log.info("temporal epoch %d: loss %.3f, %s", epoch + 1, total / steps_per_epoch, m)
        history.append({"epoch": epoch + 1, "loss": total / steps_per_epoch, **({"score": score} if validate else {})})
        if progress:
            progress(epoch + 1, m)
        if score >= best:  # ties go to the later epoch: more training at the same validation score
            best, best_m, waited = score, {**m, "epoch": epoch + 1}, 0
            best_state = {k: v.clone() for k, v in temporal.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    temporal.load_state_dict(best_state)
    temporal.eval()
    return {**best_m, "history": history}


def plot_history(history: list[dict], path, title: str) -> None:
    """Training loss and validation score per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["loss"] for h in history], "o-", color="tab:red", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any("score" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(ep, [h.get("score") for h in history], "s-", color="tab:blue", label="validation score")
        ax2.set_ylabel("validation score")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
