"""The `actstream` command: replay, live, listen, devices, demo, train.

Only this module configures logging, installs signal handlers and exits; the library raises.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import Config, load_config
from .errors import ActstreamError, ConfigError, SourceError

log = logging.getLogger("actstream")


def _pipeline(cfg: Config, source, publish: str | None, out: str | None, realtime: bool,
              max_seconds: float = 0.0, virtual_epoch: float = 0.0, wait_subscriber_s: float = 0.0):
    """Wire a source to the core and the publisher, run until the end or a signal, shut down in order."""
    from engines.bundle import load_spec, open_engines

    from .core import LabelPolicy, Recognizer
    from .loop import StepLoop
    from .publish import Publisher

    spec = load_spec(cfg.model.path)
    engines = open_engines(spec, cfg.model.backend, cfg.model.threads)
    publisher = None
    try:
        engines.load()
        policy = LabelPolicy(Recognizer(spec, engines), cfg.policy, cfg.step.step_ms / 1000.0)
        publisher = Publisher(publish, out, source.name, spec.tag, cfg.publish.hwm)
        if publish:
            log.info("publishing on %s", publisher.endpoint)
            if wait_subscriber_s and not publisher.wait_for_subscriber(wait_subscriber_s):
                log.warning("no subscriber after %.0f s; publishing anyway", wait_subscriber_s)
        source.start()
        loop = StepLoop(source, policy, publisher, cfg.step.step_ms / 1000.0, realtime,
                        cfg.publish.status_every_ms / 1000.0, max_seconds, virtual_epoch, cfg.model.backend)
        previous = {s: signal.signal(s, lambda *_: loop.stop_event.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            summary = loop.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return summary
    finally:
        source.close()
        if publisher is not None:
            publisher.close()
        engines.close()


def _print_summary(summary) -> None:
    stages = ", ".join(f"{k} {v:.3f}" for k, v in summary.stage_ms.items())
    print(f"actstream: {summary.steps} steps, {summary.media_s:.1f} s of media in {summary.elapsed_s:.2f} s "
          f"({summary.steps_per_s:.0f} steps/s, {summary.x_realtime:.1f}x real time); "
          f"ms per step: {stages}; drops {summary.drops}", file=sys.stderr)


def _apply_common(cfg: Config, args) -> Config:
    cfg = cfg.override("model", path=getattr(args, "model", None), backend=getattr(args, "backend", None),
                       threads=getattr(args, "threads", None))
    return cfg.override("step", step_ms=getattr(args, "step_ms", None))


def _endpoint(value: str | None, cfg: Config) -> str | None:
    value = value or cfg.publish.endpoint
    return None if value == "none" else value


def cmd_replay(args) -> int:
    from engines.bundle import load_spec

    from .sources import FileSource

    cfg = _apply_common(load_config(args.config), args)
    cfg = cfg.override("replay", realtime=True if args.realtime else None)
    spec = load_spec(cfg.model.path)
    audio = spec.audio
    source = FileSource(args.path, args.audio, sample_rate=audio.sample_rate if audio else 16000,
                        window_samples=audio.window_samples if audio else 1,
                        use_audio="audio" in spec.modalities, use_video="video" in spec.modalities)
    try:
        _check_modalities(spec, source.has_audio_track, source.has_video_track, str(args.path))
    except ActstreamError:
        source.close()
        raise
    summary = _pipeline(cfg, source, _endpoint(args.publish, cfg), args.out, cfg.replay.realtime,
                        virtual_epoch=source.creation_time, wait_subscriber_s=args.wait_subscriber)
    _print_summary(summary)
    return 0


def _check_modalities(spec, has_audio: bool, has_video: bool, what: str) -> None:
    if "audio" in spec.modalities and not has_audio:
        raise SourceError(f"{what}: has no audio, but model {spec.name} ({spec.arch}) needs audio: "
                          f"pass --audio FILE (replay) or a microphone, or use a video model")
    if "video" in spec.modalities and not has_video:
        raise SourceError(f"{what}: has no video, but model {spec.name} ({spec.arch}) needs video: "
                          f"pass a file with video or a camera, or use an audio model")


def cmd_live(args) -> int:
    from engines.bundle import load_spec

    from .sources import LiveSource

    cfg = _apply_common(load_config(args.config), args)
    cfg = cfg.override("live", camera=args.camera, mic=args.mic, seconds=args.seconds)
    spec = load_spec(cfg.model.path)
    if not spec.causal:
        raise ConfigError(f"model {spec.name} is a {spec.arch}: it looks ahead in time and cannot run live; "
                          f"use `actstream replay` or a causal model")
    live = cfg.live
    # a device the model does not use is not opened
    camera = live.camera if "video" in spec.modalities else "none"
    mic = live.mic if "audio" in spec.modalities else "none"
    _check_modalities(spec, mic != "none", camera != "none", "live input")
    audio = spec.audio
    source = LiveSource(camera, mic, audio.sample_rate if audio else 16000, audio.window_samples if audio else 1,
                        live.frame_ring, live.audio_ring_s, live.audio_block_ms)
    summary = _pipeline(cfg, source, _endpoint(args.publish, cfg), args.out, True, max_seconds=live.seconds)
    _print_summary(summary)
    return 0


def _format_text(msg: dict) -> str:
    if msg.get("topic") == "status":
        lat = msg.get("latency_ms")
        lat_s = f" latency p99 {lat['p99']:.1f} ms" if lat else ""
        return (f"{msg['t']:8.2f}s  status    {msg.get('state')}: {msg.get('steps')} steps, "
                f"{msg.get('steps_per_s', 0):.1f} steps/s, drops {msg.get('drops')}{lat_s}")
    top = sorted(msg["scores"].items(), key=lambda kv: -kv[1])[:3]
    others = "  ".join(f"{k} {v:.2f}" for k, v in top)
    return f"{msg['t']:8.2f}s  {msg['topic']:<9} {msg['label']:<12} {msg['score']:.2f}   ({others})"


def cmd_listen(args) -> int:
    import zmq

    from .client import subscribe

    n = 0
    try:
        for msg in subscribe(args.endpoint, topics=args.topic or None, timeout_s=args.timeout):
            line = json.dumps(msg, separators=(",", ":")) if args.format == "json" else _format_text(msg)
            print(line, flush=True)
            n += 1
            if args.count and n >= args.count:
                break
            if args.until_end and msg.get("topic") == "status" and msg.get("state") == "end":
                break
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot subscribe to {args.endpoint}: {exc.strerror}: expected an endpoint like "
                          f"tcp://127.0.0.1:5556") from exc
    except BrokenPipeError:
        return 0
    return 0


def cmd_devices(args) -> int:
    print("microphones (sounddevice):")
    try:
        import sounddevice as sd

        for i, d in enumerate(sd.query_devices()):
            if d["max_input_channels"] > 0:
                print(f"  {i}: {d['name']} ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)")
    except (OSError, Exception) as exc:  # PortAudio missing or no host API: report and go on to cameras
        print(f"  none usable: {str(exc).splitlines()[0]}")
    print("cameras (OpenCV, /dev/video*):")
    import glob

    devs = sorted(glob.glob("/dev/video*"))
    if not devs:
        print("  none found; a URL (rtsp://, http://...) works with --camera too")
    for d in devs:
        print(f"  {d.removeprefix('/dev/video')}: {d}")
    return 0


def cmd_demo(args) -> int:
    from .demo import make_demo_sample

    out_dir = Path(args.dir)
    sample = make_demo_sample(out_dir / "demo.mp4")
    endpoint = args.publish
    print(f"demo: made {sample} (synthesized speech, knocks and generated frames); replaying it{'' if args.fast else ' in real time'}, "
          f"publishing on {endpoint}; a subscriber process prints what it receives:", flush=True)
    listener = subprocess.Popen([sys.executable, "-m", "stream.cli", "listen", endpoint, "--format", "text",
                                 "--until-end", "--timeout", "30"])
    try:
        cfg_args = argparse.Namespace(path=str(sample), audio=None, realtime=not args.fast, out=args.out,
                                      publish=endpoint, config=args.config, model=args.model, backend=None,
                                      threads=None, step_ms=None, wait_subscriber=10.0)
        rc = cmd_replay(cfg_args)
        listener.wait(timeout=35)
    finally:
        if listener.poll() is None:
            listener.terminate()
    return rc or listener.returncode


def cmd_train(args) -> int:
    from engines.train import train_default

    train_default(Path(args.out), data_root=Path(args.data), seed=args.seed, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actstream", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, publish_default_help: str):
        sp.add_argument("--config", help="config file (TOML); defaults are those of config.toml")
        sp.add_argument("--model", help="model name or folder (config model.path)")
        sp.add_argument("--backend", help="onnxruntime | torch | tensorrt (config model.backend)")
        sp.add_argument("--threads", type=int, help="intra-op threads (config model.threads)")
        sp.add_argument("--step-ms", type=int, dest="step_ms", help="step length in ms (config step.step_ms)")
        sp.add_argument("--out", help="also write every published message to this JSON-lines file")
        sp.add_argument("--publish", help=publish_default_help)

    r = sub.add_parser("replay", help="replay a recording through the recognizer")
    r.add_argument("path", help="media file: mp4/mkv/avi/mpg (video+audio), wav/flac/mp3 (audio), or video alone")
    r.add_argument("--audio", help="a separate audio file to pair with a video file")
    r.add_argument("--realtime", action="store_true", help="pace on the wall clock (default: as fast as possible)")
    r.add_argument("--wait-subscriber", type=float, default=0.0, dest="wait_subscriber", metavar="S",
                   help="wait up to S seconds for a subscriber before starting, so none misses the start")
    common(r, "ZeroMQ endpoint to bind, or none (config publish.endpoint)")
    r.set_defaults(fn=cmd_replay)

    lv = sub.add_parser("live", help="recognize from the webcam and microphone")
    lv.add_argument("--camera", help="camera index, name or URL, or none (config live.camera)")
    lv.add_argument("--mic", help="microphone index or name, default, or none (config live.mic)")
    lv.add_argument("--seconds", type=float, help="stop after S seconds (config live.seconds; 0 = until stopped)")
    common(lv, "ZeroMQ endpoint to bind, or none (config publish.endpoint)")
    lv.set_defaults(fn=cmd_live)

    ls = sub.add_parser("listen", help="subscribe to a label stream and print one JSON object per line")
    ls.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5556")
    ls.add_argument("--topic", action="append", help="topic to receive (repeatable; default all)")
    ls.add_argument("--count", type=int, default=0, help="exit after N messages")
    ls.add_argument("--timeout", type=float, default=None, help="exit when nothing arrives for S seconds")
    ls.add_argument("--until-end", action="store_true", help="exit after the stream's final status message")
    ls.add_argument("--format", choices=["json", "text"], default="json")
    ls.set_defaults(fn=cmd_listen)

    dv = sub.add_parser("devices", help="list cameras and microphones")
    dv.set_defaults(fn=cmd_devices)

    dm = sub.add_parser("demo", help="make a sample recording and replay it to a subscriber in real time")
    dm.add_argument("--dir", default="demo", help="where to write the sample (default ./demo)")
    dm.add_argument("--publish", default="tcp://127.0.0.1:5556")
    dm.add_argument("--fast", action="store_true", help="replay as fast as possible")
    dm.add_argument("--out", help="also write the messages to this JSON-lines file")
    dm.add_argument("--config")
    dm.add_argument("--model")
    dm.set_defaults(fn=cmd_demo)

    tr = sub.add_parser("train", help="train the default model from ../shared/data (training splits only)")
    tr.add_argument("--data", default="../shared/data", help="the shared data folder")
    tr.add_argument("--out", default="engines/weights/default", help="model folder to write")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quick", action="store_true", help="a small run to check the pipeline (not for shipping)")
    tr.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    # One BLAS thread: the front end's small matrix products only lose to thread spin-up, and the inference
    # backends have their own pools; set before numpy is first imported (no module here imports it at the top).
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="actstream: %(levelname)s: %(message)s")
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return args.fn(args)
    except ActstreamError as exc:
        print(f"actstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
