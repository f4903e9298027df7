"""The label bus under stress, with real ZeroMQ sockets on loopback: slow and stalled subscribers, late
joiners, sequence gaps, CURVE security, and what may travel on it."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import zmq

from stream.client import SeqTracker, subscribe
from stream.errors import ConfigError, PublishError
from stream.publish import Publisher
from stream.security import is_local, make_keys
from tests.conftest import run_cli


def publish_steps(pub: Publisher, n: int, t0: int = 0) -> None:
    for k in range(t0, t0 + n):
        pub.publish("speech", k / 10, k / 10, "speech", 0.9, {"speech": 0.9, "no_speech": 0.1}, changed=False)
        pub.publish("activity", k / 10, k / 10, "quiet", 0.8, {"quiet": 0.8, "knock": 0.2}, changed=False)


def recv_all(sock, timeout_ms: int = 500) -> list[tuple[str, bytes]]:
    got = []
    while sock.poll(timeout_ms):
        topic, data = sock.recv_multipart()
        got.append((topic.decode(), data))
    return got


def wait_subscribed(pub: Publisher, n: int = 1, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pub._subscribers < n and time.monotonic() < deadline:
        pub._drain_subscriptions(50)
    assert pub._subscribers >= n


def test_stalled_subscriber_never_blocks_and_overflows_are_counted_per_topic(port):
    """One subscriber stops reading; the publisher keeps going, counts per topic each time that subscriber's
    queue overflowed, a healthy subscriber still gets every message, and the stalled one, when it reads
    again, learns from seq how much it missed."""
    endpoint = f"tcp://127.0.0.1:{port}"
    pub = Publisher(endpoint, None, "test", "m@0", hwm=1000)
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(endpoint)
    healthy = ctx.socket(zmq.SUB)
    healthy.setsockopt(zmq.RCVHWM, 0)
    healthy.setsockopt(zmq.SUBSCRIBE, b"")
    healthy.connect(endpoint)
    wait_subscribed(pub, 2)
    tracker, late_tracker = SeqTracker(), SeqTracker()
    received = 0
    try:
        for k in range(20000):  # 10 MB: more than the kernel's socket buffers hold for the stalled one
            publish_steps(pub, 1, k)
            while healthy.poll(0):  # the healthy one reads as it goes
                tracker.check(json.loads(healthy.recv_multipart()[1]))
                received += 1
            if k % 20 == 0:
                time.sleep(0.001)
        for _, data in recv_all(healthy):
            tracker.check(json.loads(data))
            received += 1
        backlog = [late_tracker.check(json.loads(d)) for _, d in recv_all(stalled, 200)]
        # it reads again: the next messages reach it, and seq tells it how many it missed
        after = []
        for k in range(20000, 20100):
            publish_steps(pub, 1, k)
            after += [late_tracker.check(json.loads(d)) for _, d in recv_all(stalled, 20)]
            if after:
                break
    finally:
        pub.close(linger_ms=0)
        stalled.close(0)
        healthy.close(0)
        ctx.term()
    assert pub.sent == 40000 + 2 * (k - 19999)
    # one overflow: the stalled subscriber never read again, so ZeroMQ never offered it messages again
    assert sum(pub.bus_overflows.values()) >= 1 and set(pub.bus_overflows) <= {"speech", "activity"}
    assert tracker.missed == {} and received == 40000  # the healthy subscriber lost nothing (before the tail)
    assert len(backlog) < 40000 and after and sum(late_tracker.missed.values()) == 40000 - len(backlog)


def test_crashed_subscriber_is_forgotten(port):
    endpoint = f"tcp://127.0.0.1:{port}"
    pub = Publisher(endpoint, None, "test", "m@0", hwm=50)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    wait_subscribed(pub)
    publish_steps(pub, 5)
    sub.close(0)  # gone without unsubscribing, as a killed process
    try:
        publish_steps(pub, 2000, 5)  # nothing blocks, nothing raises
        assert pub.sent == 4010
    finally:
        pub.close(linger_ms=0)
        ctx.term()


def test_late_joiner_gets_the_current_labels_at_once_then_the_stream(port):
    endpoint = f"tcp://127.0.0.1:{port}"
    pub = Publisher(endpoint, None, "test", "m@0")
    try:
        publish_steps(pub, 50)  # the stream is well under way, nobody listening
        ctx = zmq.Context()
        late = ctx.socket(zmq.SUB)
        late.setsockopt(zmq.SUBSCRIBE, b"activity")
        late.connect(endpoint)
        wait_subscribed(pub)
        publish_steps(pub, 1, 50)  # the next step; the welcome goes out before it
        got = recv_all(late)
        late.close(0)
        ctx.term()
    finally:
        pub.close(linger_ms=0)
    msgs = [json.loads(d) for _, d in got]
    assert [(m["topic"], m["seq"]) for m in msgs] == [("activity", 49), ("activity", 50)]
    assert msgs[0]["label"] == "quiet" and pub.welcomes == 1


def test_client_drops_the_welcome_repeat_and_reports_gaps(port):
    """A subscriber already connected sees the welcome meant for a later one as a repeat: dropped. A
    subscriber that misses messages learns how many from seq."""
    import threading

    endpoint = f"tcp://127.0.0.1:{port}"
    pub = Publisher(endpoint, None, "test", "m@0")
    first: list[dict] = []
    tracker = SeqTracker()
    th = threading.Thread(target=lambda: first.extend(subscribe(endpoint, ["speech"], timeout_s=2.0, tracker=tracker)))
    th.start()
    try:
        wait_subscribed(pub)
        publish_steps(pub, 10)
        ctx = zmq.Context()
        late = ctx.socket(zmq.SUB)
        late.setsockopt(zmq.SUBSCRIBE, b"speech")
        late.connect(endpoint)
        wait_subscribed(pub, 2)
        publish_steps(pub, 10, 10)
        late.close(0)
        ctx.term()
        th.join(10)
    finally:
        pub.close(linger_ms=0)
    assert [m["seq"] for m in first] == list(range(20))
    assert tracker.repeats == 1 and tracker.missed == {}
    t = SeqTracker()
    assert [t.check({"topic": "speech", "seq": s}) for s in (7, 8, 11, 11, 12, 0, 1)] == [0, 0, 2, -1, 0, 0, 0]
    assert t.missed == {"speech": 2}


def test_the_bus_carries_labels_never_raw_media(tmp_path):
    import numpy as np

    pub = Publisher(None, None, "test", "m@0")
    with pytest.raises(PublishError, match="not JSON"):
        pub.publish("speech", 0.1, 0.1, "speech", 0.9, {}, frame=np.zeros((120, 160, 3), np.uint8))
    with pytest.raises(PublishError, match="never raw frames or audio"):
        pub.publish("speech", 0.1, 0.1, "speech", 0.9, {}, audio=np.random.default_rng(0).uniform(-1, 1, 16000).tolist())
    # a model with many classes is fine: 300 classes of scores
    big = pub.publish("activity", 0.1, 0.1, "c0", 0.5, {f"class_{i}": 0.0033 for i in range(300)}, changed=False)
    assert len(big["scores"]) == 300
    with pytest.raises(PublishError, match="not JSON"):
        pub.publish("speech", 0.1, 0.1, "speech", 0.9, {}, pcm=b"\x00" * 100)


# security ------------------------------------------------------------------------------------------------

def test_keys_command_writes_mode_600_files(tmp_path):
    r = run_cli("keys", str(tmp_path / "keys"), "--client", "laptop", "--client", "dash")
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(tmp_path / "keys").as_posix() for p in (tmp_path / "keys").rglob("*") if p.is_file())
    assert files == ["clients/dash.key", "clients/laptop.key", "dash.key_secret", "laptop.key_secret",
                     "server.key", "server.key_secret"]
    for p in (tmp_path / "keys").rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    # a second run keeps the server's key pair (clients already given server.key keep working)
    before = (tmp_path / "keys" / "server.key").read_text()
    assert run_cli("keys", str(tmp_path / "keys"), "--client", "phone").returncode == 0
    assert (tmp_path / "keys" / "server.key").read_text() == before


@pytest.fixture
def curve_keys(tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys, ["allowed"])
    make_keys(tmp_path / "other", ["stranger"])  # a valid key pair that is not on the allow-list
    return keys, tmp_path / "other"


def test_curve_only_listed_clients_receive(curve_keys, port):
    """Real sockets on 127.0.0.1 forced into CURVE: the allowed client receives; a client with an unlisted
    key, and a client without CURVE, receive nothing."""
    keys, other = curve_keys
    endpoint = f"tcp://127.0.0.1:{port}"
    pub = Publisher(endpoint, None, "test", "m@0", keys=str(keys))
    ctx = zmq.Context()
    from stream.security import apply_client

    def sub(server_key=None, client_key=None):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        if client_key:
            apply_client(s, server_key, client_key)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(endpoint)
        return s

    allowed = sub(keys / "server.key", keys / "allowed.key_secret")
    stranger = sub(keys / "server.key", other / "stranger.key_secret")
    plain = sub()
    try:
        wait_subscribed(pub)
        for k in range(20):  # two seconds of steps, time for every handshake to succeed or fail
            publish_steps(pub, 1, k)
            time.sleep(0.1)
        got_allowed = recv_all(allowed, 300)
        got_stranger = recv_all(stranger, 300)
        got_plain = recv_all(plain, 300)
    finally:
        for s in (allowed, stranger, plain):
            s.close(0)
        pub.close(linger_ms=0)
        ctx.term()
    assert len(got_allowed) >= 30 and {t for t, _ in got_allowed} == {"speech", "activity"}
    assert got_stranger == [] and got_plain == []


def test_non_loopback_bind_requires_keys_or_insecure(port, caplog):
    with pytest.raises(ConfigError, match="not loopback.*--keys DIR.*--insecure"):
        Publisher(f"tcp://0.0.0.0:{port}", None, "test", "m@0")
    with caplog.at_level("WARNING"):
        pub = Publisher(f"tcp://0.0.0.0:{port}", None, "test", "m@0", insecure=True)
        pub.close(linger_ms=0)
    assert any("INSECURE" in r.message for r in caplog.records)
    assert is_local("tcp://127.0.0.1:5556") and is_local("tcp://[::1]:5556") and is_local("ipc:///tmp/x")
    assert not is_local("tcp://*:5556") and not is_local("tcp://eth0:5556") and not is_local("tcp://10.0.0.2:5556")


def test_cli_refuses_a_public_bind_without_keys(media, port):
    r = run_cli("replay", str(media["wav"]), "--publish", f"tcp://0.0.0.0:{port}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is not loopback" in r.stderr and "--keys" in r.stderr


def test_listen_with_keys_over_curve(curve_keys, media, port, tmp_path):
    """End to end: `replay --keys` publishes over CURVE, `listen --server-key --client-key` receives."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    keys, _ = curve_keys
    endpoint = f"tcp://127.0.0.1:{port}"
    listener = subprocess.Popen([sys.executable, "-m", "stream.cli", "listen", endpoint, "--until-end",
                                 "--timeout", "30", "--server-key", str(keys / "server.key"),
                                 "--client-key", str(keys / "allowed.key_secret")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    r = run_cli("replay", str(media["wav"]), "--publish", endpoint, "--keys", str(keys), "--wait-subscriber", "20")
    out, err = listener.communicate(timeout=40)
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(x) for x in out.splitlines()]
    assert msgs[-1]["topic"] == "status" and msgs[-1]["state"] == "end"
    assert [m["seq"] for m in msgs if m["topic"] == "speech"] == list(range(30))


def test_bad_key_files_are_clear_errors(tmp_path, media, port):
    (tmp_path / "keys").mkdir()
    r = run_cli("replay", str(media["wav"]), "--publish", f"tcp://127.0.0.1:{port}", "--keys", str(tmp_path / "keys"))
    assert r.returncode == 2 and "server key" in r.stderr and "actstream keys" in r.stderr
    make_keys(tmp_path / "k2")
    r = run_cli("replay", str(media["wav"]), "--publish", f"tcp://127.0.0.1:{port}", "--keys", str(tmp_path / "k2"))
    assert r.returncode == 2 and "no client public keys" in r.stderr
    os.chmod(tmp_path / "k2", 0o700)
