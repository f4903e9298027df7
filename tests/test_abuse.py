"""The bus under attack while a paced replay runs (`replay --realtime`, a real child process): a hostile peer
sends frames claiming 1 GiB and 1-4 MB subscriptions, floods empty subscriptions, and 200 peers connect and
drop. A good subscriber sees every message with no seq gap, the median 1 s interval's step p99 stays within 2x
the quiet run's (and no interval stalls), and the publisher's resident memory grows less than 50 MB."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import zmq

from actstream.stream.client import SeqTracker, subscribe
from actstream.views.demo import write_media
from tests import zmtp
from tests.conftest import ROOT, free_port, tone_and_noise
from tests.test_bus import rss_mib

RATE = 16000


class Run:
    """One `actstream replay --realtime` child publishing on a fresh port, and a good subscriber."""

    def __init__(self, media):
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.tracker = SeqTracker()
        self.statuses: list[dict] = []
        self.counts: dict[str, int] = {}
        self.rss: list[float] = []
        self.started = threading.Event()
        self.listener = threading.Thread(target=self._listen, daemon=True)
        self.listener.start()
        self.proc = subprocess.Popen([sys.executable, "-m", "actstream.cli", "replay", str(media), "--realtime",
                                      "--publish", self.endpoint, "--wait-subscriber", "30"], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def _listen(self) -> None:
        for msg in subscribe(self.endpoint, timeout_s=30, tracker=self.tracker):
            self.counts[msg["topic"]] = self.counts.get(msg["topic"], 0) + 1
            if msg["topic"] == "status":
                self.statuses.append(msg)
                self.started.set()
                if msg["state"] == "end":
                    return

    def sample_until_done(self, limit_s: float) -> None:
        """RSS samples until the child exits; one that is still running after limit_s is killed (a stall)."""
        deadline = time.monotonic() + limit_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                break
            try:
                self.rss.append(rss_mib(self.proc.pid))
            except (OSError, RuntimeError):
                break
            time.sleep(0.2)

    def finish(self) -> str:
        err = self.proc.stderr.read()
        self.proc.wait(30)
        self.listener.join(60)
        return err

    def p99s(self) -> list[float]:
        """Per status interval, the capture-to-publish p99 in ms (the first interval, warm-up, left out)."""
        return [s["latency_ms"]["p99"] for s in self.statuses if s["state"] == "running" and s["latency_ms"]][1:]


class Attack:
    """Hostile peers on their own threads until stopped; each counts what it did."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.done = {"giant_frames": 0, "huge_subscriptions": 0, "empty_subscriptions": 0, "connect_drop": 0}
        # not self._distinct: a local peer reconnecting with distinct subscriptions as fast as it can keeps
        # the bus thread inside ZeroMQ (each new connection's subscription trie); the step loop and memory
        # hold, but delivery lags by seconds (the residual in the README's threat model)
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._giant_frames, self._huge_subscriptions, self._flood, self._connect_drop)]

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def join(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(10)

    def _giant_frames(self) -> None:
        chunk = bytes(1 << 20)
        while not self.stop.is_set():
            try:
                s = zmtp.null_sub(self.port)
            except OSError:
                continue
            if zmtp.send_quietly(s, zmtp.frame_header(1 << 30)):
                for _ in range(16):
                    if not zmtp.send_quietly(s, chunk):
                        break
            s.close()
            self.done["giant_frames"] += 1
            self.stop.wait(0.05)

    def _huge_subscriptions(self) -> None:
        topics = [b"s" * (1 << 20), b"a" * (4 << 20)]
        while not self.stop.is_set():
            try:
                s = zmtp.null_sub(self.port)
            except OSError:
                continue
            zmtp.send_quietly(s, zmtp.subscription(topics[self.done["huge_subscriptions"] % 2]))
            s.close()
            self.done["huge_subscriptions"] += 1
            self.stop.wait(0.05)

    def _flood(self) -> None:
        burst = zmtp.subscription(b"") * 100  # 5000 a second: within what publish() reads (600 a step)
        while not self.stop.is_set():
            try:
                s = zmtp.null_sub(self.port)
            except OSError:
                continue
            while not self.stop.is_set() and zmtp.send_quietly(s, burst):
                self.done["empty_subscriptions"] += 100
                self.stop.wait(0.02)
            s.close()

    def _distinct(self) -> None:
        """Distinct 200-byte subscriptions as fast as the publisher takes them: each one a new branch of the
        peer's subscription trie (a GB in seconds before the peer guard). Made once: each connection starts a
        new trie. Not in the default attack (see __init__)."""
        self.done.setdefault("distinct_subscriptions", 0)
        bursts = [b"".join(zmtp.subscription(b"%08x" % (n + i) * 25) for i in range(100)) for n in range(0, 10000, 100)]
        while not self.stop.is_set():
            try:
                s = zmtp.null_sub(self.port)
            except OSError:
                continue
            for burst in bursts:
                if self.stop.is_set() or not zmtp.send_quietly(s, burst):
                    break
                self.done["distinct_subscriptions"] += 100
            s.close()

    def _connect_drop(self) -> None:
        ctx = zmq.Context()
        endpoint = f"tcp://127.0.0.1:{self.port}"
        while self.done["connect_drop"] < 200 and not self.stop.is_set():
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"speech" if self.done["connect_drop"] % 2 else b"")
            s.connect(endpoint)
            self.stop.wait(0.01)
            s.close(0)
            self.done["connect_drop"] += 1
        ctx.term()


def test_bus_abuse_during_a_paced_replay(tmp_path):
    quiet_media = write_media(tmp_path / "quiet.wav", None, tone_and_noise(5.0, RATE, 1), RATE, acodec="pcm_s16le")
    media = write_media(tmp_path / "abuse.wav", None, tone_and_noise(12.0, RATE, 1, seed=1), RATE,
                        acodec="pcm_s16le")
    quiet = Run(quiet_media)
    quiet.sample_until_done(60)
    err = quiet.finish()
    assert quiet.proc.returncode == 0, err

    run = Run(media)
    assert run.started.wait(60), "the replay did not start"
    attack = Attack(run.port)
    attack.start()
    rss0 = rss_mib(run.proc.pid)
    run.sample_until_done(60)  # 12 s of media; it took 60 s and more when subscriptions stalled the step loop
    attack.join()
    err = run.finish()
    assert run.proc.returncode == 0, f"exit {run.proc.returncode} (-9: killed after 60 s, stalled): {err}"
    assert "Traceback" not in err

    steps = run.statuses[-1]["steps"]
    seen = (f"last status {run.statuses[-1]['state']} at step {steps}, counts {run.counts}, listener alive "
            f"{run.listener.is_alive()}, missed {run.tracker.missed}, bad {run.tracker.bad}; {err}")
    assert run.statuses[-1]["state"] == "end" and steps == 120, seen
    assert run.tracker.missed == {}, run.tracker.missed
    assert run.counts["speech"] == run.counts["activity"] == steps  # every message, none twice
    assert attack.done["connect_drop"] == 200 and min(attack.done.values()) > 0, attack.done
    # per status interval (1 s of steps): the median interval p99 under attack stays within 2x the quiet run's
    # worst, and no interval stalls (a step thread that did the peers' work stalled 86-570 ms before). The median
    # rides out scheduler hiccups of a shared 2-core machine (two CI runs each had one or two slow intervals,
    # 26-35 ms); the latency figures themselves are the benchmark's job
    quiet_p99, intervals = max(quiet.p99s()), sorted(run.p99s())
    p99 = intervals[len(intervals) // 2]
    assert p99 <= 2 * quiet_p99 and intervals[-1] <= 250.0, (quiet.p99s(), run.p99s())
    grown = max(run.rss) - rss0
    assert grown < 50, (rss0, max(run.rss))
    print(f"abuse: quiet p99 {quiet_p99:.1f} ms, under attack {p99:.1f} ms; RSS +{grown:.1f} MB; {attack.done}")
