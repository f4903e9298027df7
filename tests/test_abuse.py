"""The bus under attack while a paced replay runs (`replay --realtime`, a real child process): a hostile peer
sends frames claiming 1 GiB and 1-4 MB subscriptions, floods empty subscriptions, 200 peers connect and drop,
and peers in turn each complete the handshake and send 150 new distinct 100-byte subscriptions. A good
subscriber sees every message with no seq gap and within 250 ms of its capture (p99), the median 1 s
interval's step p99 stays within 2x the quiet run's (and no interval stalls), and the publisher's resident
memory grows less than 50 MB. Then peers that stay: 500 that subscribe to junk and 300 idle ones against a
publisher started under a low open-file limit; and (slow) 500 subscribed peers held while SIGTERM stops it."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from actstream.stream.client import SeqTracker, subscribe
from actstream.views.demo import write_media
from tests import zmtp
from tests.conftest import ROOT, free_port, tone_and_noise, wait_until
from tests.test_bus import rss_mib

RATE = 16000


# The good subscriber, in a process of its own (as a real one is: the attackers' threads in the test process
# must not delay its reading): each message it yields, as a JSON line with the time it was received.
LISTENER = """
import json, sys, time
from actstream.stream.client import SeqTracker, subscribe
tracker = SeqTracker()
for msg in subscribe(sys.argv[1], timeout_s=30, tracker=tracker):
    print(json.dumps({"received": time.time(), "msg": msg}), flush=True)
    if msg["topic"] == "status" and msg["state"] == "end":
        break
print(json.dumps({"bad": tracker.bad}), flush=True)
"""


class Run:
    """One `actstream replay --realtime` child publishing on a fresh port, and a good subscriber; args: more
    options; nofile: the child's open-file limit."""

    def __init__(self, media, *args: str, nofile: int | None = None):
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.tracker = SeqTracker()
        self.statuses: list[dict] = []
        self.counts: dict[str, int] = {}
        self.delays: list[tuple[float, float]] = []  # (t, s from the label's capture, `wall`, to the subscriber)
        self.rss: list[float] = []
        self.started = threading.Event()
        self.sub = subprocess.Popen([sys.executable, "-c", LISTENER, self.endpoint], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.listener = threading.Thread(target=self._listen, daemon=True)
        self.listener.start()
        limit = None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen([sys.executable, "-m", "actstream.cli", "replay", str(media), "--realtime",
                                      "--publish", self.endpoint, "--wait-subscriber", "30", *args], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=limit)

    def _listen(self) -> None:
        for line in self.sub.stdout:
            got = json.loads(line)
            if "msg" not in got:
                self.tracker.bad = got["bad"]
                return
            msg = got["msg"]
            self.tracker.check(msg)
            if msg["topic"] != "status" and msg["topic"] in self.counts:  # the first may be a late joiner's
                self.delays.append((msg["t"], got["received"] - msg["wall"]))
            self.counts[msg["topic"]] = self.counts.get(msg["topic"], 0) + 1
            if msg["topic"] == "status":
                self.statuses.append(msg)
                self.started.set()

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
        try:
            self.sub.wait(30)
        except subprocess.TimeoutExpired:
            self.sub.kill()
            self.sub.wait()
        return err

    def p99s(self) -> list[float]:
        """Per status interval, the capture-to-publish p99 in ms (the first interval, warm-up, left out)."""
        return [s["latency_ms"]["p99"] for s in self.statuses if s["state"] == "running" and s["latency_ms"]][1:]

    def delays_ms(self) -> tuple[float, float, float]:
        """The good subscriber's delivery delays (capture to receipt) in ms: the p99 of the median 1 s interval
        of media time (the first, warm-up, left out), the p99 of all, and the longest. The median interval rides
        out what a busy machine does to every process (a quiet run here had a 264 ms hiccup with two other
        engineers' tests on the two cores); a stall of the bus held every interval for seconds."""
        by_s: dict[int, list[float]] = {}
        for t, d in self.delays:
            by_s.setdefault(int(t), []).append(d)
        p99 = lambda d: 1000 * sorted(d)[min(len(d) - 1, int(0.99 * len(d)))]
        intervals = sorted(p99(d) for s, d in by_s.items() if s >= 1)
        return intervals[len(intervals) // 2], p99([d for _, d in self.delays]), 1000 * max(d for _, d in self.delays)

    def cpu_s(self) -> float:
        """CPU seconds the child has used so far."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Attack:
    """Hostile peers on their own threads until stopped; each counts what it did."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.done = {"giant_frames": 0, "huge_subscriptions": 0, "empty_subscriptions": 0, "connect_drop": 0,
                     "reconnect_flood": 0}
        self.refused = 0  # connections the publisher shut before their handshake completed (its accept rate)
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._giant_frames, self._huge_subscriptions, self._flood, self._connect_drop,
                                  self._reconnect_flood)]

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
            s = self._connect()
            if s is None:
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
            s = self._connect()
            if s is None:
                continue
            zmtp.send_quietly(s, zmtp.subscription(topics[self.done["huge_subscriptions"] % 2]))
            s.close()
            self.done["huge_subscriptions"] += 1
            self.stop.wait(0.05)

    def _flood(self) -> None:
        burst = zmtp.subscription(b"") * 100  # 5000 a second: within what publish() reads (600 a step)
        while not self.stop.is_set():
            s = self._connect()
            if s is None:
                continue
            while not self.stop.is_set() and zmtp.send_quietly(s, burst):
                self.done["empty_subscriptions"] += 100
                self.stop.wait(0.02)
            s.close()

    def _connect(self) -> socket.socket | None:
        """A handshaken raw peer, or None (after a pause: a refused attacker tries again, and must not spin the
        two cores the publisher needs too) when the publisher refused the connection."""
        try:
            return zmtp.null_sub(self.port)
        except OSError:
            self.refused += 1
            self.stop.wait(0.01)
            return None

    def _reconnect_flood(self) -> None:
        """Issue 21 item 1: 200 peers in turn, each completing the handshake and sending 150 new distinct
        100-byte subscriptions (15 KB, under the byte budget), then leaving. ZeroMQ kept each in one trie for
        all peers, and each peer that left walked all of it: 200 of them stalled delivery 18 s and took 136 MB.
        Now a subscription no topic can match drops its peer, and new connections come at a bounded rate."""
        n = 0
        while n < 200 and not self.stop.is_set():
            s = self._connect()
            if s is None:
                continue
            zmtp.send_quietly(s, distinct_subscriptions(n))
            s.close()
            n += 1
            self.done["reconnect_flood"] += 1

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


def distinct_subscriptions(n: int, count: int = 150) -> bytes:
    """The n-th peer's `count` subscriptions of 100 bytes each, distinct from every other peer's."""
    return b"".join(zmtp.subscription((b"%08x" % (n * count + i) * 13)[:100]) for i in range(count))


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
    delay, delay_p99, delay_max = run.delays_ms()
    # 200 of the reconnect flood held delivery 18 s (9 s median delay)
    assert delay <= 250.0 and delay_max <= 1000.0, (delay, delay_p99, delay_max, attack.done)
    # per status interval (1 s of steps): the median interval p99 under attack stays within 2x the quiet run's
    # worst, and no interval stalls (a step thread that did the peers' work stalled 86-570 ms before). The median
    # rides out scheduler hiccups of a shared 2-core machine (two CI runs each had one or two slow intervals,
    # 26-35 ms); the latency figures themselves are the benchmark's job
    quiet_p99, intervals = max(quiet.p99s()), sorted(run.p99s())
    p99 = intervals[len(intervals) // 2]
    assert p99 <= 2 * quiet_p99 and intervals[-1] <= 250.0, (quiet.p99s(), run.p99s())
    grown = max(run.rss) - rss0
    assert grown < 50, (rss0, max(run.rss))
    print(f"abuse: quiet p99 {quiet_p99:.1f} ms, under attack {p99:.1f} ms; delivery p99 {delay_p99:.0f} ms "
          f"(median interval {delay:.0f}, max {delay_max:.0f}); "
          f"RSS +{grown:.1f} MB; {attack.done}, {attack.refused} refused")


def stop_and_time(run: Run) -> float:
    """SIGTERM the child; seconds until it has exited (it is killed, and inf returned, after 30 s)."""
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    try:
        run.proc.wait(30)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        return float("inf")
    return time.monotonic() - sent


def test_peers_that_stay_under_a_low_open_file_limit(tmp_path):
    """Issue 21 item 2, against a publisher started under an open-file limit of 256 (so 48 peers at most,
    chosen from it): 500 peers that subscribe to 150 distinct junk topics each and stay (they added 375 MB, and
    SIGTERM had not ended the publisher 45 s after), and 300 idle handshaken ones (at systemd's limit of 1024, a
    thousand of them left new subscribers nothing while the publisher spun 1.2 cores). The junk ones are
    dropped; the idle ones hold at most 48 places and make room for a newcomer, who gets the current status at
    once; the good subscriber's delivery p99 stays within 250 ms and memory within 50 MB; the publisher idles
    while they stay; and SIGTERM ends it within 2 s with them connected."""
    media = write_media(tmp_path / "stay.wav", None, tone_and_noise(15.0, RATE, 1, seed=2), RATE, acodec="pcm_s16le")
    run = Run(media, nofile=256)
    junk, idle = [], []
    try:
        assert run.started.wait(60), "the replay did not start"
        rss0 = rss_mib(run.proc.pid)
        junk, refused_junk = zmtp.open_peers(run.port, 500, distinct_subscriptions, 3.0)
        idle, refused_idle = zmtp.open_peers(run.port, 300, lambda i: None, 4.0)
        assert len(junk) >= 20 and len(idle) >= 48, (len(junk), len(idle))  # past the accept rate's burst
        wait_until(lambda: zmtp.still_open(junk) == 0, 10, "the junk subscribers dropped")
        held = wait_until(lambda: (n := zmtp.still_open(idle)) <= 48 and n, 10, "at most 48 idle peers")
        cpu0, t0, seen0 = run.cpu_s(), time.monotonic(), run.counts.get("speech", 0)
        rss = rss_mib(run.proc.pid)
        newcomer = subscribe(run.endpoint, ["status"], timeout_s=10)  # all places are taken
        got = next(newcomer, None)
        newcomer.close()
        assert got is not None and got["state"] == "running", "a new subscriber got nothing"
        wait_until(lambda: run.counts.get("speech", 0) >= seen0 + 10, 10, "a second more of labels")
        cpu = (run.cpu_s() - cpu0) / (time.monotonic() - t0)
        stop_s = stop_and_time(run)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        for s in junk + idle:
            s.close()
    err = run.finish()
    assert run.proc.returncode == 0, err
    assert run.statuses[-1]["state"] == "end" and run.tracker.missed == {}, (run.statuses[-1], run.tracker.missed)
    delay, delay_p99, delay_max = run.delays_ms()
    assert delay <= 250.0 and delay_max <= 1000.0 and rss - rss0 < 50, (delay, delay_p99, delay_max, rss0, rss)
    assert cpu < 0.5, cpu  # the replay itself takes about 0.1 of a core here
    assert stop_s <= 2.0, stop_s
    print(f"stay: {len(junk)} junk peers dropped ({refused_junk} tries refused), {held} of {len(idle)} idle held "
          f"({refused_idle} refused); delivery p99 {delay_p99:.0f} ms (median interval {delay:.0f}, max "
          f"{delay_max:.0f}); RSS +{rss - rss0:.1f} MB; {cpu:.2f} cores; SIGTERM {stop_s:.2f} s")


@pytest.mark.slow
def test_sigterm_with_500_subscribers_connected(tmp_path):
    """500 peers subscribed to `status`, connected at the accept rate and staying (publish.max_peers = 512):
    the good subscriber's delivery p99 stays within 250 ms, memory within 50 MB, and SIGTERM ends the publisher
    within 2 s with all of them connected (with 200 such peers holding distinct subscriptions it took 18 s)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"needs an open-file limit of 4096 for 512 peers; the hard limit is {hard}")
    media = write_media(tmp_path / "long.wav", None, tone_and_noise(45.0, RATE, 1, seed=3), RATE, acodec="pcm_s16le")
    config = tmp_path / "c.toml"
    config.write_text("[publish]\nmax_peers = 512\n")
    run = Run(media, "--config", str(config), nofile=4096)
    peers = []
    try:
        assert run.started.wait(60), "the replay did not start"
        rss0 = rss_mib(run.proc.pid)
        peers, refused = zmtp.open_peers(run.port, 500, lambda i: zmtp.subscription(b"status"), 40.0)
        assert len(peers) == 500, (len(peers), refused)
        assert wait_until(lambda: zmtp.still_open(peers) == 500, 5, "500 peers held")
        rss = rss_mib(run.proc.pid)
        stop_s = stop_and_time(run)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        for s in peers:
            s.close()
    err = run.finish()
    assert run.proc.returncode == 0, err
    delay, delay_p99, delay_max = run.delays_ms()
    assert delay <= 250.0 and delay_max <= 1000.0, (delay, delay_p99, delay_max)
    assert rss - rss0 < 50 and stop_s <= 2.0, (rss0, rss, stop_s)
    print(f"500 subscribers: delivery p99 {delay_p99:.0f} ms (median interval {delay:.0f}, max {delay_max:.0f}); "
          f"RSS +{rss - rss0:.1f} MB; SIGTERM {stop_s:.2f} s")


def test_the_control_endpoint_is_held_to_the_same_connection_bounds(port):
    """`serve`'s control endpoint (a ROUTER) had no cap on connections either: 300 idle peers against one
    capped at 8 leave at most 8 connected, and a request still gets its answer (it takes an idle one's place)."""
    from actstream.stream.control import ControlServer, request

    endpoint = f"tcp://127.0.0.1:{port}"
    server = ControlServer(endpoint, lambda req: {"streams": []}, max_peers=8)
    peers = []
    try:
        peers, refused = zmtp.open_peers(port, 300, limit_s=2.0, socket_type=b"DEALER")
        assert len(peers) > 8 and refused > 0, (len(peers), refused)
        held = wait_until(lambda: (n := zmtp.still_open(peers)) <= 8 and n, 10, "at most 8 peers held")
        assert request(endpoint, {"op": "list"}, timeout_s=10) == {"ok": True, "streams": []}
        counts = dict(server._guard.counts)
    finally:
        server.close()
        for s in peers:
            s.close()
    assert counts["idle"] >= 1 and counts["rate"] + counts["full"] >= 1, counts
    print(f"control: {held} of {len(peers)} idle peers held, {refused} tries refused; {counts}")
