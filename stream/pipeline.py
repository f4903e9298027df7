"""One run, built from (config, source, options): the model's engines, its recognizer and label policy, the
publisher and its listeners (metrics, overlay window), the scheduler with the run's one stream; run until the
end or until stopped, then shut down in order. The CLI only parses arguments, installs the signal handlers and
calls `run_pipeline`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actstream.stream.config import Config
from actstream.common.errors import PublishError, SourceError

if TYPE_CHECKING:  # numpy is first imported after the CLI has set its thread variables (cli.main)
    from actstream.stream.scheduler import RunSummary
    from actstream.stream.steps import Source

log = logging.getLogger("actstream")


@dataclass
class RunOptions:
    """publish: endpoint or None; out: a JSONL file of every message; realtime: pace on the wall clock;
    max_seconds: stop after this much stream time (0: the end); virtual_epoch: Unix time of t = 0 on the
    virtual clock; wait_subscriber_s: hold the start until a subscriber is there; lookahead: a BiLSTM's
    look-ahead steps (None: the model's); show: steps keep their frames for an overlay window (which the
    caller makes: listeners and on_step); metrics_port: a Prometheus endpoint; collect: a list that receives
    every message; listeners: more callables that receive every message; on_step: callable(stop_event) ->
    callable(Snapshot), called after each step's labels are published (the overlay window draws the frame)."""

    publish: str | None
    out: str | None
    realtime: bool
    max_seconds: float = 0.0
    virtual_epoch: float = 0.0
    wait_subscriber_s: float = 0.0
    lookahead: int | None = None
    show: bool = False
    metrics_port: int | None = None
    collect: list | None = None
    listeners: tuple = ()
    on_step: object = None


def inference_threads(cfg: Config, spec, batched: bool) -> int:
    """Intra-op threads for the CPU backends: the config's, or where it says 0 (one per core) and the replay
    is batched over an audio-only model, one core fewer: the encoders are small and the decoding thread needs
    a core of its own (measured on 2 cores: 555x real time with 1 inference thread, 440x with 2)."""
    threads = cfg.model.threads
    if threads == 0 and batched and "video" not in spec.modalities:
        threads = max(1, (os.cpu_count() or 1) - 1)
    return threads


def open_model(cfg: Config, lookahead: int | None = None, batched: bool = False, spin: bool | None = None):
    """The process's model: its spec, step, engines (loaded) and label policy over its recognizer, shared by
    every stream the process runs. batched: fast replay's encoders run in batches (the worker threads need
    the cores between runs: ONNX Runtime's idle threads do not spin); live: step by step, the small networks
    run on one thread (each ONNX Runtime session has its own pool, and the audio CNN's and the LSTM's pools
    spinning after their runs took the cores from the video CNN: bench live p99 of the default model on 2
    cores 30-37 ms with 2 threads each, 14-20 ms so). spin: let idle ONNX Runtime threads spin-wait (default:
    step by step only; a many-stream process passes False, its reader threads need the cores between runs)."""
    from actstream.engines.bundle import load_spec, open_engines

    from actstream.stream.policy import LabelPolicy
    from actstream.stream.recognizer import recognizer_for

    spec = load_spec(cfg.model.path)
    step_ms = cfg.step.resolve(spec.step_ms, spec.name)
    small = 1 if not batched and cfg.model.threads == 0 else 0
    engines = open_engines(spec, cfg.model.backend, inference_threads(cfg, spec, batched), cfg.model.precision,
                           spin=not batched if spin is None else spin, small_threads=small)
    try:
        engines.load()
        policy = LabelPolicy(recognizer_for(spec, engines, step_ms, lookahead), cfg.policy)
    except Exception:
        engines.close()
        raise
    return spec, step_ms, engines, policy


def check_modalities(spec, has_audio: bool, has_video: bool, what: str) -> None:
    """SourceError unless an input with these tracks gives the model something to label (each head of a model
    that knows its heads' inputs needs its own; any other model needs all of its modalities)."""
    if spec.head_inputs is not None:  # each head publishes where its input is: one head with input is enough
        have = {m for m, ok in (("audio", has_audio), ("video", has_video)) if ok}
        if not any(set(need) <= have for need in spec.head_inputs.values()):
            raise SourceError(f"{what}: has no {' and no '.join(spec.modalities)}, and every head of model "
                              f"{spec.name} needs one: pass a recording or devices with "
                              f"{' or '.join(spec.modalities)}")
        return
    if "audio" in spec.modalities and not has_audio:
        raise SourceError(f"{what}: has no audio, but model {spec.name} ({spec.arch}) needs audio: "
                          f"pass --audio FILE (replay) or a microphone, or use a video model")
    if "video" in spec.modalities and not has_video:
        raise SourceError(f"{what}: has no video, but model {spec.name} ({spec.arch}) needs video: "
                          f"pass a file with video or a camera, or use an audio model")


def run_pipeline(cfg: Config, source: Source, opts: RunOptions, stop: threading.Event | None = None,
                 model: tuple | None = None) -> RunSummary:
    """Wire one source to the model and the publisher, run until the end or until `stop` is set (the CLI sets
    it on SIGINT/SIGTERM), shut down in order. The run is the scheduler's with one stream, on the bare topics.
    model: open_model's result to run on and leave open (a batch worker's, one model for many recordings; the
    run's stream gets a state of its own); None: the model is opened for this run and closed after it."""
    from actstream.engines.bundle import load_spec

    from actstream.stream.publish import Channel, Publisher
    from actstream.stream.scheduler import Scheduler
    from actstream.stream.streams import Stream

    spec = load_spec(cfg.model.path) if model is None else model[0]
    # fast replay of a causal model runs its encoders in batches of steps, prepared on a reader thread
    batched = (not opts.realtime and not source.live and spec.causal and cfg.replay.batch_steps > 1
               and not opts.show)
    spec, step_ms, engines, policy = open_model(cfg, opts.lookahead, batched) if model is None else model
    publisher = metrics = None
    try:
        publisher = Publisher(opts.publish, opts.out, source.name, spec.tag, cfg.publish.hwm,
                              keys=cfg.publish.keys or None, insecure=cfg.publish.insecure,
                              max_peers=cfg.publish.max_peers)
        if opts.publish:
            log.info("publishing on %s", publisher.endpoint)
            if opts.wait_subscriber_s and not publisher.wait_for_subscriber(opts.wait_subscriber_s):
                log.warning("no subscriber after %.0f s; publishing anyway", opts.wait_subscriber_s)
        if opts.collect is not None:
            publisher.listeners.append(opts.collect.append)
        publisher.listeners.extend(opts.listeners)
        if opts.metrics_port is not None:
            from actstream.stream.metrics import Metrics

            metrics = Metrics(opts.metrics_port, model=spec.tag, backend=cfg.model.backend, source=source.name)
            publisher.listeners.append(metrics.listener(wall_clock=opts.realtime or source.live))
            log.warning("metrics on http://127.0.0.1:%d/metrics", metrics.port)
        source.start()
        scheduler = Scheduler(policy, publisher, step_ms, opts.realtime or source.live,
                              cfg.publish.status_every_ms / 1000.0, opts.max_seconds, opts.virtual_epoch,
                              cfg.model.backend, batch_steps=cfg.replay.batch_steps if batched else 1)
        if stop is not None:
            scheduler.stop_event = stop
        state = policy.recognizer.state if model is None else policy.new_state()
        stream = Stream(None, state, Channel(publisher), source, keep_frames=opts.show)
        if opts.on_step is not None:
            draw = opts.on_step(scheduler.stop_event)
            scheduler.on_step = lambda _stream, snap: draw(snap)
        scheduler.add(stream)
        return scheduler.run()[None]
    finally:
        source.close()
        if metrics is not None:
            metrics.close()
        if publisher is not None:
            publisher.close()
        if model is None:
            engines.close()
        if publisher is not None and publisher.out_error and sys.exc_info()[0] is None:
            raise PublishError(publisher.out_error)  # the run finished; its --out file is incomplete


def replay_many(policy, sources: dict, step_ms: int, batch_steps: int = 32) -> dict[str, list[dict]]:
    """Recordings (id -> an open Source) as streams of one scheduler on the virtual clock, their encoders and
    LSTM rows batched together: per id, the messages replay publishes for that recording alone (on the
    `HEAD/ID/` topics, with `stream` and `head`), in order. Evaluation judges many clips this way."""
    from actstream.stream.publish import Channel, Publisher
    from actstream.stream.scheduler import Scheduler
    from actstream.stream.streams import Stream

    spec = policy.recognizer.spec
    publisher = Publisher(None, None, "replay_many", spec.tag)
    got: dict[str, list[dict]] = {sid: [] for sid in sources}
    publisher.listeners.append(lambda m: got[m["stream"]].append(m) if m.get("stream") in got else None)
    scheduler = Scheduler(policy, publisher, step_ms, False, batch_steps=batch_steps)
    try:
        for sid, source in sources.items():
            scheduler.add(Stream(sid, policy.new_state(), Channel(publisher, sid, source.name), source))
        scheduler.run()
    finally:
        publisher.close()
    return got
