"""`actstream serve`: one process, many streams, one model.

The model's engines are opened once; every stream (a camera, a microphone, both, or a recording paced on the
wall clock, optionally looped) gets its own state, its own topics (`HEAD/ID/`, `status/ID/`) and its own
status, and the tick scheduler batches the streams that are ready at each step through each encoder and the
LSTM. Streams are added and removed while it runs through the control endpoint (stream/control.py); a
stream whose source fails is that stream's problem, retried with back-off for devices and URLs. The process's
own `status` (every second) names its streams and says how its ticks kept up.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from actstream.common.errors import ConfigError, SourceError
from actstream.stream.config import Config
from actstream.stream.streamsfile import StreamSpec, stream_spec
from actstream.common.closing import close_parts

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    """publish: the bus endpoint (None: no bus); out: a JSON-lines file of every message; seconds: stop after
    this long (0: until stopped); control: the control endpoint (None: none); listeners: callables that get
    every message (tests, the cluster's shard actors)."""

    publish: str | None
    out: str | None = None
    seconds: float = 0.0
    control: str | None = None
    listeners: tuple = ()


def make_source(spec: StreamSpec, model, cfg: Config):
    """The Source a stream spec describes, not yet started. model: the ModelSpec (what it reads)."""
    from actstream.stream.sources import FileSource, LiveSource, LoopingSource

    audio = model.audio
    rate, window = (audio.sample_rate, audio.window_samples) if audio else (16000, 1)
    use_audio, use_video = "audio" in model.modalities, "video" in model.modalities
    if spec.file is not None:
        def open_file():
            return FileSource(spec.file, spec.audio, sample_rate=rate, window_samples=window, use_audio=use_audio,
                              use_video=use_video, min_seconds=model.step_ms / 1000.0)

        source = LoopingSource(open_file) if spec.loop else open_file()
        if not ((use_audio and source.has_audio_track) or (use_video and source.has_video_track)):
            source.close()
            raise SourceError(f"{spec.file}: has none of what model {model.name} reads "
                              f"({' or '.join(model.modalities)})")
        return source
    camera = spec.camera if spec.camera is not None and use_video else "none"
    mic = spec.mic if spec.mic is not None and use_audio else "none"
    if camera == "none" and mic == "none":
        raise SourceError(f"stream {spec.id}: model {model.name} reads {' and '.join(model.modalities)}, and the "
                          f"stream gives none of it")
    live = cfg.live
    return LiveSource(camera, mic, rate, window, live.frame_ring, live.audio_ring_s, live.audio_block_ms, live.stall_s)


class Server:
    """A running many-stream process: model, publisher, scheduler and control endpoint. Build it, add streams,
    run() until stop is set; close() shuts down in order."""

    def __init__(self, cfg: Config, opts: ServeOptions, stop: threading.Event | None = None):
        from actstream.stream.pipeline import open_model
        from actstream.stream.publish import Publisher
        from actstream.stream.scheduler import Scheduler

        self.cfg = cfg
        self.publisher = self.control = None
        self.spec, step_ms, self.engines, self.policy = open_model(cfg, spin=False)
        try:
            if not self.spec.causal:
                raise ConfigError(f"model {self.spec.name} is a {self.spec.arch}: it looks ahead in time and cannot "
                                  f"serve live streams; use `actstream replay` or a causal model")
            self.publisher = Publisher(opts.publish, opts.out, "serve", self.spec.tag, cfg.publish.hwm,
                                       keys=cfg.publish.keys or None, insecure=cfg.publish.insecure,
                                       max_peers=cfg.publish.max_peers)
            self.publisher.listeners.extend(opts.listeners)
            self.scheduler = Scheduler(self.policy, self.publisher, step_ms, True, cfg.publish.status_every_ms / 1000.0,
                                       backend=cfg.model.backend, isolate=True, process_status=True,
                                       max_streams=cfg.serve.max_streams, keep_running=True)
            if stop is not None:
                self.scheduler.stop_event = stop
            if opts.control:
                from actstream.stream.control import ControlServer

                self.control = ControlServer(opts.control, self._handle, keys=cfg.publish.keys or None,
                                             insecure=cfg.publish.insecure, max_peers=cfg.publish.max_peers)
        except Exception:
            self.close()
            raise
        self.seconds = opts.seconds

    def add(self, spec: StreamSpec) -> None:
        """A stream joins: opened off the tick's thread, it starts at the tick after it opens."""
        from actstream.stream.publish import Channel
        from actstream.stream.streams import Stream

        source_name = Path(spec.file).name if spec.file else "live:" + "+".join(
            x for x in (f"camera={spec.camera}" if spec.camera else "", f"mic={spec.mic}" if spec.mic else "") if x)
        stream = Stream(spec.id, self.policy.new_state(), Channel(self.publisher, spec.id, source_name),
                        open_source=lambda: make_source(spec, self.spec, self.cfg), retry=spec.retry,
                        spec=spec.to_dict())
        self.scheduler.add(stream)

    def _handle(self, req: dict) -> dict:
        """A control request (stream/control.py), answered from the control thread."""
        op = req["op"]
        if op == "list":
            return {"streams": self.scheduler.streams()}
        if op == "add":
            spec = stream_spec(req.get("stream"), "control add", Path.cwd())
            self.add(spec)
            return {"id": spec.id}
        if op == "remove":
            sid = req.get("id")
            if not isinstance(sid, str) or not self.scheduler.remove(sid):
                raise ConfigError(f"no stream {sid!r} here: `actstream streams list` names them")
            return {"id": sid}
        raise ConfigError(f"unknown op {op!r}: expected list, add or remove")

    def run(self) -> dict:
        """Tick until stopped (or `seconds`); per stream its summary."""
        if self.seconds:
            timer = threading.Timer(self.seconds, self.scheduler.stop_event.set)
            timer.daemon = True
            timer.start()
        if self.publisher.endpoint:
            log.info("serving on %s%s", self.publisher.endpoint,
                     f", control on {self.control.endpoint}" if self.control else "")
        try:
            return self.scheduler.run()
        finally:
            self.scheduler.publish_process_status("end")

    def close(self) -> None:
        close_parts(self, "control", "publisher", "engines")
