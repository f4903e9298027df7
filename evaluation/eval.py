"""`actstream eval MODEL DATA`: how good a model is, judged on streams as it runs.

Evaluation timelines are mixed from the test splits only (LibriSpeech test-other and FSDD test speakers for
speech, DCASE fold 5 for events, background for quiet), with known truth per step. The model runs through the
same step core and label policy as replay. Reported: per-class precision/recall/F1 and a confusion matrix
(PNG), frame-level speech F1 pooled and per timeline, where the speech errors are (evaluation/errors.py), event
onset latency, DCASE fold 5 clip accuracy, a timeline plot (PNG); with `--compare silero,ten,webrtc` the same
speech figures for other VADs on the very same timelines (evaluation/peers.py), and with `--against OTHER` the
speech F1 of another model on them, timeline by timeline (a hybrid must not hear worse than its audio-only twin).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.stream.config import PolicyConfig
from actstream.stream.policy import LabelPolicy
from actstream.stream.recognizer import CausalRecognizer
from actstream.stream.sources import ArraySource
from actstream.stream.steps import steps
from actstream.common.errors import ConfigError
from actstream.common.files import shown_path

from actstream.engines.bundle import DEFAULT_STEP_MS, ModelSpec, load_spec, open_engines
from actstream.stream.sources import load_audio
from actstream.training.data import ACTIVITY_CLASSES, QUIET, SPEAKING, Clip, is_test, mix_timeline
from actstream.evaluation.errors import edge_sensitivity, speech_errors
from actstream.evaluation.metrics import binary_f1, confusion, onset_latency, per_class
from actstream.evaluation.peers import check_peers, parse_peers, peer_steps

log = logging.getLogger(__name__)
STEP_S = DEFAULT_STEP_MS / 1000.0  # the truth of the mixed timelines is per 100 ms step (data.make_timeline)
SPEECH_SHARE = 0.5  # half the segments of an evaluation timeline are speech, half DCASE events (between: quiet)


def test_clips(root: Path, rate: int = 16000) -> tuple[list[Clip], list[Clip]]:
    """(speech clips, event clips) from the held-out test splits of ../shared/data."""
    speech, events = [], []
    for dataset in ("librispeech_test_other", "fsdd", "dcase2016_task2"):
        with (root / "manifests" / f"{dataset}.csv").open() as fh:
            for row in csv.DictReader(fh):
                if not is_test(dataset, row["subject_or_fold"]):
                    continue
                is_speech = row["label"] == "speech"
                clip = Clip(load_audio(root / row["path"], rate), SPEAKING if is_speech else row["label"], is_speech,
                            f"{dataset}:{row['subject_or_fold']}", row["path"])
                (speech if is_speech else events).append(clip)
    return speech, events


@dataclass
class StreamRun:
    """One timeline run through the model: per-step probabilities and policy labels per head."""

    probs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def run_stream(spec: ModelSpec, engines, audio: np.ndarray, policy_cfg: PolicyConfig) -> StreamRun:
    """Drive the real step core over an in-memory recording, as fast replay would."""
    policy = LabelPolicy(CausalRecognizer(spec, engines), policy_cfg)
    source = ArraySource(audio, spec.audio.sample_rate, spec.audio.window_samples)
    probs = {h: [] for h in spec.heads}
    labels = {h: [] for h in spec.heads}
    for step in steps(source, spec.step_ms):
        for _, out in policy.advance(None, step.snap.audio, step.t):
            for h, lab in out.items():
                probs[h].append(list(lab.scores.values()))
                labels[h].append(spec.heads[h].index(lab.label))
    return StreamRun({h: np.asarray(v) for h, v in probs.items()}, {h: np.asarray(v) for h, v in labels.items()})


MAX_TIMELINES = 1000
MAX_SECONDS = 3600.0
MANIFESTS = ("librispeech_test_other", "fsdd", "dcase2016_task2")


def check_eval_args(data_root: Path, out_dir: Path, timelines: int, seconds: float) -> None:
    """What eval can know is wrong before it loads a clip: the counts, the data folder, the output folder."""
    from actstream.views.outputs import check_output_folder

    if not 1 <= timelines <= MAX_TIMELINES:
        raise ConfigError(f"--timelines {timelines} out of range: expected 1 to {MAX_TIMELINES}")
    if not 1.0 <= seconds <= MAX_SECONDS:  # also refuses NaN
        raise ConfigError(f"--seconds {seconds} out of range: expected 1 to {MAX_SECONDS:.0f} (seconds per timeline)")
    if not data_root.is_dir():
        raise ConfigError(f"data folder {shown_path(data_root)} not found: pass the shared data folder "
                          f"(../shared/data)")
    for name in MANIFESTS:
        if not (data_root / "manifests" / f"{name}.csv").is_file():
            raise ConfigError(f"data folder {shown_path(data_root)} lacks manifests/{name}.csv: pass the shared data "
                              f"folder (../shared/data), whose test splits eval uses")
    check_output_folder("--out", out_dir)
    if out_dir.resolve() == data_root.resolve():
        raise ConfigError(f"--out {shown_path(out_dir)}: is the data folder: write the report to a folder of its own")


def open_speech_model(model: str, backend: str):
    """(spec, loaded engines) of a model eval can judge: one with a speech head stepping at 100 ms."""
    spec = load_spec(model)
    if "speech" not in spec.heads:
        raise ConfigError(f"model {spec.tag} has no speech head (heads: {', '.join(spec.heads)}): eval judges "
                          f"speech + activity models such as the default one")
    if spec.step_ms != DEFAULT_STEP_MS:
        raise ConfigError(f"model {spec.tag} steps at {spec.step_ms} ms: eval's timelines carry their truth per "
                          f"{DEFAULT_STEP_MS} ms step, so it judges models trained at {DEFAULT_STEP_MS} ms")
    engines = open_engines(spec, backend)
    engines.load()
    return spec, engines


def speech_decisions(spec: ModelSpec, run: StreamRun, n: int) -> np.ndarray:
    """The label policy's speech decision (0/1) for the first n steps of a run."""
    return (run.labels["speech"][:n] == spec.heads["speech"].index("speech")).astype(np.int64)


def eval_timelines(data_root: Path, timelines: int, seconds: float, seed: int):
    """The eval's timelines, mixed from the test splits: the same seed gives the same timelines."""
    speech, events = test_clips(data_root)
    rng = np.random.default_rng(seed)
    tls = (mix_timeline(speech + events, seconds, rng, speech_share=SPEECH_SHARE) for _ in range(timelines))
    return events, rng, tls


def against_report(tag: str, other_tag: str, f1: list[float], other_f1: list[float], pooled: dict,
                   other_pooled: dict) -> dict:
    """Speech F1 of a model and another on the same timelines, timeline by timeline; difference = model - other."""
    diff = [round(a - b, 4) for a, b in zip(f1, other_f1)]
    return {"model": tag, "other": other_tag, "speech_f1_per_timeline": f1, "other_speech_f1_per_timeline": other_f1,
            "difference_per_timeline": diff, "worse_on": sum(d < 0 for d in diff), "timelines": len(diff),
            "speech_f1": pooled, "other_speech_f1": other_pooled,
            "difference": round(pooled["f1"] - other_pooled["f1"], 4)}


def compare_models(model: str, other: str, data_root: Path, timelines: int = 8, seconds: float = 60.0,
                   seed: int = 1234, backend: str = "onnxruntime", policy_cfg: PolicyConfig | None = None) -> dict:
    """The regression check of `--against`: two models' speech F1 on the same timelines (same seed), per
    timeline and pooled. A hybrid's ears must not be worse than the same recipe's without video."""
    policy_cfg = policy_cfg or PolicyConfig()
    spec, engines = open_speech_model(model, backend)
    ospec, oengines = open_speech_model(other, backend)
    _, _, tls = eval_timelines(data_root, timelines, seconds, seed)
    truth, mine, theirs = [], [], []
    for tl in tls:
        run, orun = run_stream(spec, engines, tl.audio, policy_cfg), run_stream(ospec, oengines, tl.audio, policy_cfg)
        n = min(len(tl.speech), len(run.labels["speech"]), len(orun.labels["speech"]))
        truth.append(tl.speech[:n])
        mine.append(speech_decisions(spec, run, n))
        theirs.append(speech_decisions(ospec, orun, n))
    engines.close()
    oengines.close()
    return _against(spec.tag, ospec.tag, truth, mine, theirs)


def _against(tag: str, other_tag: str, truth: list, mine: list, theirs: list) -> dict:
    return against_report(tag, other_tag, [binary_f1(t, p)["f1"] for t, p in zip(truth, mine)],
                          [binary_f1(t, p)["f1"] for t, p in zip(truth, theirs)],
                          binary_f1(np.concatenate(truth), np.concatenate(mine)),
                          binary_f1(np.concatenate(truth), np.concatenate(theirs)))


def evaluate_shared(model: str, data_root: Path, out_dir: Path, compare: list[str], timelines: int = 8,
                    seconds: float = 60.0, seed: int = 1234, backend: str = "onnxruntime",
                    policy_cfg: PolicyConfig | None = None, progress=None, against: str | None = None) -> dict:
    """The full evaluation of a speech + activity model on the shared test splits; writes report.json and PNGs.
    compare: peer VADs (names of evaluation/peers.py; comma-separated entries allowed); against: another model
    scored on the same timelines (report section `against`)."""
    peers = parse_peers(compare)
    check_eval_args(data_root, out_dir, timelines, seconds)
    check_peers(peers)
    policy_cfg = policy_cfg or PolicyConfig()
    spec, engines = open_speech_model(model, backend)
    other = open_speech_model(against, backend) if against else None
    events, rng, tls = eval_timelines(data_root, timelines, seconds, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    act_classes = spec.heads.get("activity", [])
    truth_a, truth_s, segs, pred_a, pred_s, raw_s, other_s = [], [], [], [], [], [], []
    peer_s: dict[str, list[np.ndarray]] = {name: [] for name in peers}
    first = None
    for i, tl in enumerate(tls):
        x = tl.audio
        run = run_stream(spec, engines, x, policy_cfg)
        orun = run_stream(other[0], other[1], x, policy_cfg) if other else None
        n = min(len(tl.activity), len(run.labels["speech"]), len(orun.labels["speech"]) if orun else len(x))
        truth_a.append(tl.activity[:n])
        truth_s.append(tl.speech[:n])
        segs.append(tl.segments)
        pred_s.append(speech_decisions(spec, run, n))
        raw_s.append(run.probs["speech"][:n, spec.heads["speech"].index("speech")] >= 0.5)
        if orun:
            other_s.append(speech_decisions(other[0], orun, n))
        if act_classes:
            pred_a.append(np.array([ACTIVITY_CLASSES.index(act_classes[j]) if act_classes[j] in ACTIVITY_CLASSES
                                    else -1 for j in run.labels["activity"][:n]]))
        for name in peers:
            peer_s[name].append(peer_steps(name, x, n))
        if first is None:
            first = (x, tl.activity[:n], tl.speech[:n], run)
        log.info("timeline %d/%d done", i + 1, timelines)
        if progress:
            progress("timelines", i + 1, timelines)
    ts, ta = np.concatenate(truth_s), np.concatenate(truth_a)
    report: dict = {"model": spec.tag, "data": "test splits: LibriSpeech test-other, FSDD theo+yweweler, "
                    f"DCASE fold5; {timelines} timelines x {seconds:.0f} s, seed {seed}, "
                    f"{SPEECH_SHARE:.0%} of segments speech",
                    "steps": int(len(ts)),
                    "speech_f1": binary_f1(ts, np.concatenate(pred_s)),
                    "speech_f1_per_timeline": [binary_f1(t, p)["f1"] for t, p in zip(truth_s, pred_s)],
                    "speech_f1_raw_argmax": binary_f1(ts, np.concatenate(raw_s))}
    errors = {"model": speech_errors(truth_s, truth_a, segs, pred_s)}
    if peers:
        report["peers"] = {}
    for name, decisions in peer_s.items():
        report["peers"][name] = {"speech_f1": binary_f1(ts, np.concatenate(decisions)),
                                 "speech_f1_per_timeline": [binary_f1(t, p)["f1"]
                                                            for t, p in zip(truth_s, decisions)]}
        errors[name] = speech_errors(truth_s, truth_a, segs, decisions)
    if "silero" in peer_s:  # the name the reports before the other peers used
        report["silero_vad_f1"] = report["peers"]["silero"]["speech_f1"]
    report["speech_errors"] = errors
    report["speech_edges"] = edge_sensitivity(truth_s)
    if other:
        report["against"] = _against(spec.tag, other[0].tag, truth_s, pred_s, other_s)
        other[1].close()
    if pred_a:
        pa = np.concatenate(pred_a)
        keep = pa >= 0
        conf = confusion(ta[keep], pa[keep], len(ACTIVITY_CLASSES))
        report["activity"] = per_class(conf, ACTIVITY_CLASSES)
        report["activity_step_accuracy"] = round(float((ta == pa).mean()), 4)
        report["onset_latency"] = onset_latency(ta, pa, STEP_S, ignore={ACTIVITY_CLASSES.index(QUIET)})
        report["dcase_fold5_clip_accuracy"] = clip_accuracy(spec, engines, events, policy_cfg, rng)
        plot_confusion(conf, ACTIVITY_CLASSES, out_dir / "confusion.png")
    plot_timeline(spec, *first, out_dir / "timeline.png")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    engines.close()
    return report


def clip_accuracy(spec: ModelSpec, engines, events: list[Clip], policy_cfg: PolicyConfig,
                  rng: np.random.Generator) -> dict:
    """Each event clip alone in quiet background: the class with the highest mean activity probability over
    the clip (and 0.5 s after it), quiet excluded, is the model's answer."""
    from actstream.training.data import background

    classes = spec.heads["activity"]
    quiet = classes.index(QUIET) if QUIET in classes else None
    right = 0
    per: dict[str, list[int]] = {}
    for clip in events:
        pad = background(16000, rng)
        a = clip.audio / (np.abs(clip.audio).max() + 1e-9) * 0.5
        x = np.concatenate([pad, a, background(16000, rng)]).astype(np.float32)
        run = run_stream(spec, engines, x, policy_cfg)
        lo, hi = 10, 10 + int(np.ceil(len(a) / 1600)) + 5
        p = run.probs["activity"][lo:hi].mean(axis=0)
        if quiet is not None:
            p[quiet] = -1
        ok = classes[int(p.argmax())] == clip.activity
        right += ok
        per.setdefault(clip.activity, []).append(int(ok))
    return {"clips": len(events), "accuracy": round(right / max(1, len(events)), 4),
            "per_class": {c: round(float(np.mean(v)), 4) for c, v in sorted(per.items())}}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(conf: np.ndarray, classes: list[str], path: Path,
                   title: str = "activity per 100 ms step, rows normalized",
                   xlabel: str = "predicted (label shown by the stream)") -> None:
    plt = _pyplot()
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if conf[i, j]:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_timeline(spec: ModelSpec, audio: np.ndarray, truth_a: np.ndarray, truth_s: np.ndarray, run: StreamRun,
                  path: Path, seconds: float = 30.0) -> None:
    """Waveform, speech probability against the truth, and activity probabilities with the true class."""
    plt = _pyplot()
    n = min(len(truth_a), int(seconds / STEP_S))
    t = (np.arange(n) + 1) * STEP_S
    fig, axes = plt.subplots(3, 1, figsize=(12, 7), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": [1, 1, 2]})
    axes[0].plot(np.arange(int(n * STEP_S * 16000)) / 16000, audio[:int(n * STEP_S * 16000)], lw=0.3, color="0.3")
    axes[0].set_ylabel("audio")
    sp = run.probs["speech"][:n, spec.heads["speech"].index("speech")]
    axes[1].fill_between(t, 0, truth_s[:n], step="pre", color="tab:green", alpha=0.25, label="truth: speech")
    axes[1].plot(t, sp, color="tab:green", label="p(speech), smoothed")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel("speech")
    axes[1].legend(loc="upper right", fontsize=8)
    classes = spec.heads.get("activity", [])
    cmap = plt.get_cmap("tab20")
    for j, c in enumerate(classes):
        if c == QUIET:
            continue
        col = cmap(j % 20)
        axes[2].plot(t, run.probs["activity"][:n, j], color=col, lw=1, label=c)
        truth_c = truth_a[:n] == ACTIVITY_CLASSES.index(c) if c in ACTIVITY_CLASSES else np.zeros(n, bool)
        axes[2].fill_between(t, 0, truth_c * 1.0, step="pre", color=col, alpha=0.2)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_ylabel("activity probability\n(shaded: truth)")
    axes[2].set_xlabel("stream time (s)")
    axes[2].legend(loc="upper right", fontsize=7, ncol=4)
    fig.suptitle(f"{spec.tag}: evaluation timeline (held-out test clips)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
