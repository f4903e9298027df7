"""Configuration: `config.toml` read with tomllib into one frozen dataclass per section.

Every key has its default here, and the repository's `config.toml` lists the same defaults (a test keeps
the two equal). The CLI overrides a few fields with `dataclasses.replace`; it does not duplicate them.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actstream.common.errors import ConfigError
from actstream.common.files import is_int, is_number, read_small_text, show_value, shown_path

BACKENDS = ("onnxruntime", "torch", "torch-cuda", "tensorrt")
PRECISIONS = ("auto", "fp32", "int8")


MAX_CONFIG_BYTES = 1 << 20  # config.toml is 2.6 KB; a megabyte is already no hand-written config


def _name(key: str) -> str:
    """A section or key name for a message: as written when it is a plain short name, else quoted."""
    return key if key.isidentifier() and len(key) <= 40 else show_value(key, 40)


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {show_value(value)} is invalid: expected {allowed}")


def _text(v: Any) -> bool:
    """A string that can be a path, URL or device name: short, no NUL or line breaks."""
    return isinstance(v, str) and len(v) <= 4096 and not any(c in v for c in "\x00\n\r")


@dataclass(frozen=True)
class StepConfig:
    """step_ms: step length in milliseconds; labels are produced once per step. 0: the step the model was
    trained at (its model.json); any other value must equal it (`resolve`)."""

    step_ms: int = 0

    def __post_init__(self) -> None:
        _check(is_int(self.step_ms) and (self.step_ms == 0 or 10 <= self.step_ms <= 2000 and self.step_ms % 10 == 0),
               "step.step_ms", self.step_ms, "0 (the model's step) or a multiple of 10 between 10 and 2000")

    def resolve(self, model_step_ms: int, model: str) -> int:
        """The step to run a model at: its own. A config that names another is refused: an LSTM taught at one
        rate and fed at another sees time run faster or slower, and its labels mean nothing."""
        if self.step_ms and self.step_ms != model_step_ms:
            raise ConfigError(f"step.step_ms = {self.step_ms}, but model {model} was trained at {model_step_ms} ms "
                              f"steps: leave step_ms at 0 (the model's step) or train a model at {self.step_ms} ms "
                              f"(actstream train --step-ms {self.step_ms})")
        return model_step_ms


@dataclass(frozen=True)
class ModelConfig:
    """path: a shipped model name (e.g. "default") or a model folder; backend: onnxruntime | torch |
    torch-cuda | tensorrt; threads: intra-op threads for the CPU backends (0 = one per core); precision:
    auto | fp32 | int8 for the encoders (auto: INT8 only where `actstream calibrate` passed its accuracy gate)."""

    path: str = "default"
    backend: str = "onnxruntime"
    threads: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        _check(_text(self.path) and self.path != "", "model.path", self.path, "a model name or folder")
        _check(self.backend in BACKENDS, "model.backend", self.backend, " | ".join(BACKENDS))
        _check(is_int(self.threads) and 0 <= self.threads <= 256, "model.threads", self.threads,
               "an integer from 0 (one per core) to 256")
        _check(self.precision in PRECISIONS, "model.precision", self.precision, " | ".join(PRECISIONS))


@dataclass(frozen=True)
class PolicyConfig:
    """How probabilities become labels.

    smoothing: weight of the newest step in the exponential moving average (1.0 = no smoothing);
    enter: smoothed probability a new label needs before it can take over;
    exit: the current label is kept while its smoothed probability stays at or above this;
    switch_steps: consecutive steps a new label must win before it takes over;
    min_hold_ms: shortest time a label is held once shown, in milliseconds.
    """

    smoothing: float = 0.8
    enter: float = 0.5
    exit: float = 0.4
    switch_steps: int = 1
    min_hold_ms: int = 0

    def __post_init__(self) -> None:
        _check(is_number(self.smoothing) and 0.0 < self.smoothing <= 1.0, "policy.smoothing",
               self.smoothing, "a number in (0, 1]")
        _check(is_number(self.enter) and 0.0 <= self.enter <= 1.0, "policy.enter", self.enter,
               "a probability in [0, 1]")
        _check(is_number(self.exit) and 0.0 <= self.exit <= self.enter, "policy.exit", self.exit,
               f"a probability in [0, policy.enter = {self.enter}]")
        _check(is_int(self.switch_steps) and 1 <= self.switch_steps <= 100, "policy.switch_steps",
               self.switch_steps, "an integer from 1 to 100")
        _check(is_int(self.min_hold_ms) and 0 <= self.min_hold_ms <= 60000, "policy.min_hold_ms",
               self.min_hold_ms, "milliseconds from 0 to 60000")


@dataclass(frozen=True)
class PublishConfig:
    """endpoint: ZeroMQ PUB bind address; hwm: send high-water mark in messages per subscriber;
    status_every_ms: interval between `status` messages, in milliseconds of media time;
    keys: CURVE keys folder from `actstream keys` ("" = no encryption; required off loopback);
    insecure: allow a non-loopback endpoint without keys (warns; never the default);
    max_peers: connections the bus (and serve's control endpoint) holds at once, each; 0 = 256, or fewer when
    the open-file limit read at start (ulimit -n) leaves less room (stream/peers.py)."""

    endpoint: str = "tcp://127.0.0.1:5556"
    hwm: int = 1000
    status_every_ms: int = 1000
    keys: str = ""
    insecure: bool = False
    max_peers: int = 0

    def __post_init__(self) -> None:
        _check(_text(self.endpoint) and "://" in self.endpoint, "publish.endpoint", self.endpoint,
               "a ZeroMQ endpoint such as tcp://127.0.0.1:5556, or \"none\" to disable")
        _check(is_int(self.hwm) and 1 <= self.hwm <= 10_000_000, "publish.hwm", self.hwm,
               "an integer from 1 to 10000000")
        _check(is_int(self.status_every_ms) and 100 <= self.status_every_ms <= 3_600_000,
               "publish.status_every_ms", self.status_every_ms, "milliseconds from 100 to 3600000")
        _check(_text(self.keys), "publish.keys", self.keys, "a keys folder made by `actstream keys`, or \"\"")
        _check(isinstance(self.insecure, bool), "publish.insecure", self.insecure, "true or false")
        _check(is_int(self.max_peers) and 0 <= self.max_peers <= 65536, "publish.max_peers", self.max_peers,
               "an integer from 0 (chosen from the open-file limit) to 65536")


@dataclass(frozen=True)
class ReplayConfig:
    """realtime: pace replay on the wall clock (true) or run as fast as possible on a virtual clock (false);
    batch_steps: in fast replay, steps whose encoders run as one batch while the next batch is decoded
    (1 = step by step, as live)."""

    realtime: bool = False
    batch_steps: int = 32

    def __post_init__(self) -> None:
        _check(isinstance(self.realtime, bool), "replay.realtime", self.realtime, "true or false")
        _check(is_int(self.batch_steps) and 1 <= self.batch_steps <= 64, "replay.batch_steps",
               self.batch_steps, "an integer from 1 (step by step) to 64")


@dataclass(frozen=True)
class LiveConfig:
    """camera: index, name or URL, or "none"; mic: index, name or "default", or "none";
    seconds: stop after this many seconds (0 = run until stopped); frame_ring: frames kept;
    audio_ring_s: seconds of audio kept; audio_block_ms: microphone callback block length;
    stall_s: a device that gives nothing for this many seconds is reconnected (with backoff)."""

    camera: str = "0"
    mic: str = "default"
    seconds: float = 0.0
    frame_ring: int = 8
    audio_ring_s: float = 5.0
    audio_block_ms: int = 20
    stall_s: float = 2.0

    def __post_init__(self) -> None:
        _check(_text(self.camera) and self.camera != "", "live.camera", self.camera,
               "a camera index, name, URL or \"none\"")
        _check(_text(self.mic) and self.mic != "", "live.mic", self.mic,
               "a microphone index, name, \"default\" or \"none\"")
        _check(is_number(self.seconds) and 0 <= self.seconds <= 1e9, "live.seconds", self.seconds,
               "seconds from 0 (until stopped) to 1e9")
        _check(is_int(self.frame_ring) and 2 <= self.frame_ring <= 1000, "live.frame_ring",
               self.frame_ring, "an integer from 2 to 1000")
        _check(is_number(self.audio_ring_s) and 2.0 <= self.audio_ring_s <= 600, "live.audio_ring_s",
               self.audio_ring_s, "seconds from 2 to 600")
        _check(is_int(self.audio_block_ms) and 5 <= self.audio_block_ms <= 200, "live.audio_block_ms",
               self.audio_block_ms, "milliseconds from 5 to 200")
        _check(is_number(self.stall_s) and 0.2 <= self.stall_s <= 60, "live.stall_s", self.stall_s,
               "seconds from 0.2 to 60")


@dataclass(frozen=True)
class ServeConfig:
    """control: the control endpoint of `actstream serve` (streams added and removed while it runs; loopback,
    or CURVE-secured with publish.keys like the bus), "none" for none; max_streams: the most streams one
    process serves (more are refused with a message)."""

    control: str = "tcp://127.0.0.1:5557"
    max_streams: int = 32

    def __post_init__(self) -> None:
        _check(_text(self.control) and ("://" in self.control or self.control == "none"), "serve.control",
               self.control, "a ZeroMQ endpoint such as tcp://127.0.0.1:5557, or \"none\"")
        _check(is_int(self.max_streams) and 1 <= self.max_streams <= 4096, "serve.max_streams", self.max_streams,
               "an integer from 1 to 4096")


@dataclass(frozen=True)
class Config:
    step: StepConfig = field(default_factory=StepConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def override(self, section: str, **values: Any) -> "Config":
        """A copy with some fields of one section replaced (None values are ignored)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config; keys it leaves out keep their defaults. None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    fix = "pass a TOML file such as the repository's config.toml to --config"
    text = read_small_text(path, MAX_CONFIG_BYTES, "config file", fix=fix)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {shown_path(path)} is not valid TOML: {exc}") from exc
    except RecursionError as exc:  # arrays or inline tables nested thousands deep
        raise ConfigError(f"config file {shown_path(path)} nests arrays or tables too deeply to read: {fix}") from exc
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    sections = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{shown_path(source)}: unknown section [{_name(name)}]: expected one of "
                              f"{', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{shown_path(source)}: [{name}] must be a table of keys, got {show_value(value)}")
        cls = _SECTIONS[name]
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, v in value.items():
            if key not in known:
                raise ConfigError(f"{shown_path(source)}: unknown key {name}.{_name(key)}: expected one of "
                                  f"{', '.join(known)}")
            if known[key].type == "float" and is_int(v) and abs(v) < 2 ** 53:  # larger: refused by the range check
                value[key] = float(v)
        try:
            sections[name] = cls(**value)
        except ConfigError as exc:  # name the file the bad value came from
            raise ConfigError(f"{shown_path(source)}: {exc}") from exc
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ConfigError(f"{shown_path(source)}: [{name}]: {exc}") from exc
    return Config(**sections)
