"""`actstream bench --batch`: an archive relabelled by `actstream batch` against a shell loop of `actstream
replay` per file, and the forwarder's throughput, in one run.

Batch: the shared data's test recordings (every manifest row of a test split: LibriSpeech test-other, DCASE
fold 5, FSDD theo/yweweler, Weizmann ira/lena, PS7 P2, KTH person04, GRID, mmaction2), or `limit` of them spread
over the splits, relabelled (1) by a shell loop running `actstream replay FILE --out X --publish none` once per
file, (2) by `actstream batch` with 1 worker and (3) with 2 workers, each on a local Ray started by the command
(its start counted). Per run: wall time, hours of media per hour, and for batch the Ray overhead per recording
(the round trip of a recording's call minus the time inside its replay) and the start-up (Ray and the first
worker's model); every batch output is compared with the shell loop's, byte for byte.

Forwarder: `publishers` processes each feed their share of N streams x 3 heads x 10 steps/s (paced by 100 ms
ticks, as a shard's tick sends them) into one forwarder process; a subscriber process connected to the
forwarder counts every message and times it from its send (`wall`, stamped just before the send) to its
receipt. The same publishers, each binding an XPUB the subscriber connects to directly, give the baseline:
the forwarder's added latency is the difference. Per offered rate: messages received per second, lost,
latency p50/p99 through the forwarder and direct, and the forwarder's CPU.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
TEST_SPLITS = {  # manifest -> (column, values): the shared data's test splits (../shared/data/README.md)
    "librispeech_test_other": None, "dcase2016_task2": ("subject_or_fold", {"fold5"}),
    "fsdd": ("subject_or_fold", {"theo", "yweweler"}), "weizmann": ("subject_or_fold", {"ira", "lena"}),
    "ps7": ("subject_or_fold", {"P2"}), "kth": ("subject_or_fold", {"person04"}), "grid_av": None,
    "mmaction2_samples": None}
HEADS = ("speech", "activity", "action")
TAIL = (',"label":"speech","score":0.93,"scores":{"speech":0.93,"no_speech":0.07},"source":"cam.mp4",'
        '"model":"default@3","changed":false}')


def test_recordings(data: Path, limit: int = 0) -> list[str]:
    """Paths (relative to the data folder) of the test splits' recordings; `limit`: that many, taken evenly
    from each split in turn."""
    import csv

    splits = []
    for name, rule in TEST_SPLITS.items():
        with open(data / "manifests" / f"{name}.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if rule is None or r[rule[0]] in rule[1]]
        splits.append(sorted(r["path"] for r in rows if (data / r["path"]).is_file()))
    if not limit:
        return [p for s in splits for p in s]
    picked: list[str] = []
    while len(picked) < limit and any(splits):
        for s in splits:
            if s and len(picked) < limit:
                picked.append(s.pop(0))
    return picked


def _wall(cmd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def _media_s(out: Path) -> float:
    """Seconds of media in a folder of outputs: each output's last status `t`."""
    total = 0.0
    for f in out.rglob("*.jsonl"):
        last = f.read_bytes().rstrip().rsplit(b"\n", 1)[-1]
        total += json.loads(last)["t"]
    return total


def batch_bench(data: Path, work: Path, limit: int = 0, model: str = "default") -> dict:
    """The three runs over the same recordings; outputs compared."""
    rels = test_recordings(data, limit)
    manifest = work / "test.csv"
    manifest.write_text("path\n" + "\n".join(rels) + "\n")
    cli = f"{shlex.quote(sys.executable)} -m actstream.cli"
    loop_out = work / "loop"
    # the shell loop a user writes today: one replay process per file
    script = "\n".join(f"mkdir -p {shlex.quote(str((loop_out / r).parent))} && {cli} replay "
                       f"{shlex.quote(str(data / r))} --model {model} --publish none --out "
                       f"{shlex.quote(str((loop_out / r).with_suffix('.jsonl')))}" for r in rels)
    result: dict = {"recordings": len(rels)}
    loop_s = _wall(script)
    media_s = _media_s(loop_out)
    result["media_hours"] = media_s / 3600
    result["shell_loop"] = {"wall_s": loop_s, "media_hours_per_hour": media_s / loop_s, "s_per_recording":
                            loop_s / len(rels)}
    for workers in (1, 2):
        out = work / f"batch{workers}"
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-c", f"{cli} batch {shlex.quote(str(manifest))} --root "
                               f"{shlex.quote(str(data))} --out {shlex.quote(str(out))} --model {model} "
                               f"--workers {workers}"], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"actstream batch failed: {proc.stderr.strip()[-500:]}")
        summary = json.loads((out / "batch.json").read_text())["summary"]
        same = sum((out / (Path(r).with_suffix(".jsonl"))).read_bytes() == (loop_out / r).with_suffix(".jsonl")
                   .read_bytes() for r in rels if (out / Path(r).with_suffix(".jsonl")).is_file())
        result[f"batch_{workers}"] = {"wall_s": wall, "media_hours_per_hour": media_s / wall,
                                      "s_per_recording": wall / len(rels), "startup_s": summary["startup_s"],
                                      "ray_overhead_ms_per_recording": summary["ray_overhead_ms_per_recording"],
                                      "replay_ms_per_recording": summary["replay_ms_per_recording"],
                                      "failed": summary["failed"], "identical_to_the_loop": same}
    return result


# --- the forwarder ---

def _publisher(inbound: str | None, bind: str | None, streams: range, start: float, seconds: float) -> None:
    """One publisher process: its streams' three heads every 100 ms tick, `wall` stamped at each send."""
    import zmq

    from actstream.stream.forward import Feed

    if inbound:
        feed = Feed(inbound, hwm=1_000_000)
        feed.wait_ready(10)
        send = feed.send
    else:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 1_000_000)
        sock.bind(bind)
        sock.poll(10000)  # the subscriber's subscription
        sock.recv()

        def send(topic: str, data: bytes) -> None:
            sock.send_multipart([topic.encode(), data], zmq.NOBLOCK)
    topics = [(f"{h}/cam{s}/", h) for s in streams for h in HEADS]
    tick = 0
    while True:
        target = start + tick * 0.1
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        if time.time() >= start + seconds:
            break
        for topic, _ in topics:
            send(topic, f'{{"v":1,"topic":"{topic}","seq":{tick},"t":{tick / 10:.1f},"wall":{time.time():.6f}'
                        f'{TAIL}'.encode())
        tick += 1
    time.sleep(1.0)  # let the last tick leave


def _subscriber(endpoints: list[str], start: float, seconds: float, results) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    for e in endpoints:
        sock.connect(e)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    n, lat = 0, []
    end = start + seconds + 3.0
    while time.time() < end:
        if not sock.poll(100):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = time.time()
            if now < start + 1.0:  # the first second warms up
                continue
            n += 1
            if n % 7 == 0:  # a sample is enough for percentiles; parsing every message would slow this side
                lat.append(now - float(frames[1].split(b'"wall":', 1)[1].split(b",", 1)[0]))
    results.put((n, lat))


def _forwarder(endpoint: str, inbound: str, start: float, seconds: float, results, ready) -> None:
    """The forwarder in a process of its own; its CPU over the measured window (after the first second)."""
    from actstream.stream.forward import Forwarder

    fwd = Forwarder(endpoint, inbound, hwm=1_000_000)
    ready.set()
    time.sleep(max(0.0, start + 1.0 - time.time()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, start + seconds - time.time()))
    cores = (time.process_time() - cpu0) / (seconds - 1.0)
    time.sleep(3.0)  # the last ticks pass
    results.put({"passed": fwd.passed, "rejected": fwd.rejected, "cores": cores,
                 "overflows": sum(fwd.bus_overflows.values())})
    fwd.close()


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(streams: int, publishers: int, seconds: float, through_forwarder: bool) -> dict:
    ctx = mp.get_context("spawn")
    results, fresults = ctx.Queue(), ctx.Queue()
    per = [range(i * streams // publishers, (i + 1) * streams // publishers) for i in range(publishers)]
    start = time.time() + 6.0  # processes started and connected by then
    fwd = None
    if through_forwarder:
        endpoint, inbound = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
        up = ctx.Event()
        fwd = ctx.Process(target=_forwarder, args=(endpoint, inbound, start, seconds, fresults, up))
        fwd.start()
        up.wait(30)
        sub_endpoints, pubs = [endpoint], [ctx.Process(target=_publisher, args=(inbound, None, r, start, seconds))
                                           for r in per]
    else:
        binds = [f"tcp://127.0.0.1:{_port()}" for _ in per]
        sub_endpoints, pubs = binds, [ctx.Process(target=_publisher, args=(None, b, r, start, seconds))
                                      for b, r in zip(binds, per)]
    sub = ctx.Process(target=_subscriber, args=(sub_endpoints, start, seconds, results))
    sub.start()
    for p in pubs:
        p.start()
    n, lat = results.get(timeout=start - time.time() + seconds + 60)
    for p in [*pubs, sub]:
        p.join(30)
    measured = seconds - 1.0
    offered = streams * len(HEADS) * 10 * measured
    lat_ms = np.asarray(lat) * 1000.0
    row = {"offered_per_s": streams * len(HEADS) * 10, "received_per_s": n / measured,
           "lost_share": max(0.0, 1 - n / offered), "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
           "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None}
    if fwd is not None:
        f = fresults.get(timeout=60)
        fwd.join(30)
        row["forwarder_cores"] = f["cores"]
        row["forwarder_overflows"] = f["overflows"]
    return row


def forwarder_bench(counts: tuple[int, ...] = (1000, 2000), publishers: int = 4, seconds: float = 20.0) -> list[dict]:
    """Per stream count: through the forwarder and direct."""
    rows = []
    for n in counts:
        via = _one(n, publishers, seconds, True)
        direct = _one(n, publishers, seconds, False)
        rows.append({"streams": n, "publishers": publishers, "forwarder": via, "direct": direct,
                     "added_p50_ms": via["p50_ms"] - direct["p50_ms"], "added_p99_ms": via["p99_ms"] - direct["p99_ms"]})
    return rows


def run_batch_bench(data: Path, work: Path | None = None, limit: int = 0, json_out: str | None = None,
                    counts: tuple[int, ...] = (1000, 2000), seconds: float = 20.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="actstream-bench-batch-") as tmp:
        work = Path(work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {"machine": f"{os.cpu_count()} cores", "batch": batch_bench(data, work, limit),
                  "forwarder": forwarder_bench(counts, seconds=seconds)}
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    b = result["batch"]
    lines = [f"batch: {b['recordings']} recordings, {b['media_hours']:.3f} h of media",
             f"{'run':<14}{'wall s':>9}{'h media/h':>11}{'s/recording':>13}{'Ray ms/rec':>12}{'start s':>9}"]
    for key, name in (("shell_loop", "shell loop"), ("batch_1", "batch 1"), ("batch_2", "batch 2")):
        r = b[key]
        lines.append(f"{name:<14}{r['wall_s']:>9.1f}{r['media_hours_per_hour']:>11.1f}{r['s_per_recording']:>13.2f}"
                     f"{r.get('ray_overhead_ms_per_recording', float('nan')):>12.1f}"
                     f"{r.get('startup_s', float('nan')):>9.1f}")
    for key in ("batch_1", "batch_2"):
        lines.append(f"{key}: {b[key]['identical_to_the_loop']} of {b['recordings']} outputs identical to the "
                     f"loop's; failed: {len(b[key]['failed'])}")
    lines.append(f"forwarder: {'streams':>8}{'offered/s':>11}{'held/s':>10}{'lost':>7}{'p50 ms':>8}{'p99 ms':>8}"
                 f"{'direct p99':>11}{'added p99':>10}{'cores':>7}")
    for r in result["forwarder"]:
        f, d = r["forwarder"], r["direct"]
        lines.append(f"{'':<11}{r['streams']:>8}{f['offered_per_s']:>11.0f}{f['received_per_s']:>10.0f}"
                     f"{f['lost_share']:>7.1%}{f['p50_ms']:>8.1f}{f['p99_ms']:>8.1f}{d['p99_ms']:>11.1f}"
                     f"{r['added_p99_ms']:>10.1f}{f['forwarder_cores']:>7.2f}")
    return "\n".join(lines)
