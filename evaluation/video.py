"""How well video models recognise actions of people they never saw.

`judge_clips` replays labelled clips through the real step path (FileSource, front end, encoders, the
recognizer's LSTM) and scores each clip by the class most of its steps after the first second give (raw
argmax, before the label policy), as well as per step. `evaluate_video` judges a model on the video test
splits of ../shared/data (Weizmann `ira`/`lena`, PS7 `P2`, KTH `person04`) for the classes it knows.
`teaching_protocol` is the measurement behind docs/eval_report.json's `teaching` section: `actstream train`'s
default recipe taught on some people and judged on others (leave one person out on the training people, and
the test people), for several seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.common.errors import ConfigError
from actstream.engines.bundle import ModelSpec, load_spec, open_engines
from actstream.stream.recognizer import CausalRecognizer
from actstream.stream.sources import FileSource
from actstream.stream.steps import steps
from actstream.training.data import ACTION_ALIASES, SETTLE_S, TEST_SPLITS

log = logging.getLogger(__name__)
VIDEO_SETS = ("weizmann", "ps7", "kth")


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    person: str
    dataset: str


def shared_video_clips(root: Path, dataset: str, people: set[str] | None = None) -> list[Clip]:
    """The clips of one video dataset of ../shared/data, of the given people (None: all)."""
    manifest = root / "manifests" / f"{dataset}.csv"
    if not manifest.is_file():
        raise ConfigError(f"{manifest} not found: pass the shared data folder (../shared/data)")
    with manifest.open() as fh:
        return [Clip(root / r["path"], r["label"], r["subject_or_fold"], dataset) for r in csv.DictReader(fh)
                if people is None or r["subject_or_fold"] in people]


def _named(clip: Clip, classes: list[str]) -> Clip:
    """The clip under the model's name for its action where the default model's action head renames it
    (PS7's `wave` is `wave1`), else as it is."""
    alias = ACTION_ALIASES.get(clip.dataset, {}).get(clip.label)
    return dataclasses.replace(clip, label=alias) if clip.label not in classes and alias in classes else clip


def video_head(spec: ModelSpec) -> str:
    """The head that names actions: `action` where the model has one, else its only or first head."""
    return "action" if "action" in spec.heads else next(iter(spec.heads))


def judge_clips(spec: ModelSpec, engines, clips: list[Clip], progress=None) -> dict:
    """Each clip replayed through the step path; returns clips and steps right, per person and per class,
    the confusion matrix (truth x prediction, clips) and the wrong clips."""
    head = video_head(spec)
    classes = spec.heads[head]
    rec = CausalRecognizer(spec, engines)
    conf = np.zeros((len(classes), len(classes)), np.int64)
    per_person: dict[str, list[int]] = {}
    steps_right = steps_total = 0
    wrong = []
    for n, clip in enumerate(clips):
        if clip.label not in classes:
            continue
        rec.reset()
        src = FileSource(clip.path, sample_rate=spec.audio.sample_rate if spec.audio else 16000,
                         window_samples=spec.audio.window_samples if spec.audio else 1,
                         use_audio="audio" in spec.modalities, use_video=True)
        preds = []
        try:
            for step in steps(src, spec.step_ms):
                for t, probs in rec.advance(step.snap.frame, step.snap.audio, step.t, step.snap.frame_t):
                    if t > SETTLE_S + 1e-9:
                        preds.append(int(np.argmax(probs[head])))
        finally:
            src.close()
        if not preds:
            log.warning("%s: shorter than %.1f s, not judged", clip.path, SETTLE_S)
            continue
        truth = classes.index(clip.label)
        said = int(np.bincount(preds, minlength=len(classes)).argmax())
        conf[truth, said] += 1
        per_person.setdefault(clip.person, []).append(int(said == truth))
        steps_right += sum(p == truth for p in preds)
        steps_total += len(preds)
        if said != truth:
            wrong.append(f"{clip.person} {clip.label} -> {classes[said]}")
        if progress:
            progress("clips", n + 1, len(clips))
    clips_n = int(conf.sum())
    return {"head": head, "classes": classes, "clips": clips_n,
            "clip_accuracy": round(float(np.trace(conf)) / max(1, clips_n), 4),
            "step_accuracy": round(steps_right / max(1, steps_total), 4),
            "per_person": {p: round(float(np.mean(v)), 4) for p, v in sorted(per_person.items())},
            "confusion": conf.tolist(), "wrong": wrong}


def judge_model(spec: ModelSpec, clips: list[Clip], backend: str = "onnxruntime", progress=None,
                precision: str = "fp32") -> dict:
    """judge_clips with the model's own engines, opened and closed here."""
    engines = open_engines(spec, backend, precision=precision)
    engines.load()
    try:
        return judge_clips(spec, engines, clips, progress)
    finally:
        engines.close()


def video_precision(spec: ModelSpec, backend: str, precision: str) -> str:
    """The precision the video encoder runs at under model.precision `precision` ("int8" where its INT8
    file is chosen: ONNX Runtime only; TensorRT builds its own engines)."""
    from actstream.engines.cache import video_encoder_onnx
    from actstream.engines.precision import encoder_file

    if backend != "onnxruntime" or precision == "fp32":
        return "fp32"
    fp32 = video_encoder_onnx(spec.video.size)
    return "fp32" if encoder_file(spec.folder, "video", fp32, precision) == fp32 else "int8"


def _judge_all(spec: ModelSpec, clips: list[Clip], data_root: Path, backend: str, precision: str, progress) -> dict:
    from actstream.evaluation.openset import open_set

    engines = open_engines(spec, backend, precision=precision)
    engines.load()
    try:
        result = judge_clips(spec, engines, clips, progress)
        if "action" in spec.heads:
            result["open_set"] = open_set(spec, engines, data_root)
    finally:
        engines.close()
    return result


def _summary(result: dict) -> dict:
    """The figures of one precision, for the side-by-side table."""
    out = {k: result[k] for k in ("clip_accuracy", "step_accuracy", "wrong")}
    for part, r in result.get("open_set", {}).items():
        if isinstance(r, dict) and "known_action_confident_share" in r:
            out[part] = {k: r[k] for k in ("still_share", "other_share", "known_action_confident_share") if k in r}
    return out


def evaluate_video(spec: ModelSpec, data_root: Path, out_dir: Path, backend: str = "onnxruntime",
                   progress=None, precision: str = "auto") -> dict:
    """A video model judged on the video test splits of ../shared/data (the clips of the classes it knows,
    `other` left to the open-set figures) and, for a model with an `action` head, on what it was never taught
    (evaluation/openset.py), at the precision it runs at (`precision`: model.precision); where that puts its
    video encoder in INT8, FP32 is judged too, side by side (`precisions`). Writes report.json and
    confusion.png to out_dir."""
    from actstream.evaluation.eval import plot_confusion

    if "video" not in spec.modalities:
        raise ConfigError(f"model {spec.tag} reads no video: judge it with `actstream eval` on audio")
    classes = spec.heads[video_head(spec)]
    clips = [c for d in VIDEO_SETS for c in (_named(c, classes) for c in shared_video_clips(data_root, d, TEST_SPLITS[d]))
             if c.label in classes and c.label != "other"]
    if not clips:
        raise ConfigError(f"model {spec.tag}: none of its classes ({', '.join(classes[:12])}) is in the video test "
                          f"splits of {data_root} (weizmann, ps7, kth): nothing to judge")
    runs_at = video_precision(spec, backend, precision)
    result = _judge_all(spec, clips, data_root, backend, precision, progress)
    result["video_encoder_precision"] = runs_at
    if runs_at == "int8":
        result["precisions"] = {"int8": _summary(result),
                                "fp32": _summary(_judge_all(spec, clips, data_root, backend, "fp32", progress))}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"model": spec.tag, "data": "video test splits: " + ", ".join(
        f"{d} {'/'.join(sorted(TEST_SPLITS[d]))}" for d in VIDEO_SETS), **result}
    plot_confusion(np.array(result["confusion"]), classes, out_dir / "confusion.png",
                   "clips of people never seen, rows normalized",
                   "predicted (the class most steps after the first second give)")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# (dataset, name, training people, judged people): leave one person out over the training people, then the
# test people; taught on one person, judged on everyone else
TEACHING = [
    *[("weizmann", f"weizmann LOPO {p}", [q for q in ("daria", "denis", "eli", "ido") if q != p], [p])
      for p in ("daria", "denis", "eli", "ido")],
    ("weizmann", "weizmann 4 people -> test people", ["daria", "denis", "eli", "ido"], ["ira", "lena"]),
    ("weizmann", "weizmann 1 person (denis) -> the 5 others", ["denis"], ["daria", "eli", "ido", "ira", "lena"]),
    ("ps7", "ps7 1 person (P1) -> test person", ["P1"], ["P2"]),
]


def teaching_protocol(data_root: Path, seeds: list[int], work: Path | None = None, epochs: int = 30,
                      progress=None) -> dict:
    """Teach and judge each case of TEACHING for each seed; returns {case: {seed: result}} with means."""
    from actstream.training.teach import train_folder

    tmp = tempfile.mkdtemp(prefix="actstream-teaching-") if work is None else None
    work = Path(tmp) if tmp else work
    out: dict = {}
    try:
        total, done = len(TEACHING) * len(seeds), 0
        for dataset, name, teach_people, judge_people in TEACHING:
            manifest = work / f"{dataset}_{'-'.join(teach_people)}.csv"
            with manifest.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path", "label", "group"])
                for c in shared_video_clips(data_root, dataset, set(teach_people)):
                    w.writerow([c.path.absolute(), c.label, c.person])
            judged = shared_video_clips(data_root, dataset, set(judge_people))
            case = {"taught_on": teach_people, "judged_on": judge_people, "seeds": {}}
            for seed in seeds:
                folder = work / f"model_{dataset}_{'-'.join(teach_people)}_{seed}"
                shutil.rmtree(folder, ignore_errors=True)
                card = train_folder(manifest, folder, seed=seed, epochs=epochs)
                r = judge_model(load_spec(str(folder)), judged)
                r["mirrored"] = card.get("mirrored")
                case["seeds"][str(seed)] = r
                done += 1
                log.info("%s seed %d: clips %.3f, steps %.3f", name, seed, r["clip_accuracy"], r["step_accuracy"])
                if progress:
                    progress("teaching runs", done, total)
            accs = [r["clip_accuracy"] for r in case["seeds"].values()]
            case["clip_accuracy_mean"] = round(float(np.mean(accs)), 4)
            case["clip_accuracy_min"] = round(float(np.min(accs)), 4)
            case["step_accuracy_mean"] = round(float(np.mean([r["step_accuracy"] for r in case["seeds"].values()])), 4)
            out[name] = case
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    lopo = [case for name, case in out.items() if "LOPO" in name]
    if lopo:
        per_seed = {s: round(float(np.mean([c["seeds"][s]["clip_accuracy"] for c in lopo])), 4)
                    for s in lopo[0]["seeds"]}
        out["weizmann LOPO, mean of the folds"] = {"clip_accuracy_per_seed": per_seed,
                                                    "clip_accuracy_mean": round(float(np.mean(list(per_seed.values()))), 4)}
    return out
