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

import dataclasses
import datetime
import json
import logging
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from actstream.stream.csvfile import shown_path
from actstream.common.errors import ConfigError, SourceError
from actstream.stream.encode import Prepare, StageTimes, VideoState, encode
from actstream.engines.features import VideoFeatures
from actstream.engines.flow import GLOBALS, REVISION as FLOW_REVISION, FlowFeatures, flow_window
from actstream.stream.sources import FileSource
from actstream.stream.steps import Snapshot, steps

from actstream.engines.bundle import (DEFAULT_STEP_MS, MAX_LABEL_CHARS as MAX_LABEL, MAX_LOOKAHEAD, ModelSpec, load_spec, load_torch_modules, open_engines, save_model)
from actstream.engines.cache import cache_dir, file_digest, key_digest
from actstream.training.fit import class_weights, fit_temporal, plot_history
from actstream.engines.models import ARCHS, video_motion

log = logging.getLogger(__name__)

MEDIA = {".mp4", ".mkv", ".avi", ".mpg", ".mpeg", ".mov", ".webm", ".wav", ".flac", ".mp3", ".ogg", ".m4a"}


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


MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # about 100,000 rows of long paths
MAX_ITEMS = 100_000  # recordings in one dataset (manifest rows or files in a folder)
MANIFEST_HINT = "expected columns path,label[,start,end][,group] (paths relative to the CSV, start/end in seconds)"


def _media_file(p: Path, where: str) -> Path:
    """A recording named by a dataset: it exists and is a regular, non-empty file."""
    shown = shown_path(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}: file {shown} not found: fix the path (relative to the manifest) or remove "
                          f"the row") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{where}: file {shown[:200]} cannot be used ({getattr(exc, 'strerror', None) or exc}): "
                          f"fix the path or remove the row") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: {shown} is not a regular file (a folder, device or pipe): name a recording")
    if st.st_size == 0:
        raise ConfigError(f"{where}: {shown} is empty: name a recording with audio or video")
    return p


def _manifest_items(path: Path) -> list[Item]:
    """Every row of a manifest CSV checked before any recording is read: one line names the row at fault."""
    from actstream.stream.csvfile import name, number, read_csv

    rows = read_csv(path, "manifest", "path,label[,start,end][,group]", {"path", "label"},
                    {"path", "label", "start", "end", "group"}, MAX_MANIFEST_BYTES, MAX_ITEMS)
    items = []
    for line, row in rows:
        where = f"manifest {shown_path(path)} line {line}"
        if not row["path"].strip():
            raise ConfigError(f"{where}: path is empty: {MANIFEST_HINT}")
        try:
            p = (path.parent / row["path"].strip()).absolute()
        except ValueError as exc:
            raise ConfigError(f"{where}: path {row['path'][:80]!r} is not a usable path: {MANIFEST_HINT}") from exc
        label = name(row["label"], where, "label", MANIFEST_HINT, MAX_LABEL)
        start = number(row["start"], where, "start", MANIFEST_HINT) if (row.get("start") or "").strip() else None
        end = number(row["end"], where, "end", MANIFEST_HINT) if (row.get("end") or "").strip() else None
        if start is not None and end is not None and not start < end:
            raise ConfigError(f"{where}: start {start:g} is not before end {end:g}: {MANIFEST_HINT}")
        group = (name(row["group"], where, "group", MANIFEST_HINT, 256) if (row.get("group") or "").strip()
                 else None)
        _media_file(p, where)
        items.append(Item(p, label, group or _group_of(p), start, end))
    return items


def _folder_items(path: Path) -> list[Item]:
    items = []
    try:
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            for f in sorted(sub.iterdir()):
                if f.suffix.lower() not in MEDIA:
                    continue
                if len(items) >= MAX_ITEMS:
                    raise ConfigError(f"{shown_path(path)}: more than {MAX_ITEMS} recordings: train on a smaller "
                                      f"dataset")
                if len(sub.name) > MAX_LABEL:
                    raise ConfigError(f"{shown_path(sub)}: a class folder name of {len(sub.name)} characters: "
                                      f"expected at most {MAX_LABEL} (it becomes the class label)")
                items.append(Item(_media_file(f, str(sub)), sub.name, _group_of(f)))
    except OSError as exc:
        raise ConfigError(f"{shown_path(path)}: cannot be listed ({exc.strerror}: {exc.filename}): check its "
                          f"permissions") from exc
    return items


def read_dataset(path: str | Path) -> list[Item]:
    """Items from a class-per-subfolder folder or a manifest CSV, all checked before any training starts;
    refuses datasets that cannot train."""
    path = Path(path)
    if path.suffix.lower() == ".csv" and not path.is_dir():
        items = _manifest_items(path)
    elif path.is_dir():
        items = _folder_items(path)
    else:
        raise ConfigError(f"{shown_path(path)}: not a dataset folder or manifest CSV: expected a folder with one "
                          f"subfolder per class, or a CSV with columns path,label[,start,end][,group]")
    classes = sorted({i.label for i in items})
    if len(classes) < 2:
        raise ConfigError(f"{shown_path(path)}: found {len(items)} recording(s) in {len(classes)} class(es): "
                          f"need at least two classes to learn to tell apart")
    return items


def _encoder_key(spec: ModelSpec) -> dict:
    key = {"arch_modalities": list(spec.modalities), "step_ms": spec.step_ms}
    if spec.audio is not None:
        key["audio"] = spec.audio.to_dict()
        key["audio_cnn"] = file_digest(spec.folder / "audio_encoder.onnx")
    if spec.video is not None:
        key["video"] = spec.video.to_dict()
    if spec.flow is not None:
        key["flow"] = {**spec.flow.to_dict(), "revision": FLOW_REVISION}
    return key


def _cached(key: dict, spec: ModelSpec, compute) -> dict[str, np.ndarray]:
    """Per-step embeddings cached on disk under the engine cache by `key` (what shapes them): loaded when
    there, else computed by compute() and stored (written whole, then renamed)."""
    path = cache_dir() / "embeddings" / f"{key_digest(key)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {m: z[m] for m in spec.dims}
        except (OSError, ValueError, KeyError):
            log.warning("rebuilding unreadable embedding cache file %s", path)
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def _embed_snapshots(snaps, spec: ModelSpec, engines) -> dict[str, np.ndarray]:
    """Per-step embeddings of one stream's snapshots through the step core's front end and encoders."""
    out: dict[str, list] = {m: [] for m in spec.dims}
    state, times = VideoState(), StageTimes()
    prepare = Prepare(spec, engines, spec.step_ms, times)
    for snap in snaps:
        for m, e in encode(spec, engines, times, prepare([snap]), state).items():
            out[m].append(e[0])
    return {m: np.stack(v).astype(np.float32) for m, v in out.items() if v}


LOOK_REVISION = 1  # of new_look's arithmetic: cached embeddings are keyed by it


def look_of(k: int) -> dict[str, float]:
    """The k-th other look of a recording (k >= 1), drawn once from a fixed seed: the camera nearer or further
    (scale 0.7-1.15 about the centre) and off to a side (shift up to 10 % of the frame), other light (gain
    0.7-1.3, gamma 0.8-1.25) and another colour cast (each channel 0.85-1.15)."""
    rng = np.random.default_rng([0x100C, k])
    return {"scale": float(np.exp(rng.uniform(np.log(0.7), np.log(1.15)))), "dx": float(rng.uniform(-0.1, 0.1)),
            "dy": float(rng.uniform(-0.05, 0.05)), "gain": float(rng.uniform(0.7, 1.3)),
            "gamma": float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
            **{f"c{i}": float(rng.uniform(0.85, 1.15)) for i in range(3)}}


def new_look(frame: np.ndarray, look: dict[str, float]) -> np.ndarray:
    """A BGR uint8 frame as another camera and light would show the same scene (look_of): what one person
    filmed once cannot teach the appearance stream, a user's webcam elsewhere will differ in."""
    h, w = frame.shape[:2]
    s = look["scale"]
    m = np.float32([[s, 0, (1 - s) * w / 2 + look["dx"] * w], [0, s, (1 - s) * h / 2 + look["dy"] * h]])
    moved = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x = np.arange(256, dtype=np.float32)[:, None, None] / 255.0
    gains = np.float32([look["gain"] * look[f"c{i}"] for i in range(3)])
    return cv2.LUT(moved, np.clip(255.0 * gains * x ** look["gamma"], 0, 255).astype(np.uint8))  # (256, 1, 3)


def item_embeddings(item: Item, spec: ModelSpec, engines, flip: bool = False,
                    tag: dict | None = None, look: int = 0) -> dict[str, np.ndarray]:
    """Per-step embeddings of one recording through the run-time path (FileSource, front end, engines),
    cached on disk under the engine cache by the file's hash and everything that shapes them (tag: what else
    does, such as an INT8 encoder's digest). flip: mirrored; look: its frames in look_of(look) (0: as recorded)."""
    key = {"file": file_digest(item.path), "start": item.start, "end": item.end, "flip": flip, **_encoder_key(spec),
           **(tag or {}), **({"look": look, "look_revision": LOOK_REVISION} if look else {})}
    seen = look_of(look) if look else None

    def compute():
        src = FileSource(item.path, sample_rate=spec.audio.sample_rate if spec.audio else 16000,
                         window_samples=spec.audio.window_samples if spec.audio else 1,
                         use_audio="audio" in spec.modalities, use_video="video" in spec.modalities)
        try:
            if "audio" in spec.modalities and not src.has_audio_track:
                raise SourceError(f"{shown_path(item.path)}: has no audio, but arch {spec.arch} needs audio")
            if "video" in spec.modalities and not src.has_video_track:
                raise SourceError(f"{shown_path(item.path)}: has no video, but arch {spec.arch} needs video")

            def snaps():
                for step in steps(src, spec.step_ms):
                    if item.end is not None and step.t > item.end:
                        return
                    if item.start is not None and step.t < item.start:
                        continue
                    frame = step.snap.frame
                    if flip and frame is not None:
                        frame = np.ascontiguousarray(frame[:, ::-1])
                    if seen is not None and frame is not None:
                        frame = new_look(frame, seen)
                    yield Snapshot(step.t, frame, step.snap.audio, 0.0, step.snap.frame_t)

            arrays = _embed_snapshots(snaps(), spec, engines)
        finally:
            src.close()
        if len(arrays) < len(spec.dims):
            raise SourceError(f"{shown_path(item.path)}: gave no steps (shorter than {spec.step_ms} ms, or start/end "
                              f"outside it)")
        return arrays

    return _cached(key, spec, compute)


def frames_embeddings(frames, name: dict, spec: ModelSpec, engines, tag: dict | None = None) -> dict[str, np.ndarray]:
    """Per-step embeddings of frames made in memory (training's synthesized clips: one frame per step, at the
    step times), cached like a recording's by `name` (what made the frames) and the encoders."""
    step_s = spec.step_ms / 1000.0

    def compute():
        return _embed_snapshots((Snapshot((i + 1) * step_s, f, None, 0.0, (i + 1) * step_s)
                                 for i, f in enumerate(frames())), spec, engines)

    return _cached({"frames": name, **_encoder_key(spec), **(tag or {})}, spec, compute)


def motion_features(spec: ModelSpec, xs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cached per-step embeddings (N, T, D) -> the LSTM's inputs: the running mean and the flow window run
    across the joins of pieces, as they do in a stream (the recognizer's `_with_motion`)."""
    out = dict(xs)
    if spec.motion:
        out["video"] = np.stack([video_motion(x, None)[0] for x in xs["video"]])
    if spec.flow is not None:
        out["flow"] = np.stack([flow_window(x, None, spec.flow)[0] for x in xs["flow"]])
    return out


def cached_dims(spec: ModelSpec) -> dict[str, int]:
    """Widths of the cached per-step embeddings: the flow descriptor of one frame pair, not yet windowed."""
    return {**spec.dims, **({"flow": spec.flow.pair_dim} if spec.flow is not None else {})}


MIRROR = ("auto", "on", "off")
GLOBAL_MEAN_X, GLOBAL_SPEED = GLOBALS, GLOBALS - 2  # a flow descriptor's mean x flow and mean speed, from its end
DIRECTED = 0.5  # a recording whose mean horizontal flow is over half its mean speed moves one way


def choose_mirror(mirror: str, spec: ModelSpec, items: list[Item], embs: list[dict]) -> tuple[bool, str]:
    """Whether mirrored copies of video recordings are taught with the same label, and why.

    Mirroring doubles what a few people teach (one person walks left, another right) but is wrong where the
    class is the direction: "swipe left" mirrored is "swipe right". `auto` mirrors unless two classes move
    consistently opposite ways: each has two recordings or more, in every one of them most of the motion goes
    one way (mean horizontal flow over mean speed past DIRECTED), left for one class and right for the other.
    A class recorded once gives no such evidence (pass --mirror off)."""
    if spec.video is None or spec.flow is None:
        return False, "no: no video motion stream"
    if mirror != "auto":
        return mirror == "on", f"{mirror} (--mirror {mirror})"
    ways: dict[str, list[int]] = {}
    for item, e in zip(items, embs):
        mean_x, speed = float(e["flow"][:, -GLOBAL_MEAN_X].mean()), float(e["flow"][:, -GLOBAL_SPEED].mean())
        share = mean_x / speed if speed > 0 else 0.0
        ways.setdefault(item.label, []).append(int(np.sign(share)) if abs(share) > DIRECTED else 0)
    directed = {label: w[0] for label, w in ways.items() if len(w) >= 2 and len(set(w)) == 1 and w[0]}
    lefts = sorted(c for c, w in directed.items() if w < 0)
    rights = sorted(c for c, w in directed.items() if w > 0)
    if lefts and rights:
        return False, (f"no (auto): every recording of {lefts[0]!r} moves left and every one of {rights[0]!r} "
                       f"right, so the mirror image of one is the other")
    return True, "yes (auto: no two classes move consistently opposite ways)"


def speed_up(descs: np.ndarray, rate: float) -> np.ndarray:
    """Flow descriptors of a recording played `rate` times as fast: speeds scale, shapes (the moving share,
    the box) do not."""
    out = descs * np.float32(rate)
    out[:, -3:] = descs[:, -3:]  # the last three globals: moving share of the frame, box width/height, box height
    return out


def teach_pieces(rng: np.random.Generator, spec: ModelSpec, pool: list[list[int]], embs: list[list[dict]],
                 labels: np.ndarray, xs: dict[str, np.ndarray], ys: np.ndarray, b: int) -> None:
    """Fill sequence b of xs (cached embeddings, (N, T, D)) and ys (class per step) with random pieces (1-4 s)
    of recordings: a class drawn uniformly from pool (the recordings of each class: class balance), a variant
    of the recording (embs[k]: as recorded, mirrored) and a speed (SPEEDS) at random: transitions at random
    points, motion at the speeds people differ by."""
    seq, pos = ys.shape[1], 0
    while pos < seq:
        ks = pool[int(rng.integers(len(pool)))]
        k = ks[int(rng.integers(len(ks)))]
        v = embs[k][int(rng.integers(len(embs[k])))]
        rate = float(np.exp(rng.uniform(*np.log(SPEEDS)))) if spec.flow is not None else 1.0
        n_steps = len(next(iter(v.values())))
        span = max(1, int(n_steps / rate))  # steps the piece can last at this speed
        length = min(int(rng.integers(10, 41)), seq - pos, span)
        start = int(rng.integers(0, span - length + 1))
        idx = np.minimum(((start + np.arange(length)) * rate).astype(np.int64), n_steps - 1)
        for m in spec.modalities:
            if m in v:
                xs[m][b, pos:pos + length] = v[m][idx]
        if spec.flow is not None:
            xs["flow"][b, pos:pos + length] = speed_up(v["flow"][idx], rate)
        ys[b, pos:pos + length] = labels[k]
        pos += length


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


def _probe_tracks(items: list[Item], arch: str) -> None:
    """Each recording opens as media and has the tracks the architecture needs: known in milliseconds per file,
    before the first embedding rather than in the middle of them."""
    from actstream.stream.sources import _open_container

    needs = [m for m in ("audio", "video") if m in ARCHS[arch]]
    for item in items:
        container = _open_container(item.path)
        try:
            present = {"audio": bool(container.streams.audio), "video": bool(container.streams.video)}
        finally:
            container.close()
        for m in needs:
            if not present[m]:
                raise SourceError(f"{shown_path(item.path)}: has no {m}, but --arch {arch} needs {m}: remove it "
                                  f"from the dataset or choose an arch without {m}")


MAX_EPOCHS = 10_000
# other looks (look_of) each video recording is taught in as well. Taught on Weizmann's denis alone, judged on
# daria, eli and ido (training people only; seeds 0-2, clips right, mean / worst seed): as recorded 0.711 / 0.70,
# 4 looks 0.822 / 0.80, 8 looks 0.878 / 0.867, 16 looks 0.844 / 0.767
LOOKS = 8
MAX_LOOKS = 32
MODALITY_DROPOUT = 0.3  # training: the chance a sequence is taught without one of its streams (models.Temporal)
SPEEDS = (0.9, 1.1)  # the range of playback speeds a piece of a video recording is taught at


def check_train_args(data, out, arch: str, epochs: int, lookahead: int, name: str | None, base: str):
    """Everything `train` can know is wrong before it trains: the arguments, the output folder, the whole
    dataset. Returns (items, base model spec)."""
    from actstream.views.outputs import check_output_folder

    if arch not in ARCHS:
        raise ConfigError(f"--arch {arch!r} unknown: expected one of {', '.join(ARCHS)}")
    if not 1 <= epochs <= MAX_EPOCHS:
        raise ConfigError(f"--epochs {epochs} out of range: expected 1 to {MAX_EPOCHS}")
    if arch == "bilstm" and not 1 <= lookahead <= MAX_LOOKAHEAD:
        raise ConfigError(f"--lookahead {lookahead} out of range for bilstm: expected 1 to {MAX_LOOKAHEAD} steps")
    model_name = name if name is not None else Path(out).name
    if not model_name or len(model_name) > 64 or not all(c.isalnum() or c in "-_." for c in model_name):
        raise ConfigError(f"model name {model_name[:80]!r} is not usable: pass --name with 1 to 64 letters, "
                          f"digits, '.', '-' or '_'")
    check_output_folder("--out", out)
    out_real = Path(out).resolve()
    data_path = Path(data)
    if out_real == data_path.resolve():
        raise ConfigError(f"--out {shown_path(out)}: is the dataset folder {shown_path(data)}: write the model to a "
                          f"folder of its own")
    items = read_dataset(data)
    for folder in sorted({i.path.parent for i in items}):
        if out_real == folder.resolve():
            item = next(i for i in items if i.path.parent == folder)
            raise ConfigError(f"--out {shown_path(out)}: holds the recording {shown_path(item.path)}: write the model "
                              f"to a folder of its own, outside the dataset")
    _probe_tracks(items, arch)
    base_spec = load_spec(base)
    if base_spec.folder is not None and out_real == base_spec.folder.resolve():
        raise ConfigError(f"--out {shown_path(out)}: is the folder of --base {shown_path(base)}, whose audio CNN this "
                          f"model reuses: write the new model to another folder")
    return items, base_spec


def train_folder(data: str | Path, out: str | Path, arch: str = "video_lstm", seed: int = 0, epochs: int = 30,
                 base: str = "default", name: str | None = None, lookahead: int = 10, progress=None,
                 step_ms: int = DEFAULT_STEP_MS, mirror: str = "auto", looks: int | None = None) -> dict:
    """Train a model for the classes of a dataset folder or manifest; returns its model card."""
    t0 = time.time()
    if mirror not in MIRROR:
        raise ConfigError(f"--mirror {mirror!r}: expected one of {', '.join(MIRROR)}")
    looks = LOOKS if looks is None else looks
    if not 0 <= looks <= MAX_LOOKS:
        raise ConfigError(f"--looks {looks}: expected 0 to {MAX_LOOKS} other looks per recording")
    if not (isinstance(step_ms, int) and 10 <= step_ms <= 2000 and step_ms % 10 == 0):
        raise ConfigError(f"--step-ms {step_ms}: expected a multiple of 10 from 10 to 2000 ms")
    items, base_spec = check_train_args(data, out, arch, epochs, lookahead, name, base)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    classes = sorted({i.label for i in items})
    uses_audio = "audio" in ARCHS[arch]
    spec = ModelSpec(name=name or Path(out).name, arch=arch, heads={"activity": classes},
                     audio=base_spec.audio if uses_audio else None,
                     video=VideoFeatures() if "video" in ARCHS[arch] else None,
                     lookahead=lookahead if arch == "bilstm" else 0, motion="video" in ARCHS[arch],
                     flow=FlowFeatures() if "video" in ARCHS[arch] else None, step_ms=step_ms,
                     folder=base_spec.folder)
    looks = looks if spec.video is not None else 0  # a look is of the picture
    engines = open_engines(spec, "onnxruntime")
    for encoder in engines.encoders.values():  # the base model's encoders; its temporal network is not this one's
        encoder.load()
    try:
        embs = []
        for n, item in enumerate(items):
            embs.append([item_embeddings(item, spec, engines)])
            if progress:
                progress("embeddings", n + 1, len(items))
        mirrored, mirror_why = choose_mirror(mirror, spec, items, [v[0] for v in embs])
        # the other views of each recording, as (flip, look): mirrored, and the other looks (mirrored at every
        # other look, where mirroring is taught)
        views = [(True, 0)] * mirrored + [(mirrored and k % 2 == 0, k) for k in range(1, looks + 1)]
        for n, item in enumerate(items if views else []):
            embs[n] += [item_embeddings(item, spec, engines, flip=flip, look=look) for flip, look in views]
            if progress:
                progress("mirrored and other looks", n + 1, len(items))
    finally:
        engines.close()
    held = _split_groups(items, rng)
    va = [k for k, i in enumerate(items) if i.group in held]
    labels = np.array([classes.index(i.label) for i in items])
    seq, batch = 60, 16

    def by_class(keys: list[int]) -> list[list[int]]:
        """The recordings of each class among keys, classes without any left out."""
        return [ks for ks in ([k for k in keys if labels[k] == c] for c in range(len(classes))) if ks]

    tr = [k for k, i in enumerate(items) if i.group not in held]
    pool = by_class(tr)  # `sample` draws from this: rebound to every recording for the refit

    def sample(rng):
        """Sequences of random pieces of training recordings (teach_pieces)."""
        xs = {m: np.zeros((batch, seq, d), np.float32) for m, d in cached_dims(spec).items()}
        ys = np.zeros((batch, seq), np.int64)
        for b in range(batch):
            teach_pieces(rng, spec, pool, embs, labels, xs, ys, b)
        return {m: torch.from_numpy(x) for m, x in motion_features(spec, xs).items()}, {"activity": torch.from_numpy(ys)}

    def validate(temporal):
        right = total = 0
        with torch.inference_mode():
            for k in va:
                v = motion_features(spec, {m: e[None] for m, e in embs[k][0].items()})
                h0, c0 = temporal.zero_state(1)
                lg, _, _ = temporal.logits({m: torch.from_numpy(v[m]) for m in spec.dims}, h0, c0)
                pred = lg["activity"][0].argmax(-1).numpy()
                right += int((pred == labels[k]).sum())
                total += len(pred)
        acc = right / max(1, total)
        return acc, {"validation_step_accuracy": round(acc, 4)}

    temporal = spec.new_temporal(MODALITY_DROPOUT)
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
        pool = by_class(tr)
        temporal = spec.new_temporal(MODALITY_DROPOUT)
        fit_temporal(temporal, sample, None, {"activity": class_weights(labels, len(classes))},
                     epochs=max(5, metrics["epoch"]), steps_per_epoch=20, rng=rng)
        metrics["refit_on_all_epochs"] = max(5, metrics["epoch"])
    audio_cnn = load_torch_modules(base_spec)[0] if uses_audio else None
    card = {"version": 1, "trained": datetime.date.today().isoformat(), "seed": seed,
            "data": str(data), "classes": classes, "recordings": len(items),
            "split": {"train_groups": sorted({items[k].group for k in tr}),
                      "validation_groups": sorted(held) or "none (too few groups per class: trained a fixed "
                                                           "number of epochs)"},
            "mirrored": mirror_why,
            "other_looks": looks,
            "metrics": metrics, "encoders": f"frozen: {'audio CNN of ' + base_spec.tag if uses_audio else ''}"
                                            f"{' + ' if uses_audio and spec.video else ''}"
                                            f"{'EfficientNet-Lite0 (ImageNet)' if spec.video else ''}",
            "train_seconds": round(time.time() - t0, 1),
            "command": f"actstream train {data} --arch {arch} --out {out} --seed {seed}"}
    final = dataclasses.replace(spec, card=card, folder=None)
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
