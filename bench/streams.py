"""`actstream bench --streams`: how many live streams one machine holds, served by one process against one
process per stream, measured in one run.

Each stream is a paced A/V recording (320x240 at 25 fps with 16 kHz audio, looped), standing in for a camera
with a microphone. For N rising, for `seconds` each: one `actstream serve` process with N streams, and N
`actstream replay --realtime` processes; a subscriber in this process times every label from its `wall` (the
step's release) to its receipt. A run holds real time when every stream delivered its steps (at least 98 % of
`seconds` x 10 steps), no tick was late or skipped (serve's process status), and every stream's p99 from
release to receipt is within `p99_ms`. Per N: p50/p99 latency, steps delivered, late ticks, CPU cores and
peak RSS (summed over the processes); the largest N each way holds; a table, JSON and a PNG of the curve.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from actstream.bench import media

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
P99_MS = 150.0
HELD_SHARE = 0.98


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Procs:
    """Child processes watched from here: CPU seconds (from /proc while they run) and the peak of their
    summed resident memory."""

    def __init__(self, cmds: list[list[str]]):
        self.procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                      for c in cmds]
        self.peak_rss_mb = 0.0
        self.cpu_s: dict[int, float] = {}
        self._done = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            total = 0.0
            for p in self.procs:
                try:
                    fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self.cpu_s[p.pid] = (int(fields[11]) + int(fields[12])) / self._tick
                    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) / 1024.0
                except (OSError, ValueError, IndexError):
                    pass
            self.peak_rss_mb = max(self.peak_rss_mb, total)
            self._done.wait(0.2)

    def cpu(self) -> float:
        return sum(self.cpu_s.values())

    def stop(self, timeout_s: float = 30.0) -> list[str]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        errors = []
        for p in self.procs:
            try:
                _, err = p.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            if p.returncode not in (0, -signal.SIGTERM):
                errors.append((err or "").strip().splitlines()[-1:] or [f"exit {p.returncode}"])
        self._done.set()
        self._thread.join(2.0)
        return [e[0] for e in errors]


class _Listener:
    """One SUB socket on every endpoint: per stream its label latencies (ms) and steps, and serve's late ticks."""

    def __init__(self, endpoints: list[str]):
        import zmq

        self.ctx = zmq.Context()
        self.socks = []  # one per endpoint: a separate process is told apart by the socket its labels came on
        self.poller = zmq.Poller()
        for e in endpoints:
            sock = self.ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.RCVHWM, 1_000_000)
            sock.connect(e)
            self.poller.register(sock, zmq.POLLIN)
            self.socks.append(sock)
        self.lat: dict[str, list[float]] = {}
        self.steps: dict[str, int] = {}
        self.seq: dict[str, int] = {}  # the last seq of each stream's speech topic, and the gaps seen in it
        self.gaps: dict[str, int] = {}
        self.late = self.skipped = self.sat_out = 0
        self.started: float | None = None  # when the measured window opened (the warm-up is not counted)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        while not self._stop.is_set():
            for sock, _ in self.poller.poll(100):
                while True:
                    try:
                        topic, payload = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._take(self.socks.index(sock), json.loads(payload), time.time())

    def _take(self, endpoint: int, msg: dict, now: float) -> None:
        if self.started is None:
            return
        head = msg.get("head", msg["topic"])
        sid = msg.get("stream") or f"process{endpoint}"
        if msg["topic"] == "status":  # serve's own status: how its ticks kept up
            self.late += msg.get("late_ticks", 0)
            self.skipped += msg.get("skipped_ticks", 0)
        elif head == "speech":  # one head: one message per step of that stream
            self.lat.setdefault(sid, []).append((now - msg["wall"]) * 1000.0)
            self.steps[sid] = self.steps.get(sid, 0) + 1
            last = self.seq.get(sid)
            if last is not None and msg["seq"] != last + 1:
                self.gaps[sid] = self.gaps.get(sid, 0) + 1
            self.seq[sid] = msg["seq"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for sock in self.socks:
            sock.close(0)
        self.ctx.term()


def _measure(kind: str, n: int, clip: Path, model: str, seconds: float, warmup_s: float) -> dict:
    """One point of the curve: n streams for `seconds` after `warmup_s`, served (kind "serve") or as n
    separate replay processes (kind "separate")."""
    cli = [sys.executable, "-m", "actstream.cli"]
    if kind == "serve":
        endpoints = [f"tcp://127.0.0.1:{_port()}"]
        cmds = [[*cli, "serve", "--model", model, "--publish", endpoints[0], "--control", "none",
                 *[a for i in range(n) for a in ("--stream", f"s{i}=file:{clip},loop")]]]
    else:  # each process publishes on its own endpoint
        endpoints = [f"tcp://127.0.0.1:{_port()}" for _ in range(n)]
        cmds = [[*cli, "replay", str(clip), "--model", model, "--realtime", "--publish", e] for e in endpoints]
    listener = _Listener(endpoints)
    procs = _Procs(cmds)
    try:
        time.sleep(warmup_s)  # engines load, streams open, ONNX Runtime warms up: not measured
        cpu0, listener.started = procs.cpu(), time.time()
        time.sleep(seconds)
        cpu = procs.cpu() - cpu0
        lat = {k: list(v) for k, v in listener.lat.items()}
        steps = dict(listener.steps)
    finally:
        errors = procs.stop()
        listener.close()
    everyone = np.concatenate([v for v in lat.values()]) if lat else np.zeros(0)
    p99s = [float(np.percentile(v, 99)) for v in lat.values()]
    want = seconds * 10 * HELD_SHARE
    held = (len(steps) == n and min(steps.values()) >= want and listener.late == 0 and listener.skipped == 0
            and (max(p99s) if p99s else np.inf) <= P99_MS and not errors)
    return {"kind": kind, "streams": n, "held": bool(held), "p50_ms": float(np.percentile(everyone, 50)) if len(everyone) else None,
            "p99_ms_worst_stream": max(p99s) if p99s else None,
            "steps_per_stream_min": min(steps.values()) if steps else 0, "steps_wanted": int(seconds * 10),
            "late_ticks": listener.late, "skipped_ticks": listener.skipped, "cpu_cores": cpu / seconds,
            "peak_rss_mb": procs.peak_rss_mb, "errors": errors}


def _streams_cli(control: str, *args: str) -> str:
    """`actstream streams ARGS` against a running serve; its reply line."""
    r = subprocess.run([sys.executable, "-m", "actstream.cli", "streams", *args, "--control", control, "--timeout", "10"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else f"exit {r.returncode}"


def _measure_faults(n: int, clip: Path, model: str, seconds: float, warmup_s: float, work: Path) -> dict:
    """The faults of a running serve, measured as the quiet run is: n streams, and a quarter of the way in a
    stream whose file breaks off half-way is added, a stream is removed, and two are added (a recording, and
    a camera URL nothing answers, so it retries with back-off). The streams left alone are timed: their
    steps, their worst p99 and whether their seq ran without a gap."""
    broken = work / "broken.mp4"
    if not broken.exists():
        data = clip.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
    endpoint, control = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    cmd = [sys.executable, "-m", "actstream.cli", "serve", "--model", model, "--publish", endpoint, "--control",
           control, *[a for i in range(n) for a in ("--stream", f"s{i}=file:{clip},loop")]]
    listener = _Listener([endpoint])
    procs = _Procs([cmd])
    replies = []
    try:
        time.sleep(warmup_s)
        cpu0, listener.started = procs.cpu(), time.time()
        time.sleep(seconds / 4)
        dead = _port()  # a port nothing listens on: the camera cannot be opened and is retried
        for args in (("add", f"broken=file:{broken}"), ("remove", f"s{n - 1}"), ("add", f"extra=file:{clip},loop"),
                     ("add", f"cam=http://127.0.0.1:{dead}/video.mjpg")):
            replies.append(f"{' '.join(args)}: {_streams_cli(control, *args)}")
        time.sleep(seconds * 3 / 4)
        cpu = procs.cpu() - cpu0
        lat = {k: list(v) for k, v in listener.lat.items() if k in {f"s{i}" for i in range(n - 1)}}
        steps = {k: v for k, v in listener.steps.items() if k in lat}
        gaps = sum(v for k, v in listener.gaps.items() if k in lat)
    finally:
        errors = procs.stop()
        listener.close()
    p99s = [float(np.percentile(v, 99)) for v in lat.values()]
    return {"kind": "serve with faults", "streams": n, "untouched": len(lat), "seq_gaps": gaps,
            "p99_ms_worst_stream": max(p99s) if p99s else None,
            "steps_per_stream_min": min(steps.values()) if steps else 0, "steps_wanted": int(seconds * 10),
            "late_ticks": listener.late, "skipped_ticks": listener.skipped, "cpu_cores": cpu / seconds,
            "peak_rss_mb": procs.peak_rss_mb, "control": replies, "errors": errors}


def run_streams_bench(work: Path, model: str = "default", counts: list[int] | None = None, seconds: float = 60.0,
                      warmup_s: float = 8.0, json_out: str | None = None, png_out: str | None = None,
                      progress=None) -> dict:
    """The curve for both ways, N rising until each way has failed twice in a row."""
    length = int(seconds + warmup_s + 15)  # `replay --realtime` does not loop: the clip outlasts the measurement
    clip = media.video_with_audio(work / f"streams-{length}s.mp4", float(length))
    counts = counts or [1, 2, 4, 6, 8, 12, 16, 20, 24, 32]
    rows: list[dict] = []
    for kind in ("serve", "separate"):
        failed = 0
        for n in counts:
            row = _measure(kind, n, clip, model, seconds, warmup_s)
            rows.append(row)
            log.info("%s %d streams: held %s, p99 %s ms, %.2f cores, %.0f MB", kind, n, row["held"],
                     row["p99_ms_worst_stream"], row["cpu_cores"], row["peak_rss_mb"])
            if progress:
                progress(f"{kind} {n} streams", len(rows), 2 * len(counts))
            failed = 0 if row["held"] else failed + 1
            if failed >= 2:
                break
    best = {k: max([r["streams"] for r in rows if r["kind"] == k and r["held"]], default=0) for k in ("serve", "separate")}
    faults = None
    if best["serve"] >= 2:  # the faults at the largest N served, against its quiet run
        quiet = next(r for r in rows if r["kind"] == "serve" and r["streams"] == best["serve"])
        faults = _measure_faults(best["serve"], clip, model, seconds, warmup_s, work)
        faults["p99_vs_quiet"] = (faults["p99_ms_worst_stream"] / quiet["p99_ms_worst_stream"]
                                  if faults["p99_ms_worst_stream"] and quiet["p99_ms_worst_stream"] else None)
        log.info("faults at %d streams: p99 %s ms (x%s of quiet)", best["serve"], faults["p99_ms_worst_stream"],
                 faults["p99_vs_quiet"])
    result = {"seconds": seconds, "p99_target_ms": P99_MS, "model": model, "clip": "320x240 25 fps H.264 + 16 kHz AAC, looped",
              "cores": os.cpu_count(), "rows": rows, "largest_held": best, "faults": faults,
              "ratio": best["serve"] / best["separate"] if best["separate"] else None}
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    if png_out:
        _plot(rows, Path(png_out), seconds)
    return result


def _plot(rows: list[dict], path: Path, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for kind, colour in (("serve", "tab:blue"), ("separate", "tab:red")):
        rs = [r for r in rows if r["kind"] == kind]
        label = "one serve process" if kind == "serve" else "one replay --realtime process per stream"
        a.plot([r["streams"] for r in rs], [r["p99_ms_worst_stream"] for r in rs], "o-", color=colour, label=label)
        b.plot([r["streams"] for r in rs], [r["cpu_cores"] for r in rs], "o-", color=colour, label=label)
    a.axhline(P99_MS, color="grey", ls="--", lw=1)
    a.set_xlabel("streams")
    a.set_ylabel("p99 release -> subscriber, worst stream (ms)")
    a.set_yscale("log")
    b.set_xlabel("streams")
    b.set_ylabel("CPU cores")
    a.legend(fontsize=8)
    fig.suptitle(f"paced 320x240 25 fps A/V streams, {seconds:.0f} s per point, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(result: dict) -> str:
    lines = ["| way | streams | held | p50 ms | p99 ms (worst stream) | steps/stream | late ticks | CPU cores | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['streams']} | {'yes' if r['held'] else 'no'} | "
                     f"{r['p50_ms'] or 0:.1f} | {r['p99_ms_worst_stream'] or 0:.1f} | {r['steps_per_stream_min']}/"
                     f"{r['steps_wanted']} | {r['late_ticks']} | {r['cpu_cores']:.2f} | {r['peak_rss_mb']:.0f} |")
    f = result.get("faults")
    if f:
        lines.append(f"| serve, faults (untouched {f['untouched']}) | {f['streams']} | - | - | "
                     f"{f['p99_ms_worst_stream'] or 0:.1f} | {f['steps_per_stream_min']}/{f['steps_wanted']} | "
                     f"{f['late_ticks']} | {f['cpu_cores']:.2f} | {f['peak_rss_mb']:.0f} |")
    best = result["largest_held"]
    lines.append(f"\nlargest N held: serve {best['serve']}, separate processes {best['separate']}"
                 + (f" (x{result['ratio']:.1f})" if result["ratio"] else ""))
    if f:
        ratio = f"x{f['p99_vs_quiet']:.2f}" if f.get("p99_vs_quiet") else "n/a"
        lines.append(f"faults at {f['streams']} streams (a broken file added, one removed, a recording and a dead "
                     f"camera added): untouched streams' worst p99 {ratio} of the quiet run, {f['seq_gaps']} seq gaps; " + "; ".join(f["control"]))
    return "\n".join(lines)
