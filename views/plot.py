"""`replay --plot OUT.png`: label probabilities over time from the messages of a run, with the truth shaded
when a truth CSV (start_s,end_s,label) is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actstream.stream.csvfile import name, number, read_csv, shown_path
from actstream.common.errors import ConfigError

WIDTH_PX, HEIGHT_PX, DPI = 1200, 700, 100
MAX_TRUTH_BYTES = 4 * 1024 * 1024  # a segment per second of a day of recording is about 2 MB
MAX_TRUTH_ROWS = 100_000
TRUTH_HINT = "expected a CSV with columns start_s,end_s,label (seconds, 0 <= start_s < end_s)"


def read_truth(path: str | Path) -> list[tuple[float, float, str]]:
    """Truth segments (start s, end s, label) from a CSV, validated whole: read before a run, not after it."""
    rows = read_csv(path, "truth file", "start_s,end_s,label", {"start_s", "end_s", "label"}, None,
                    MAX_TRUTH_BYTES, MAX_TRUTH_ROWS)
    out = []
    for line, r in rows:
        where = f"truth file {shown_path(path)} line {line}"
        a = number(r["start_s"], where, "start_s", TRUTH_HINT)
        b = number(r["end_s"], where, "end_s", TRUTH_HINT)
        if not a < b:
            raise ConfigError(f"{where}: start_s {a:g} is not before end_s {b:g}: {TRUTH_HINT}")
        out.append((a, b, name(r["label"], where, "label", TRUTH_HINT, max_len=256)))
    return out


def plot_messages(messages: list[dict], path: str | Path, truth: list[tuple[float, float, str]] | None = None,
                  title: str | None = None) -> None:
    """One panel per label topic: each class's smoothed probability against stream time; the label shown is
    drawn as a strip under each panel; truth segments are shaded in the colour of their class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = sorted({m["topic"] for m in messages if m["topic"] != "status"})
    if not topics:
        raise ConfigError("nothing to plot: the run published no labels")
    fig, axes = plt.subplots(len(topics), 1, figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, sharex=True,
                             squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, topic in zip(axes[:, 0], topics):
        msgs = [m for m in messages if m["topic"] == topic]
        t = np.array([m["t"] for m in msgs])
        classes = list(msgs[0]["scores"])
        colours = {c: cmap(i % 20) for i, c in enumerate(classes)}
        for c in classes:
            ax.plot(t, [m["scores"][c] for m in msgs], color=colours[c], lw=1.2, label=c)
        for a, b, lab in truth or []:
            if lab in colours:
                ax.axvspan(a, b, color=colours[lab], alpha=0.15)
        shown = [m["label"] for m in msgs]
        for i, lab in enumerate(shown):
            ax.plot([t[i] - 0.05, t[i] + 0.05], [-0.06, -0.06], color=colours[lab], lw=5, solid_capstyle="butt")
        ax.set_ylim(-0.1, 1.05)
        ax.set_ylabel(f"{topic}\nprobability")
        ax.legend(loc="upper right", fontsize=7, ncol=min(6, len(classes)))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("stream time (s)   (strip under each panel: the label shown; shaded: truth)")
    fig.suptitle(title or f"{messages[0]['source']} - {messages[0]['model']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
