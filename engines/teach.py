"""Teach new activities from your own recordings: `actstream train DATA --arch ...`.

DATA is a folder with one subfolder per class (files inside are recordings), or a manifest CSV with
columns path,label[,start,end][,group] (paths relative to the CSV). Each recording is replayed through the
same source, front end and encoder engines as at run time, once; its per-step embeddings are cached. The
video CNN (EfficientNet-Lite0) and the audio CNN (the shipped default model's) stay frozen: only the LSTM
and its head learn, which is what makes one or two recordings per class enough. The LSTM trains on
sequences made the way a stream sees them: random pieces of recordings of random classes, cut at random
points and joined, so it learns the transitions too.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream.errors import ConfigError, SourceError
from stream.core import StageTimes, encode_step
from stream.frontend import VideoFeatures
from stream.sources import FileSource

from .bundle import ModelSpec, load_spec, load_torch_modules, open_engines, save_model
from .cache import cache_dir, file_digest, key_digest
from .fit import class_weights, fit_temporal, plot_history
from .models import ARCHS, video_motion

log = logging.getLogger(__name__)

MEDIA = {".mp4", ".mkv", ".avi", ".mpg", ".mpeg", ".mov", ".webm", ".wav", ".flac", ".mp3", ".ogg", ".m4a"}
STEP_S = 0.1


@dataclass(frozen=True)
class Item:
    """One labelled recording (or a part of one: start/end in seconds, None = all)."""

    path: Path
    label: str
    group: str
    start: float | None = None
    end: float | None = None


def _group_of(path: Path) -> str:
    """Without a group column, recordings of one person share the name's first part (person01_boxing_d1)."""
    stem = path.stem
    return stem.split("_")[0] if "_" in stem else stem


def read_dataset(path: str | Path) -> list[Item]:
    """Items from a class-per-subfolder folder or a manifest CSV; refuses datasets that cannot train."""
    path = Path(path)
    items: list[Item] = []
    if path.is_file() and path.suffix == ".csv":
        with path.open() as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}: expected "
                                  f"path,label[,start,end][,group]")
            for row in reader:
                p = (path.parent / row["path"]).resolve()
                items.append(Item(p, row["label"], row.get("group") or _group_of(p),
                                  float(row["start"]) if row.get("start") else None,
                                  float(row["end"]) if row.get("end") else None))
    elif path.is_dir():
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            for f in sorted(sub.iterdir()):
                if f.suffix.lower() in MEDIA:
                    items.append(Item(f, sub.name, _group_of(f)))
    else:
        raise ConfigError(f"{path}: not a dataset folder or manifest CSV: expected a folder with one subfolder "
                          f"per class, or a CSV with columns path,label[,start,end][,group]")
    classes = sorted({i.label for i in items})
    if len(classes) < 2:
        raise ConfigError(f"{path}: found {len(items)} recording(s) in {len(classes)} class(es): "
                          f"need at least two classes to learn to tell apart")
    return items


def _encoder_key(spec: ModelSpec) -> dict:
    key = {"arch_modalities": list(spec.modalities), "step": STEP_S}
    if spec.audio is not None:
        key["audio"] = spec.audio.to_dict()
        key["audio_cnn"] = file_digest(spec.folder / "audio_encoder.onnx")
    if spec.video is not None:
        key["video"] = spec.video.to_dict()
    return key


def item_embeddings(item: Item, spec: ModelSpec, engines, flip: bool = False) -> dict[str, np.ndarray]:
    """Per-step embeddings of one recording through the run-time path (FileSource, front end, engines),
    cached on disk under the engine cache by the file's hash and everything that shapes them."""
    key = key_digest({"file": file_digest(item.path), "start": item.start, "end": item.end, "flip": flip,
                      **_encoder_key(spec)})
    path = cache_dir() / "embeddings" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {m: z[m] for m in spec.modalities}
        except (OSError, ValueError, KeyError):
            log.warning("rebuilding unreadable embedding cache file %s", path)
    src = FileSource(item.path, sample_rate=spec.audio.sample_rate if spec.audio else 16000,
                     window_samples=spec.audio.window_samples if spec.audio else 1,
                     use_audio="audio" in spec.modalities, use_video="video" in spec.modalities)
    try:
        if "audio" in spec.modalities and not src.has_audio_track:
            raise SourceError(f"{item.path}: has no audio, but arch {spec.arch} needs audio")
        if "video" in spec.modalities and not src.has_video_track:
            raise SourceError(f"{item.path}: has no video, but arch {spec.arch} needs video")
        out: dict[str, list] = {m: [] for m in spec.modalities}
        k, last_v, times = 0, None, StageTimes()
        while True:
            k += 1
            t = k * STEP_S
            if item.end is not None and t > item.end:
                break
            snap = src.snapshot(t)
            if snap is None:
                break
            if item.start is not None and t < item.start:
                continue
            frame = np.ascontiguousarray(snap.frame[:, ::-1]) if flip and snap.frame is not None else snap.frame
            embs, last_v = encode_step(spec, engines, times, frame, snap.audio, last_v)  # the step core's encoders
            for m, e in embs.items():
                out[m].append(e[0])
    finally:
        src.close()
    if not out[spec.modalities[0]]:
        raise SourceError(f"{item.path}: gave no steps (shorter than {STEP_S} s, or start/end outside it)")
    arrays = {m: np.stack(v).astype(np.float32) for m, v in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def _split_groups(items: list[Item], rng: np.random.Generator) -> set[str]:
    """Validation groups: one group per class, only where the class keeps another group for training."""
    held: set[str] = set()
    for label in sorted({i.label for i in items}):
        groups = sorted({i.group for i in items if i.label == label})
        if len(groups) >= 2:
            held.add(groups[int(rng.integers(len(groups)))])
    # a group held out for one class must not take away the only training group of another
    for label in sorted({i.label for i in items}):
        if not {i.group for i in items if i.label == label} - held:
            return set()
    return held


def train_folder(data: str | Path, out: str | Path, arch: str = "video_lstm", seed: int = 0, epochs: int = 30,
                 base: str = "default", name: str | None = None, lookahead: int = 10, progress=None) -> dict:
    """Train a model for the classes of a dataset folder or manifest; returns its model card."""
    if arch not in ARCHS:
        raise ConfigError(f"--arch {arch!r} unknown: expected one of {', '.join(ARCHS)}")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    items = read_dataset(data)
    classes = sorted({i.label for i in items})
    base_spec = load_spec(base)
    uses_audio = "audio" in ARCHS[arch]
    spec = ModelSpec(name=name or Path(out).name, arch=arch, heads={"activity": classes},
                     audio=base_spec.audio if uses_audio else None,
                     video=VideoFeatures() if "video" in ARCHS[arch] else None,
                     lookahead=lookahead if arch == "bilstm" else 0, motion="video" in ARCHS[arch],
                     folder=base_spec.folder)
    engines = open_engines(spec, "onnxruntime")
    engines.load()
    try:
        embs = []
        for n, item in enumerate(items):
            variants = [item_embeddings(item, spec, engines)]
            if "video" in spec.modalities:
                variants.append(item_embeddings(item, spec, engines, flip=True))
            embs.append(variants)
            if progress:
                progress("embeddings", n + 1, len(items))
    finally:
        engines.close()
    held = _split_groups(items, rng)
    tr = [k for k, i in enumerate(items) if i.group not in held]  # `sample` reads this list: rebound for the refit
    va = [k for k, i in enumerate(items) if i.group in held]
    labels = np.array([classes.index(i.label) for i in items])
    seq, batch = 60, 16

    def sample(rng):
        """Sequences of random pieces (1-4 s) of random training recordings: transitions at random points."""
        xs = {m: np.zeros((batch, seq, d), np.float32) for m, d in spec.dims.items()}
        ys = np.zeros((batch, seq), np.int64)
        for b in range(batch):
            pos = 0
            while pos < seq:
                k = tr[int(rng.integers(len(tr)))]
                v = embs[k][int(rng.integers(len(embs[k])))]
                n_steps = len(next(iter(v.values())))
                length = min(int(rng.integers(10, 41)), seq - pos, n_steps)
                start = int(rng.integers(0, n_steps - length + 1))
                for m in spec.modalities:
                    xs[m][b, pos:pos + length] = v[m][start:start + length]
                ys[b, pos:pos + length] = labels[k]
                pos += length
            if spec.motion:  # the running mean runs across the joins, as it does in a stream
                xs["video"][b], _ = video_motion(xs["video"][b], None)
        return {m: torch.from_numpy(x) for m, x in xs.items()}, {"activity": torch.from_numpy(ys)}

    def validate(temporal):
        right = total = 0
        with torch.inference_mode():
            for k in va:
                v = dict(embs[k][0])
                if spec.motion:
                    v["video"], _ = video_motion(v["video"], None)
                h0, c0 = temporal.zero_state(1)
                lg, _, _ = temporal.logits({m: torch.from_numpy(v[m][None]) for m in spec.modalities}, h0, c0)
                pred = lg["activity"][0].argmax(-1).numpy()
                right += int((pred == labels[k]).sum())
                total += len(pred)
        acc = right / max(1, total)
        return acc, {"validation_step_accuracy": round(acc, 4)}

    temporal = spec.new_temporal()
    fitted = fit_temporal(temporal, sample, validate if va else None,
                           {"activity": class_weights(labels[tr], len(classes))}, epochs=epochs,
                           steps_per_epoch=20, rng=rng, patience=8,
                           progress=(lambda e, m: progress("epochs", e, epochs)) if progress else None)
    history = fitted.pop("history")
    metrics = fitted
    if va:
        # the held-out groups chose the number of epochs; with so few recordings, the final model then learns
        # from all of them for that long (no recording is wasted on validation)
        tr = list(range(len(items)))
        temporal = spec.new_temporal()
        fit_temporal(temporal, sample, None, {"activity": class_weights(labels, len(classes))},
                     epochs=max(5, metrics["epoch"]), steps_per_epoch=20, rng=rng)
        metrics["refit_on_all_epochs"] = max(5, metrics["epoch"])
    audio_cnn = load_torch_modules(base_spec)[0] if uses_audio else None
    card = {"version": 1, "trained": datetime.date.today().isoformat(), "seed": seed,
            "data": str(data), "classes": classes, "recordings": len(items),
            "split": {"train_groups": sorted({items[k].group for k in tr}),
                      "validation_groups": sorted(held) or "none (too few groups per class: trained a fixed "
                                                           "number of epochs)"},
            "metrics": metrics, "encoders": f"frozen: {'audio CNN of ' + base_spec.tag if uses_audio else ''}"
                                            f"{' + ' if uses_audio and spec.video else ''}"
                                            f"{'EfficientNet-Lite0 (ImageNet)' if spec.video else ''}",
            "train_seconds": round(time.time() - t0, 1),
            "command": f"actstream train {data} --arch {arch} --out {out} --seed {seed}"}
    final = ModelSpec(name=spec.name, arch=arch, heads=spec.heads, audio=spec.audio, video=spec.video,
                      lookahead=spec.lookahead, motion=spec.motion, card=card)
    out = Path(out)
    save_model(final, out, audio_cnn, temporal)
    (out / "MODEL_CARD.md").write_text(model_card_md(final))
    plot_history(history, out / "training.png", f"{final.name}: {arch}, {len(items)} recordings")
    return card


def model_card_md(spec: ModelSpec) -> str:
    c = spec.card
    lines = [f"# Model card: {spec.name} (version {c.get('version')})", "",
             f"- Architecture: {spec.arch}; heads: " + "; ".join(f"`{h}`: {', '.join(v)}" for h, v in spec.heads.items())]
    lines += [f"- {k.replace('_', ' ').capitalize()}: {json.dumps(v) if isinstance(v, (dict, list)) else v}"
              for k, v in c.items() if k != "version"]
    return "\n".join(lines) + "\n"
