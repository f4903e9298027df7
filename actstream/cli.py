"""The `actstream` command: replay, live, listen, serve, batch, forward, devices, demo, train.

Only this module configures logging, installs signal handlers and exits; the library raises.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from actstream.stream.config import Config, load_config
from actstream.common.errors import ActstreamError, ConfigError, PublishError, SourceError
from actstream.common.files import escaped, shown_path
from actstream.stream.pipeline import RunOptions, check_modalities, run_pipeline

log = logging.getLogger("actstream")


def _run(cfg: Config, source, opts: RunOptions):
    """run_pipeline with SIGINT and SIGTERM stopping the run cleanly (the last labels and an `end` status
    published, --out flushed): only the CLI installs signal handlers. --show adds the overlay window."""
    import dataclasses
    import signal
    import threading

    window = None
    if opts.show:  # the overlay window (views/overlay.py): fed every message, drawn at every step
        from actstream.views.overlay import Window

        window = Window(f"actstream - {source.name}")
        opts = dataclasses.replace(opts, listeners=(*opts.listeners, window.state.update), on_step=window.on_step)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_pipeline(cfg, source, opts, stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if window is not None:
            window.close()


def _print_summary(summary) -> None:
    stages = ", ".join(f"{k} {v:.3f}" for k, v in summary.stage_ms.items())
    print(f"actstream: {summary.steps} steps, {summary.media_s:.1f} s of media in {summary.elapsed_s:.2f} s "
          f"({summary.steps_per_s:.0f} steps/s, {summary.x_realtime:.1f}x real time); "
          f"ms per step: {stages}; drops {summary.drops}", file=sys.stderr)


def _apply_common(cfg: Config, args) -> Config:
    cfg = cfg.override("model", path=getattr(args, "model", None), backend=getattr(args, "backend", None),
                       threads=getattr(args, "threads", None), precision=getattr(args, "precision", None))
    cfg = cfg.override("publish", keys=getattr(args, "keys", None),
                       insecure=True if getattr(args, "insecure", False) else None)
    return cfg.override("step", step_ms=getattr(args, "step_ms", None))


def _endpoint(value: str | None, cfg: Config) -> str | None:
    value = value or cfg.publish.endpoint
    return None if value == "none" else value


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
ANNOTATE_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")


def _check_run_outputs(cfg: Config, spec, outputs: dict, inputs: dict) -> None:
    """Before any work: no output on an input (the media, --config, the model folder's files, the keys folder)
    or on another output, and every output writable (stream/outputs.py)."""
    from actstream.views.outputs import check_outputs, folder_inputs

    keys = cfg.publish.keys or None
    check_outputs(outputs, {**inputs, "a file of the model folder": folder_inputs(spec.folder),
                            "a file of the keys folder": folder_inputs(keys) + folder_inputs(keys and
                                                                                             Path(keys) / "clients")})


def _check_metrics_port(port: int | None) -> None:
    """--metrics-port checked before the engines load, not when the server starts."""
    if port is not None:
        from actstream.stream.metrics import check_port

        check_port(port)


def cmd_replay(args) -> int:
    from actstream.engines.bundle import load_spec

    from actstream.stream.sources import FileSource

    cfg = _apply_common(load_config(args.config), args)
    cfg = cfg.override("replay", realtime=True if args.realtime else None,
                       batch_steps=getattr(args, "batch_steps", None))
    spec = load_spec(cfg.model.path)
    step_ms = cfg.step.resolve(spec.step_ms, spec.name)
    if args.truth and not args.plot:
        raise ConfigError("--truth is drawn by --plot: pass --plot OUT.png too")
    _check_run_outputs(cfg, spec, {"--out": args.out, "--stats": getattr(args, "stats", None), "--plot": args.plot,
                                   "--annotate": args.annotate},
                       {"the replayed file": args.path, "--audio": args.audio, "--truth": args.truth,
                        "--config": args.config})
    _check_metrics_port(args.metrics_port)
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot {shown_path(args.plot)}: unknown picture format {Path(args.plot).suffix!r}: "
                          f"end the name with {', '.join(PLOT_SUFFIXES)}")
    if args.annotate and Path(args.annotate).suffix.lower() not in ANNOTATE_SUFFIXES:
        raise ConfigError(f"--annotate {shown_path(args.annotate)}: unknown video format "
                          f"{Path(args.annotate).suffix!r}: end the name with {', '.join(ANNOTATE_SUFFIXES)}")
    truth = None
    if args.truth:
        from actstream.views.plot import read_truth

        truth = read_truth(args.truth)  # all of it checked now, not after the run
    audio = spec.audio
    source = FileSource(args.path, args.audio, sample_rate=audio.sample_rate if audio else 16000,
                        window_samples=audio.window_samples if audio else 1,
                        use_audio="audio" in spec.modalities,
                        use_video="video" in spec.modalities or args.show,  # --show shows the picture anyway
                        min_seconds=step_ms / 1000.0)  # shorter than one step gives no label
    try:
        check_modalities(spec, source.has_audio_track, source.has_video_track, str(args.path))
        if args.annotate and not source.has_video_track:
            raise SourceError(f"{shown_path(args.path)}: has no video track to annotate: use --plot OUT.png for "
                              f"audio-only recordings")
    except ActstreamError:
        source.close()
        raise
    messages: list | None = [] if (args.plot or args.annotate) else None
    summary = _run(cfg, source, RunOptions(_endpoint(args.publish, cfg), args.out, cfg.replay.realtime,
                        virtual_epoch=source.creation_time, wait_subscriber_s=args.wait_subscriber,
                        lookahead=getattr(args, "lookahead", None), show=args.show, metrics_port=args.metrics_port,
                        collect=messages, listeners=_replay_progress(source.duration)))
    _print_summary(summary)
    if args.plot:
        from actstream.views.plot import plot_messages

        _written("--plot", args.plot, lambda: plot_messages(messages, args.plot, truth))
    if args.annotate:
        from actstream.views.overlay import annotate

        _written("--annotate", args.annotate, lambda: annotate(args.path, messages, args.annotate))
    if getattr(args, "stats", None):
        _written("--stats", args.stats, lambda: _write_stats(args.stats, summary))
    return 0


def _written(flag: str, path: str, write) -> None:
    """Run an output writer after the run; a disk that fills meanwhile is one line, not a traceback."""
    import av

    try:
        write()
    except (OSError, av.error.FFmpegError) as exc:
        raise PublishError(f"writing {flag} {shown_path(path)} failed ({getattr(exc, 'strerror', None) or exc}): free "
                           f"some space or choose another path") from exc


def _write_stats(path: str, summary) -> None:
    """The run's figures as JSON (read by `actstream bench`, which times the whole process around it)."""
    data = {"steps": summary.steps, "media_s": summary.media_s, "elapsed_s": summary.elapsed_s,
            "steps_per_s": summary.steps_per_s, "x_realtime": summary.x_realtime, "stage_ms": summary.stage_ms,
            "drops": summary.drops}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def cmd_live(args) -> int:
    from actstream.engines.bundle import load_spec

    from actstream.stream.sources import LiveSource

    cfg = _apply_common(load_config(args.config), args)
    cfg = cfg.override("live", camera=args.camera, mic=args.mic, seconds=args.seconds)
    spec = load_spec(cfg.model.path)
    cfg.step.resolve(spec.step_ms, spec.name)
    if not spec.causal:
        raise ConfigError(f"model {spec.name} is a {spec.arch}: it looks ahead in time and cannot run live; "
                          f"use `actstream replay` or a causal model")
    live = cfg.live
    # a device the model does not use is not opened
    camera = live.camera if "video" in spec.modalities or args.show else "none"
    mic = live.mic if "audio" in spec.modalities else "none"
    check_modalities(spec, mic != "none", camera != "none", "live input")
    _check_run_outputs(cfg, spec, {"--out": args.out},
                       {"--config": args.config, "--camera": camera if os.path.isfile(camera) else None})
    _check_metrics_port(args.metrics_port)
    audio = spec.audio
    source = LiveSource(camera, mic, audio.sample_rate if audio else 16000, audio.window_samples if audio else 1,
                        live.frame_ring, live.audio_ring_s, live.audio_block_ms, live.stall_s)
    summary = _run(cfg, source, RunOptions(_endpoint(args.publish, cfg), args.out, True,
                                                   max_seconds=live.seconds, show=args.show,
                                                   metrics_port=args.metrics_port))
    _print_summary(summary)
    return 0


def _num(x, spec: str = ".2f") -> str:
    """A number formatted, or '?' for what is not one (a message from another publisher may lack fields)."""
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "?"


def _format_text(msg: dict) -> str:
    t = _num(msg.get("t"), "8.2f")
    stream = f"{msg['stream']}  " if isinstance(msg.get("stream"), str) else ""  # a stream of `serve`
    topic = msg.get("head", msg.get("topic"))
    if topic == "status" and "streams" in msg:  # `serve`'s own status: its streams and ticks
        return (f"{t}s  status    {msg.get('state')}: {len(msg['streams'])} streams, {msg.get('ticks')} ticks, "
                f"late {msg.get('late_ticks')}, batch {msg.get('batch')}")
    if topic == "status":
        lat = msg.get("latency_ms")
        lat_s = f" latency p99 {_num(lat.get('p99'), '.1f')} ms" if isinstance(lat, dict) else ""
        return (f"{t}s  {stream}status    {msg.get('state')}: {msg.get('steps')} steps, "
                f"{_num(msg.get('steps_per_s', 0), '.1f')} steps/s, drops {msg.get('drops')}{lat_s}")
    scores = msg.get("scores")
    numeric = [(str(k), v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)] \
        if isinstance(scores, dict) else []
    top = sorted(numeric, key=lambda kv: -kv[1])[:3]
    others = "  ".join(f"{k} {v:.2f}" for k, v in top)
    return f"{t}s  {stream}{str(topic):<9} {str(msg.get('label')):<12} {_num(msg.get('score'))}   ({others})"


def _json_printable(text: str) -> str:
    """JSON text with every character that is not printable written as a JSON escape: json.dumps escapes the
    C0 controls but leaves DEL, the C1 controls (0x9b is a terminal's CSI), bidi overrides and lone
    surrogates raw. The value read back is the same."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif code > 0xFFFF:  # a surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def cmd_listen(args) -> int:
    import math

    import zmq

    from actstream.stream.client import SeqTracker, subscribe

    if args.timeout is not None and not (math.isfinite(args.timeout) and 0 < args.timeout <= 86400 * 365):
        raise ConfigError(f"--timeout {args.timeout}: not a usable time: pass seconds above 0 (or leave it out "
                          f"to wait forever)")
    if args.count < 0:
        raise ConfigError(f"--count {args.count}: cannot be negative: pass 0 for no limit")
    tracker = SeqTracker()
    n = 0
    ended = False
    try:
        for msg in subscribe(args.endpoint, topics=args.topic or None, timeout_s=args.timeout,
                             server_key=args.server_key, client_key=args.client_key, tracker=tracker,
                             streams=args.stream or None):
            # a publisher's strings reach a terminal: no control character, escape sequence or forged line
            line = (_json_printable(json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
                    if args.format == "json" else escaped(_format_text(msg)))
            print(line, flush=True)
            n += 1
            if args.count and n >= args.count:
                ended = True
                break
            if args.until_end and msg.get("topic") == "status" and msg.get("state") == "end":
                ended = True
                break
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot subscribe to {args.endpoint}: {exc.strerror}: expected an endpoint like "
                          f"tcp://127.0.0.1:5556") from exc
    except BrokenPipeError:
        return 0
    finally:
        if tracker.bad:
            log.warning("skipped %d bad message(s) (not [topic, JSON object]); printed %d", tracker.bad, n)
    if ended or (n and not args.count and not args.until_end):
        return 0  # the goal reached, or a timeout after messages that set no goal: how such a listen ends
    # --timeout passed without what was asked for: a health check must be able to fail (exit 1: unhealthy)
    topics = (f"topic{'s' if len(args.topic) > 1 else ''} {', '.join(args.topic)}" if args.topic else "all topics")
    goal = (f"{n} of the {args.count} message(s) asked for" if args.count and n
            else f"no end of stream after {n} message(s)" if args.until_end and n else "no message")
    again = f", {tracker.reconnects} reconnect(s)" if tracker.reconnects else ""
    print(escaped(f"actstream: error: {goal} from {args.endpoint} within {args.timeout:g} s ({topics}{again}): "
                  f"is a publisher running there?"), file=sys.stderr)
    return 1


def cmd_devices(args) -> int:
    from actstream.stream.devices import list_cameras, list_microphones

    print("microphones (sounddevice): --mic INDEX or a part of the name")
    try:
        mics = list_microphones()
    except (SourceError, OSError, RuntimeError) as exc:  # PortAudio missing or no host API: go on to cameras
        mics = []
        print(f"  none usable: {str(exc).splitlines()[0]}")
    else:
        if not mics:
            print("  none found")
    for d in mics:
        print(escaped(f"  {d.index}: {d.name} ({d.detail})"))  # names come from drivers and sound servers
    print("cameras (OpenCV): --camera INDEX, a part of the name, /dev/videoN or a URL")
    cams = list_cameras()
    if not cams:
        print("  none found; a URL (rtsp://, http://...) works with --camera too")
    for d in cams:
        print(escaped(f"  {d.index}: {d.name or '(no name)'} ({d.detail})"))
    return 0


def cmd_serve(args) -> int:
    import signal
    import threading

    from actstream.stream.serve import Server, ServeOptions
    from actstream.stream.streamsfile import check_unique, parse_stream_option, read_streams_file

    cfg = _apply_common(load_config(args.config), args)
    cfg = cfg.override("serve", control=args.control)
    if args.cluster:
        return _serve_cluster(args, cfg)
    cluster_only = [f for f, v in (("--address", args.address), ("--shards", args.shards), ("--inbound", args.inbound),
                                   ("--cpus-per-shard", args.cpus), ("--gpus-per-shard", args.gpus)) if v is not None]
    if cluster_only:
        raise ConfigError(f"{cluster_only[0]} goes with --cluster: pass --cluster to spread the streams over Ray")
    specs = read_streams_file(args.streams, cfg.serve.max_streams) if args.streams else []
    specs = check_unique(specs + [parse_stream_option(v) for v in args.stream or []], "the streams given")
    if len(specs) > cfg.serve.max_streams:
        raise ConfigError(f"{len(specs)} streams given, more than serve.max_streams = {cfg.serve.max_streams}: "
                          f"raise the limit in the config or split the streams over processes")
    if args.seconds is not None and not (0 < args.seconds <= 1e9):
        raise ConfigError(f"--seconds {args.seconds}: pass seconds above 0, or leave it out to run until stopped")
    from actstream.engines.bundle import load_spec

    spec = load_spec(cfg.model.path)
    _check_run_outputs(cfg, spec, {"--out": args.out}, {"--config": args.config, "the streams file": args.streams,
                                                        **{f"stream {s.id}": s.file for s in specs},
                                                        **{f"stream {s.id} audio": s.audio for s in specs}})
    control = None if cfg.serve.control == "none" else cfg.serve.control
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        server = Server(cfg, ServeOptions(_endpoint(args.publish, cfg), args.out, args.seconds or 0.0, control), stop)
        for s in specs:
            server.add(s)
        done = server.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if server is not None:
            server.close()
    steps = sum(r.steps for r in done.values())
    print(f"actstream: served {len(done)} stream(s), {steps} steps", file=sys.stderr)
    return 0


def _stop_on_signals():
    """An Event that SIGINT and SIGTERM set, and a function that puts the previous handlers back."""
    import signal
    import threading

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    return stop, lambda: [signal.signal(s, h) for s, h in previous.items()]


def _cluster_resources(what: str, count: int | None, cpus: float | None, gpus: float | None) -> tuple:
    """--workers/--shards, --cpus-per-*, --gpus-per-*: checked before anything starts."""
    import math

    if count is not None and not 0 <= count <= 10_000:
        raise ConfigError(f"--{what}s {count}: pass 1 to 10000, or 0 for as many as the cluster holds")
    for flag, v, low in ((f"--cpus-per-{what}", cpus, 0.0), (f"--gpus-per-{what}", gpus, 0.0)):
        if v is not None and not (math.isfinite(v) and low <= v <= 1024):
            raise ConfigError(f"{flag} {v}: pass a number from 0 to 1024 (fractions share a core or GPU)")
    return count or 0, 1.0 if cpus is None else cpus, gpus or 0.0


def _serve_cluster(args, cfg) -> int:
    from actstream.cluster.raynodes import check_address
    from actstream.cluster.serve import ClusterOptions, ClusterServer
    from actstream.stream.security import check_bind
    from actstream.stream.streamsfile import check_unique, parse_stream_option, read_streams_file

    specs = read_streams_file(args.streams, 100_000) if args.streams else []
    specs = check_unique(specs + [parse_stream_option(v) for v in args.stream or []], "the streams given")
    if args.out:
        raise ConfigError("--out is one process's file; with --cluster the messages meet at the forwarder: "
                          "`actstream listen ENDPOINT > FILE.jsonl` writes them")
    if args.seconds is not None and not (0 < args.seconds <= 1e9):
        raise ConfigError(f"--seconds {args.seconds}: pass seconds above 0, or leave it out to run until stopped")
    shards, cpus, gpus = _cluster_resources("shard", args.shards, args.cpus, args.gpus)
    publish = _endpoint(args.publish, cfg)
    if publish is None:
        raise ConfigError("--publish none: with --cluster the forwarder is where subscribers connect: give an endpoint")
    inbound = args.inbound or "tcp://127.0.0.1:5558"
    check_bind(inbound, cfg.publish.keys or None, cfg.publish.insecure)
    control = None if cfg.serve.control == "none" else cfg.serve.control
    opts = ClusterOptions(publish, inbound, control, check_address(args.address), shards, cpus, gpus,
                          args.seconds or 0.0)
    stop, restore = _stop_on_signals()
    server = None
    try:
        server = ClusterServer(cfg, opts, stop)
        for spec in specs:
            server.add(spec.to_dict())
        log.warning("serving %d stream(s) on %d shard(s); subscribers: %s%s", len(specs), len(server.shards),
                    server.forwarder.endpoint, f", control: {control}" if control else "")
        server.run()
    finally:
        restore()
        if server is not None:
            server.close()
    return 0


def cmd_forward(args) -> int:
    import math

    from actstream.stream.forward import Forwarder

    cfg = _apply_common(load_config(args.config), args)
    if args.seconds is not None and not (math.isfinite(args.seconds) and 0 < args.seconds <= 1e9):
        raise ConfigError(f"--seconds {args.seconds}: pass seconds above 0, or leave it out to run until stopped")
    stop, restore = _stop_on_signals()
    fwd = Forwarder(args.publish or cfg.publish.endpoint, args.inbound, cfg.publish.keys or None,
                    cfg.publish.insecure, cfg.publish.hwm)
    try:
        log.warning("forwarding what publishers send to %s on to subscribers of %s", fwd.inbound, fwd.endpoint)
        stop.wait(args.seconds)
    finally:
        restore()
        fwd.close()
    print(f"actstream: forwarded {fwd.passed} message(s), dropped {fwd.rejected} that were no label messages",
          file=sys.stderr)
    return 0


def cmd_batch(args) -> int:
    from actstream.cluster.batch import BatchOptions, run_batch
    from actstream.cluster.raynodes import check_address
    from actstream.cluster.recordings import MEDIA, check_job, find_recordings, job_settings, write_job
    from actstream.engines.bundle import load_spec
    from actstream.views.outputs import check_output_folder

    cfg = _apply_common(load_config(args.config), args)
    spec = load_spec(cfg.model.path)
    cfg.step.resolve(spec.step_ms, spec.name)
    address = check_address(args.address)
    workers, cpus, gpus = _cluster_resources("worker", args.workers, args.cpus, args.gpus)
    check_output_folder("--out", args.out)
    out = Path(args.out)
    recordings = find_recordings(args.data, args.root)
    if not recordings:
        raise ConfigError(f"{shown_path(args.data)} holds no recordings ({', '.join(sorted(MEDIA))}): pass a folder "
                          f"of them or a manifest")
    settings = job_settings(cfg, spec)
    check_job(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    stop, restore = _stop_on_signals()
    try:
        summary = run_batch(cfg, recordings, out, BatchOptions(address, workers, cpus, gpus), _batch_progress(),
                            stop)
    finally:
        restore()
    write_job(out, settings, summary.to_dict())
    for line in batch_report(summary):
        print(escaped(line))
    if stop.is_set():
        return 130
    return 1 if summary.failed else 0


def batch_report(summary) -> list[str]:
    """The summary of `actstream batch`, as printed: one line, then one per failed recording."""
    s = summary
    lines = [f"actstream batch: {s.recordings} recording(s): {s.labelled} labelled, {s.skipped} skipped (finished "
             f"before), {len(s.failed)} failed; {s.media_s / 3600:.3f} h of media in {s.wall_s / 3600:.4f} h "
             f"({s.media_hours_per_hour:.1f} h of media per hour) on {s.workers} worker(s)"
             + (f"; {s.retried} retried after a lost worker" if s.retried else "")]
    lines += [f"failed: {name}: {why}" for name, why in sorted(s.failed.items())]
    return lines


def _batch_progress():
    bar = _progress()
    if bar is None:
        return None
    return lambda ev: bar("batch (recordings)", ev["done"], ev["total"]) if ev["event"] != "start" else None


def cmd_streams(args) -> int:
    from actstream.stream.control import request
    from actstream.stream.streamsfile import parse_stream_option

    cfg = load_config(args.config)
    endpoint = args.control or cfg.serve.control
    if args.action == "add":
        if not args.id_or_source:
            raise ConfigError("streams add needs ID=SOURCE, e.g. door=http://10.0.0.7/cam.mjpg or lab=file:lab.mp4")
        req = {"op": "add", "stream": parse_stream_option(args.id_or_source).to_dict()}
    elif args.action == "remove":
        if not args.id_or_source:
            raise ConfigError("streams remove needs the stream's ID")
        req = {"op": "remove", "id": args.id_or_source}
    else:
        req = {"op": "list"}
    reply = request(endpoint, req, args.timeout, args.server_key, args.client_key)
    if not reply.get("ok"):
        raise ConfigError(f"{endpoint}: {reply.get('error', 'refused')}")
    if args.action == "list":
        for s in reply.get("streams", []):
            print(json.dumps(s, separators=(",", ":"), ensure_ascii=False))
    else:
        print(f"{args.action} {reply.get('id')}: ok")
    return 0


def cmd_keys(args) -> int:
    from actstream.stream.security import make_keys

    for path in make_keys(Path(args.dir), args.client or [], replace=args.replace):
        print(shown_path(path))
    return 0


def cmd_demo(args) -> int:
    from actstream.views.demo import make_demo_sample

    from actstream.views.outputs import check_output_folder, check_outputs

    out_dir = Path(args.dir)
    check_output_folder("--dir", out_dir)
    # the replay checks --out again; checked here too, so a bad one fails before the sample is made
    check_outputs({"--out": args.out}, {"the demo sample": str(out_dir / "demo.mp4"),
                                        "its truth file": str(out_dir / "demo.truth.csv"), "--config": args.config})
    sample = make_demo_sample(out_dir / "demo.mp4")
    endpoint = args.publish
    pace = "" if args.fast else " in real time"
    print(f"demo: made {shown_path(sample)} (synthesized speech, knocks and generated frames); replaying it{pace}, "
          f"publishing on {endpoint}; a subscriber process prints what it receives:", flush=True)
    listener = subprocess.Popen([sys.executable, "-m", "actstream.cli", "listen", endpoint, "--format", "text",
                                 "--until-end", "--timeout", "30"])
    try:
        argv = ["replay", str(sample), "--publish", endpoint, "--wait-subscriber", "10"]
        for flag, value in (("--out", args.out), ("--config", args.config), ("--model", args.model)):
            argv += [flag, value] if value else []
        rc = cmd_replay(build_parser().parse_args(argv + ([] if args.fast else ["--realtime"])))
        listener.wait(timeout=35)
    finally:
        if listener.poll() is None:
            listener.terminate()
    return rc or listener.returncode


def _progress():
    """A progress callback (stage, done, total) drawing a bar on a terminal, silent in pipes and CI."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, file=sys.stderr, leave=True))
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def cmd_calibrate(args) -> int:
    from actstream.calibration.calibrate import calibrate
    from actstream.calibration.gate import Margin

    cfg = _apply_common(load_config(args.config), args)
    margin = Margin(**{k: getattr(args, k) for k in ("min_label_agreement", "min_cosine", "max_metric_drop")
                       if getattr(args, k) is not None})
    data, held, encoders = args.data, args.held_out, args.encoders
    if len(data) == 1 and Path(data[0], "manifests").is_dir():  # the shared data folder: its training splits
        from actstream.training.train import video_calibration_sets

        if encoders not in (None, ["video"]) or held:
            raise ConfigError(f"{shown_path(data[0])} is the shared data folder: from it calibrate calibrates the "
                              f"video encoder (its training splits, gated on the action validation split); for "
                              f"--encoders audio or --held-out pass recordings and their truth files instead")
        calib, held = video_calibration_sets(Path(data[0]))
        data, encoders = [str(p) for p in calib], ["video"]
    record = calibrate(cfg.model.path, data, args.out, margin, cfg.model.threads, policy_cfg=cfg.policy,
                       encoders=encoders, held_out=held, max_files=args.max_files)
    for name, e in record["encoders"].items():
        sp = e["speed"]
        print(f"{name} encoder INT8: {'passed' if e['passed'] else 'REFUSED as default'} ({e['reason']}); "
              f"{sp['fp32_ms_batch1']:.3f} -> {sp['int8_ms_batch1']:.3f} ms per input at batch 1 "
              f"(x{sp['speedup_batch1']:.2f}), x{sp['speedup_batch32']:.2f} at batch 32")
    print(f"wrote {shown_path(record['folder'])}/int8.json and the INT8 encoders (*_encoder.int8.onnx, "
          f"*_encoder.trt.cache)")
    return 0


def cmd_build(args) -> int:
    from actstream.engines.build import build_all

    cfg = _apply_common(load_config(args.config), args)
    for path in build_all(cfg.model.path, "int8" if cfg.model.precision == "int8" else "fp16", progress=_progress()):
        print(f"engine: {shown_path(path)}")
    return 0


def cmd_bench(args) -> int:
    if args.streams:
        return _bench_streams(args)
    if args.batch:
        return _bench_batch(args)
    from actstream.bench.run import run_bench

    report = run_bench(quick=args.quick, video=args.video, json_out=args.json, device=args.device,
                       work=args.dir, seconds=args.seconds)
    print(report["table"])
    return 0


def _bench_streams(args) -> int:
    import tempfile

    from actstream.bench.streams import run_streams_bench, table

    try:
        counts = [int(x) for x in args.counts.split(",")] if args.counts else None
    except ValueError as exc:
        raise ConfigError(f"--counts {args.counts!r}: expected stream counts like 1,4,8,16") from exc
    if counts is not None and not all(1 <= c <= 256 for c in counts):
        raise ConfigError(f"--counts {args.counts!r}: each count from 1 to 256")
    seconds = args.seconds or 60.0
    with tempfile.TemporaryDirectory(prefix="actstream-bench-") as tmp:
        work = Path(args.dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run_streams_bench(work, counts=counts, seconds=seconds, json_out=args.json, png_out=args.png,
                                   progress=_progress())
    print(table(result))
    return 0


def _bench_batch(args) -> int:
    from actstream.bench.batch import run_batch_bench, table

    data = Path(args.data)
    if not (data / "manifests").is_dir():
        raise ConfigError(f"--data {shown_path(data)}: has no manifests/ folder: pass the shared data folder "
                          f"(../shared/data), whose test splits are relabelled")
    if args.limit is not None and not 1 <= args.limit <= 100_000:
        raise ConfigError(f"--limit {args.limit}: pass 1 to 100000 recordings, or leave it out for every one")
    try:
        counts = tuple(int(x) for x in args.counts.split(",")) if args.counts else (1000, 2000)
    except ValueError as exc:
        raise ConfigError(f"--counts {args.counts!r}: expected stream counts like 1000,2000") from exc
    if not all(1 <= c <= 100_000 for c in counts):
        raise ConfigError(f"--counts {args.counts!r}: each count from 1 to 100000")
    result = run_batch_bench(data, Path(args.dir) if args.dir else None, args.limit or 0, args.json, counts,
                             args.seconds or 20.0)
    print(table(result))
    return 0


def _replay_progress(duration: float | None) -> tuple:
    """A listener drawing replay progress (seconds of media) from status messages; none off a terminal."""
    bar = _progress()
    if bar is None or not duration:
        return ()
    total = int(duration)

    def on_message(msg: dict) -> None:
        if msg["topic"] == "status":
            bar("replay (s of media)", min(total, int(msg["t"])) if msg["state"] == "running" else total, total)

    return (on_message,)


def cmd_train(args) -> int:
    if args.recipe in ("default", "default-audio"):
        from actstream.training.train import train_default

        from actstream.views.outputs import check_output_folder

        if not Path(args.data, "manifests").is_dir():
            raise ConfigError(f"{shown_path(args.data)}: has no manifests/ folder: --recipe default trains from the "
                              f"shared data folder (../shared/data)")
        if args.recipe == "default-audio" and args.out is None:
            raise ConfigError("--out is required with --recipe default-audio: the folder to write the twin to")
        check_output_folder("--out", args.out or "engines/weights/default")
        if args.int8_video is not None and not Path(args.int8_video).is_file():
            raise ConfigError(f"--int8-video {shown_path(args.int8_video)}: not found: pass the "
                              f"video_encoder.int8.onnx that `actstream calibrate` wrote")
        card = train_default(Path(args.out or "engines/weights/default"), data_root=Path(args.data), seed=args.seed,
                             quick=args.quick, progress=_progress(), int8_video=args.int8_video,
                             audio_only=args.recipe == "default-audio")
    else:
        from actstream.training.teach import train_folder

        if args.out is None:
            raise ConfigError("--out is required: the folder to write the new model to (e.g. models/mine)")
        card = train_folder(args.data, args.out, arch=args.arch, seed=args.seed, epochs=args.epochs,
                            base=args.base, name=args.name, lookahead=args.lookahead, progress=_progress(),
                            step_ms=args.step_ms, mirror=args.mirror, looks=args.looks)
    print(json.dumps(card, indent=2))
    return 0


def cmd_record(args) -> int:
    from actstream.views.record import record

    cfg = load_config(args.config)
    rec = record(args.dataset, args.label, args.seconds, args.camera or cfg.live.camera,
                 args.mic or cfg.live.mic, stall_s=cfg.live.stall_s)
    print(f"actstream: {rec.summary()}", file=sys.stderr)
    print(shown_path(rec.path))
    return 0


def cmd_eval(args) -> int:
    from actstream.engines.bundle import load_spec
    from actstream.evaluation.errors import largest_source_line
    from actstream.evaluation.eval import evaluate_shared
    from actstream.evaluation.peers import check_peers, parse_peers
    from actstream.views.outputs import check_output_folder

    peers = parse_peers(args.compare)  # an unknown or missing peer is refused before any model loads
    check_peers(peers)
    cfg = load_config(args.config)
    spec = load_spec(args.model)
    if "speech" not in spec.heads and "video" in spec.modalities:
        from actstream.evaluation.video import evaluate_video

        check_output_folder("--out", args.out)
        report = evaluate_video(spec, Path(args.data), Path(args.out), backend=args.backend or
                                cfg.model.backend, progress=_progress(),
                                precision=args.precision or cfg.model.precision)
        print(json.dumps(report, indent=2))
        return 0
    report = evaluate_shared(args.model, Path(args.data), Path(args.out), peers, args.timelines,
                             args.seconds, backend=args.backend or cfg.model.backend, policy_cfg=cfg.policy,
                             progress=_progress(), against=args.against)
    if "video" in spec.modalities:  # a model that looks and listens (the default): its eyes too, in out/video/
        from actstream.evaluation.video import evaluate_video

        report["video"] = evaluate_video(spec, Path(args.data), Path(args.out) / "video",
                                         backend=args.backend or cfg.model.backend, progress=_progress(),
                                         precision=args.precision or cfg.model.precision)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for who, errors in report["speech_errors"].items():
        print(f"actstream: speech of {report['model'] if who == 'model' else who}: {largest_source_line(errors)}",
              file=sys.stderr)
    return 0


def cmd_eval_teaching(args) -> int:
    from actstream.evaluation.video import teaching_protocol
    from actstream.training.teach import LOOKS

    seeds = _seeds(args.seeds)
    if not Path(args.data, "manifests", "weizmann.csv").is_file():
        raise ConfigError(f"{shown_path(args.data)}: lacks manifests/weizmann.csv: pass the shared data folder "
                          f"(../shared/data)")
    report_path = Path(args.report)
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if not isinstance(report, dict):
        raise ConfigError(f"--report {shown_path(report_path)}: is not a JSON object: name an eval report or a new "
                          f"file")
    report["teaching"] = {"protocol": f"actstream train (default arch, --mirror auto, {LOOKS} other looks) taught on "
                                      f"some people of ../shared/data, judged on others by the majority of steps after "
                                      f"1 s",
                          "seeds": seeds, **teaching_protocol(Path(args.data), seeds, epochs=args.epochs,
                                                              progress=_progress())}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["teaching"], indent=2))
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not 1 <= len(seeds) <= 10 or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected 1 to 10 seeds from 0, e.g. 0,1,2")
    return seeds


class _OneLineFormatter(logging.Formatter):
    """Each log record on one line, with what a file name or a peer put in it escaped (common.files.escaped):
    a newline or an escape sequence in a message never forges a line or reaches the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return escaped(super().format(record))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actstream", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, publish_default_help: str):
        sp.add_argument("--config", help="config file (TOML); defaults are those of config.toml")
        sp.add_argument("--model", help="model name or folder (config model.path)")
        sp.add_argument("--backend", help="onnxruntime | torch | torch-cuda | tensorrt (config model.backend)")
        sp.add_argument("--precision", choices=["auto", "fp32", "int8"], help="encoder precision (config model.precision)")
        sp.add_argument("--threads", type=int, help="intra-op threads (config model.threads)")
        sp.add_argument("--step-ms", type=int, dest="step_ms", help="step length in ms (config step.step_ms)")
        sp.add_argument("--out", help="also write every published message to this JSON-lines file")
        sp.add_argument("--publish", help=publish_default_help)
        sp.add_argument("--keys", metavar="DIR", help="CURVE keys folder from `actstream keys`: only listed "
                                                      "clients receive (config publish.keys)")
        sp.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --publish without keys (anyone on the network reads it)")

    r = sub.add_parser("replay", help="replay a recording through the recognizer")
    r.add_argument("path", help="media file: mp4/mkv/avi/mpg (video+audio), wav/flac/mp3 (audio), or video alone")
    r.add_argument("--audio", help="a separate audio file to pair with a video file")
    r.add_argument("--realtime", action="store_true", help="pace on the wall clock (default: as fast as possible)")
    r.add_argument("--show", action="store_true", help="open a window with the overlay (needs a display)")
    r.add_argument("--annotate", metavar="OUT.mp4", help="write the video with the overlay and its audio")
    r.add_argument("--plot", metavar="OUT.png", help="draw label probabilities over time")
    r.add_argument("--truth", metavar="CSV", help="with --plot: shade the truth (columns start_s,end_s,label)")
    r.add_argument("--metrics-port", type=int, dest="metrics_port", metavar="PORT",
                   help="serve Prometheus metrics on 127.0.0.1:PORT")
    r.add_argument("--lookahead", type=int, metavar="N",
                   help="BiLSTM models: steps of look-ahead (each label is N steps late; default: the model's)")
    r.add_argument("--wait-subscriber", type=float, default=0.0, dest="wait_subscriber", metavar="S",
                   help="wait up to S seconds for a subscriber before starting, so none misses the start")
    r.add_argument("--batch-steps", type=int, dest="batch_steps", metavar="N",
                   help="fast replay: steps encoded per batch, 1 = step by step (config replay.batch_steps)")
    r.add_argument("--stats", metavar="FILE", help="write the run's figures (throughput, ms per stage) as JSON")
    common(r, "ZeroMQ endpoint to bind, or none (config publish.endpoint)")
    r.set_defaults(fn=cmd_replay)

    lv = sub.add_parser("live", help="recognize from the webcam and microphone")
    lv.add_argument("--camera", help="camera index, name or URL, or none (config live.camera)")
    lv.add_argument("--mic", help="microphone index or name, default, or none (config live.mic)")
    lv.add_argument("--seconds", type=float, help="stop after S seconds (config live.seconds; 0 = until stopped)")
    lv.add_argument("--show", action="store_true", help="open a window with the overlay (needs a display)")
    lv.add_argument("--metrics-port", type=int, dest="metrics_port", metavar="PORT",
                    help="serve Prometheus metrics on 127.0.0.1:PORT")
    common(lv, "ZeroMQ endpoint to bind, or none (config publish.endpoint)")
    lv.set_defaults(fn=cmd_live)

    ls = sub.add_parser("listen", help="subscribe to a label stream and print one JSON object per line")
    ls.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5556")
    ls.add_argument("--topic", action="append", help="topic to receive (repeatable; default all): a head "
                                                     "(speech, activity, action) or status; of `serve`, every "
                                                     "stream's")
    ls.add_argument("--stream", action="append", metavar="ID", help="of `actstream serve`: only this stream "
                                                                    "(repeatable; default all)")
    ls.add_argument("--count", type=int, default=0, help="exit after N messages")
    ls.add_argument("--timeout", type=float, default=None, help="exit when nothing arrives for S seconds")
    ls.add_argument("--until-end", action="store_true", help="exit after the stream's final status message")
    ls.add_argument("--format", choices=["json", "text"], default="json")
    ls.add_argument("--server-key", dest="server_key", help="CURVE: the server's public key file (server.key)")
    ls.add_argument("--client-key", dest="client_key", help="CURVE: this client's key pair file (NAME.key_secret)")
    ls.set_defaults(fn=cmd_listen)

    sv = sub.add_parser("serve", help="serve many streams (cameras, microphones, recordings) from one process and "
                                      "one model, batched")
    sv.add_argument("streams", nargs="?", help="a streams file (TOML, [[stream]] tables: id and camera/mic or "
                                                "file/audio/loop)")
    sv.add_argument("--stream", action="append", metavar="ID=SOURCE",
                    help="a stream (repeatable): ID=URL or camera index, ID=FILE, or ID=key:value,... with keys "
                         "camera, mic, file, audio and `loop`")
    sv.add_argument("--seconds", type=float, help="stop after S seconds (default: until Ctrl-C or SIGTERM)")
    sv.add_argument("--control", help="control endpoint (config serve.control; \"none\" for none)")
    sv.add_argument("--cluster", action="store_true", help="spread the streams over Ray actors (a local Ray, or "
                                                           "--address), one forwarder for subscribers at --publish")
    sv.add_argument("--address", help="--cluster: a Ray cluster to join, auto or HOST:PORT (default: a local Ray)")
    sv.add_argument("--shards", type=int, help="--cluster: shard actors (default: one per node)")
    sv.add_argument("--cpus-per-shard", type=float, dest="cpus", help="--cluster: CPUs each shard reserves (default 1)")
    sv.add_argument("--gpus-per-shard", type=float, dest="gpus", help="--cluster: GPUs each shard reserves (default 0)")
    sv.add_argument("--inbound", help="--cluster: where shards publish into the forwarder (default "
                                      "tcp://127.0.0.1:5558; another node's shards need an address they reach, "
                                      "with --keys)")
    common(sv, "ZeroMQ PUB endpoint (default: config publish.endpoint)")
    sv.set_defaults(fn=cmd_serve)

    ba = sub.add_parser("batch", help="relabel a folder or manifest of recordings on Ray (local, or a cluster): "
                                      "OUT/<name>.jsonl per recording, as `replay --out` writes it; resumable")
    ba.add_argument("data", help="a folder of recordings (subfolders too) or a manifest CSV with a path column")
    ba.add_argument("--out", required=True, help="output folder: OUT/<path below DATA without extension>.jsonl "
                                                 "(name.ext.jsonl where two would be the same); finished ones are "
                                                 "skipped")
    ba.add_argument("--root", help="a manifest's paths are relative to this folder (default: the manifest's)")
    ba.add_argument("--address", help="a Ray cluster to join: auto or HOST:PORT (default: a local Ray in this process, "
                                      "on 127.0.0.1)")
    ba.add_argument("--workers", type=int, help="actors (default: as many as the cluster's CPUs hold)")
    ba.add_argument("--cpus-per-worker", type=float, dest="cpus", help="CPUs each actor reserves (default 1)")
    ba.add_argument("--gpus-per-worker", type=float, dest="gpus", help="GPUs each actor reserves (default 0)")
    ba.add_argument("--config", help="config file (TOML); defaults are those of config.toml")
    ba.add_argument("--model", help="model name or folder (config model.path)")
    ba.add_argument("--backend", help="onnxruntime | torch | torch-cuda | tensorrt (config model.backend)")
    ba.add_argument("--precision", choices=["auto", "fp32", "int8"], help="encoder precision (config model.precision)")
    ba.add_argument("--threads", type=int, help="intra-op threads per worker (config model.threads)")
    ba.set_defaults(fn=cmd_batch)

    fw = sub.add_parser("forward", help="one endpoint for many publishers (the shards of serve --cluster): every "
                                        "topic's last message kept for late joiners")
    fw.add_argument("--publish", help="where subscribers connect (default: config publish.endpoint)")
    fw.add_argument("--inbound", default="tcp://127.0.0.1:5558", help="where publishers connect (default %(default)s)")
    fw.add_argument("--seconds", type=float, help="stop after S seconds (default: until Ctrl-C or SIGTERM)")
    fw.add_argument("--config", help="config file (TOML): its publish section (hwm, keys)")
    fw.add_argument("--keys", metavar="DIR", help="CURVE keys folder: subscribers and publishers must be listed "
                                                  "clients (publishers: actstream keys DIR --client shard)")
    fw.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without keys")
    fw.set_defaults(fn=cmd_forward)

    sm = sub.add_parser("streams", help="add, remove or list the streams of a running `actstream serve`")
    sm.add_argument("action", choices=["add", "remove", "list"])
    sm.add_argument("id_or_source", nargs="?", metavar="ID=SOURCE | ID", help="add: ID=SOURCE as serve --stream; "
                                                                              "remove: ID")
    sm.add_argument("--control", help="the serve process's control endpoint (config serve.control)")
    sm.add_argument("--config", help="config file (TOML): its serve.control")
    sm.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    sm.add_argument("--server-key", dest="server_key", help="CURVE: the server's public key file (server.key)")
    sm.add_argument("--client-key", dest="client_key", help="CURVE: this client's key pair file (NAME.key_secret)")
    sm.set_defaults(fn=cmd_streams)

    dv = sub.add_parser("devices", help="list cameras and microphones")
    dv.set_defaults(fn=cmd_devices)

    ky = sub.add_parser("keys", help="make CURVE keys for a secured label stream (files mode 600)")
    ky.add_argument("dir", help="keys folder: server.key(_secret), clients/NAME.key, NAME.key_secret")
    ky.add_argument("--client", action="append", metavar="NAME", help="also make a key pair for client NAME "
                                                                      "and allow it (repeatable)")
    ky.add_argument("--replace", action="store_true",
                    help="make a new key pair for a --client NAME that has one (its old key stops working); "
                         "without it an existing client is refused")
    ky.set_defaults(fn=cmd_keys)

    dm = sub.add_parser("demo", help="make a sample recording and replay it to a subscriber in real time")
    dm.add_argument("--dir", default="demo", help="where to write the sample (default ./demo)")
    dm.add_argument("--publish", default="tcp://127.0.0.1:5556")
    dm.add_argument("--fast", action="store_true", help="replay as fast as possible")
    dm.add_argument("--out", help="also write the messages to this JSON-lines file")
    dm.add_argument("--config")
    dm.add_argument("--model")
    dm.set_defaults(fn=cmd_demo)

    ev = sub.add_parser("eval", help="evaluate a model on timelines mixed from held-out test clips")
    ev.add_argument("model", help="model name or folder")
    ev.add_argument("data", help="the shared data folder (its test splits are used)")
    ev.add_argument("--out", default="eval", help="folder for report.json, confusion.png, timeline.png")
    ev.add_argument("--compare", action="append", metavar="VADS",
                    help="also score other VADs on the same timelines: silero, ten, webrtc (comma-separated or "
                         "repeated)")
    ev.add_argument("--against", metavar="OTHER_MODEL",
                    help="also score another model's speech on the same timelines, timeline by timeline")
    ev.add_argument("--timelines", type=int, default=8)
    ev.add_argument("--seconds", type=float, default=60.0, help="length of each timeline")
    ev.add_argument("--backend")
    ev.add_argument("--precision", choices=["auto", "fp32", "int8"],
                    help="the video encoder's precision (config model.precision); where it runs INT8, FP32 is "
                         "judged beside it")
    ev.add_argument("--config")
    ev.set_defaults(fn=cmd_eval)

    et = sub.add_parser("eval-teaching", help="teach video models on some people of the shared data and judge "
                                              "them on people they never saw (leave one person out, test people)")
    et.add_argument("data", help="the shared data folder (weizmann and ps7)")
    et.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    et.add_argument("--epochs", type=int, default=30)
    et.add_argument("--report", default="eval/report.json",
                    help="JSON report to write the `teaching` section into (other sections are kept)")
    et.set_defaults(fn=cmd_eval_teaching)

    ca = sub.add_parser("calibrate", help="make INT8 encoders from recordings and gate them against FP32")
    ca.add_argument("--data", nargs="+", required=True, metavar="PATH",
                    help="recordings or folders of them (every 4th file is held out for the accuracy gate unless "
                         "--held-out is given), or the shared data folder (the default model's video encoder: "
                         "the training splits calibrate, the action validation split gates)")
    ca.add_argument("--held-out", nargs="+", dest="held_out", metavar="PATH",
                    help="recordings the gate replays (each with its STEM.truth.csv beside it, if any)")
    ca.add_argument("--encoders", nargs="+", choices=["audio", "video"],
                    help="the encoders to calibrate (default: all of the model's; others keep their record)")
    ca.add_argument("--max-files", type=int, default=200, dest="max_files",
                    help="recordings used at most, sampled evenly (default 200)")
    ca.add_argument("--model", help="model name or folder (config model.path)")
    ca.add_argument("--out", help="write into this folder (a copy of the model) instead of the model folder")
    ca.add_argument("--threads", type=int, help="intra-op threads (config model.threads)")
    ca.add_argument("--config")
    ca.add_argument("--min-label-agreement", type=float, dest="min_label_agreement",
                    help="gate: fraction of steps whose label must equal FP32's, per head (default 0.97)")
    ca.add_argument("--min-cosine", type=float, dest="min_cosine",
                    help="gate: mean INT8-vs-FP32 embedding cosine similarity (default 0.98)")
    ca.add_argument("--max-metric-drop", type=float, dest="max_metric_drop",
                    help="gate: accuracy against the truth INT8 may lose per head, absolute (default 0.005: half "
                         "a point)")
    ca.set_defaults(fn=cmd_calibrate)

    bu = sub.add_parser("build", help="build the TensorRT engines of a model ahead of time (NVIDIA GPU)")
    bu.add_argument("--model", help="model name or folder (config model.path)")
    bu.add_argument("--precision", choices=["auto", "fp32", "int8"],
                    help="int8: INT8 engines from the calibrated QDQ files; otherwise FP16 (config model.precision)")
    bu.add_argument("--config")
    bu.set_defaults(fn=cmd_build)

    be = sub.add_parser("bench", help="measure throughput, latency, CPU and memory beside the naive loop")
    be.add_argument("--quick", action="store_true", help="a few seconds of media (CI); figures are not meaningful")
    be.add_argument("--video", help="benchmark this video (with audio) instead of the generated one")
    be.add_argument("--json", help="write the results to this JSON file")
    be.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the GPU path (PyTorch CUDA FP16, CUDA graphs) instead of ONNX Runtime on the CPU")
    be.add_argument("--dir", help="working folder for the generated media and models (default: a temporary one)")
    be.add_argument("--seconds", type=float, help="length of the generated video (default 60, quick 4); with "
                                                  "--streams, seconds measured per point (default 60)")
    be.add_argument("--streams", action="store_true", help="how many paced A/V streams one `serve` process holds "
                                                          "against one `replay --realtime` process per stream")
    be.add_argument("--counts", help="--streams: the stream counts to try (default 1,2,4,6,8,12,16,20,24,32); "
                                     "--batch: the streams offered to the forwarder (default 1000,2000)")
    be.add_argument("--png", help="--streams: draw the curve (p99 and CPU against streams) to this PNG")
    be.add_argument("--batch", action="store_true", help="the shared test recordings relabelled by `actstream "
                                                        "batch` (1 and 2 workers) against a shell loop of replay, "
                                                        "and the forwarder's throughput")
    be.add_argument("--data", default="../shared/data", help="--batch: the shared data folder (default %(default)s)")
    be.add_argument("--limit", type=int, help="--batch: this many of the test recordings (default: all)")
    be.set_defaults(fn=cmd_bench)

    tr = sub.add_parser("train", help="train a model from a dataset folder or manifest (or the default model)")
    tr.add_argument("data", help="a folder with one subfolder per class, a manifest CSV path,label[,start,end][,group], "
                                 "or with --recipe default the shared data folder")
    tr.add_argument("--arch", default="video_lstm", help="video_lstm | audio_lstm | hybrid | bilstm")
    tr.add_argument("--out", help="model folder to write")
    tr.add_argument("--name", help="model name (default: the folder name)")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--lookahead", type=int, default=10, help="bilstm: steps of look-ahead it is served with")
    tr.add_argument("--base", default="default", help="model whose audio CNN is reused (frozen)")
    tr.add_argument("--recipe", choices=["folder", "default", "default-audio"], default="folder",
                    help="default: the shipped model from ../shared/data's training splits; default-audio: its "
                         "recipe without video (the twin `eval --against` compares the default's hearing with)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--mirror", choices=["auto", "on", "off"], default="auto",
                    help="teach mirrored copies of video recordings too (auto: unless two classes move "
                         "opposite ways, such as swipe left and swipe right)")
    tr.add_argument("--looks", type=int, default=None,
                    help="video recordings: also teach each as this many other cameras and lights would show it "
                         "(scale, position, brightness, colour; default 8, 0 = as recorded only)")
    tr.add_argument("--step-ms", type=int, dest="step_ms", default=100,
                    help="the step the model is taught at, in ms (a multiple of 10 from 10 to 2000; recorded in "
                         "model.json, and replay and live then step at it)")
    tr.add_argument("--quick", action="store_true", help="--recipe default: a small run to check the pipeline")
    tr.add_argument("--int8-video", dest="int8_video", metavar="ONNX",
                    help="--recipe default: also teach the action head on this INT8 video encoder's embeddings "
                         "(calibrate's video_encoder.int8.onnx), so the model is at home in either precision")
    tr.set_defaults(fn=cmd_train)

    rc = sub.add_parser("record", help="record webcam + microphone into DATASET/LABEL/ to teach a new activity")
    rc.add_argument("--label", required=True, help="the activity being recorded (the subfolder name)")
    rc.add_argument("--seconds", type=float, default=10.0)
    rc.add_argument("--dataset", default="dataset", help="dataset folder (default ./dataset)")
    rc.add_argument("--camera", help="camera index, name or URL, or none")
    rc.add_argument("--mic", help="microphone index or name, or none")
    rc.add_argument("--config")
    rc.set_defaults(fn=cmd_record)
    return p


ENGINE_COMMANDS = frozenset({"replay", "live", "demo", "eval", "eval-teaching", "calibrate", "build", "bench",
                             "train", "batch"})


def _quiet_libraries(verbose: bool, cmd: str) -> None:
    """OpenCV, the FFmpeg inside it and ONNX Runtime write their own lines to stderr (a missing camera gave four
    of OpenCV's before the product's one line). The product says what matters in its own words; -v lets the
    libraries' warnings through. Set here, in the CLI, before any of them is imported: the library itself
    configures no logging. A user's own OPENCV_LOG_LEVEL or OPENCV_FFMPEG_LOGLEVEL is kept."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "WARNING" if verbose else "SILENT")  # read at OpenCV's first log
    if not verbose:  # OpenCV's FFmpeg: AV_LOG_QUIET (set, it also routes FFmpeg's lines through OpenCV)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if cmd in ENGINE_COMMANDS:  # ONNX Runtime's process-wide logger (sessions set their own level)
        try:
            import onnxruntime

            onnxruntime.set_default_logger_severity(2 if verbose else 3)  # 2 WARNING, 3 ERROR
        except ImportError:  # pragma: no cover - a dependency of the package
            pass


def main(argv: list[str] | None = None) -> int:
    # One BLAS thread: the front end's small matrix products only lose to thread spin-up, and the inference
    # backends have their own pools; set before numpy is first imported (no module here imports it at the top).
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose, args.cmd)
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter("actstream: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        return args.fn(args)
    except ActstreamError as exc:
        print(f"actstream: error: {escaped(str(exc))}", file=sys.stderr)  # one line, whatever a name held
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
