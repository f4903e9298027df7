"""The forwarder (stream/forward.py): many publishers into one endpoint, every topic's last message for late
joiners, only label messages through, bounded and CURVE-secured like the bus. Real sockets on loopback."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from actstream.common.errors import ConfigError
from actstream.stream.forward import Feed, Forwarder, feed_keys
from actstream.stream.publish import encode
from actstream.stream.security import make_keys
from tests.conftest import run_cli

LOCAL = "tcp://127.0.0.1:*"


def label(topic: str, seq: int) -> bytes:
    head, _, rest = topic.partition("/")
    return encode({"v": 1, "topic": topic, "seq": seq, "t": seq / 10, "wall": 0.0, "label": "x", "score": 1.0,
                   "scores": {"x": 1.0}, "source": "s", "model": "m@0", "stream": rest.strip("/"), "head": head})


def subscriber(endpoint: str, prefix: bytes = b"", curve: tuple | None = None):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve:
        for opt, key in zip((zmq.CURVE_SERVERKEY, zmq.CURVE_PUBLICKEY, zmq.CURVE_SECRETKEY), curve):
            sock.setsockopt(opt, key)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    return ctx, sock


def received(sock, until, timeout_s: float = 10.0) -> list[tuple[str, dict]]:
    """Messages until `until(messages)` holds (or the deadline passes)."""
    got: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(got):
        if sock.poll(50):
            topic, data = sock.recv_multipart()
            got.append((topic.decode(), json.loads(data)))
    return got


def wait_passed(fwd: Forwarder, n: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fwd.passed + fwd.rejected < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fwd.passed + fwd.rejected >= n


def test_a_late_joiner_gets_every_streams_current_state_at_once_from_many_publishers():
    """Three publishers (as three shards), two streams each with three topics; a subscriber that joins after
    they have published gets the last message of each of the 18 topics at once, then the live stream. A plain
    XSUB/XPUB proxy would give it nothing until the next message."""
    fwd = Forwarder(LOCAL, LOCAL)
    feeds = [Feed(fwd.inbound) for _ in range(3)]
    try:
        assert all(f.wait_ready(10) for f in feeds)
        topics = {i: [f"{h}/s{i}{j}/" for j in range(2) for h in ("speech", "action", "status")] for i in range(3)}
        for seq in range(5):
            for i, feed in enumerate(feeds):
                for topic in topics[i]:
                    feed.send(topic, label(topic, seq))
        wait_passed(fwd, 90)
        ctx, sock = subscriber(fwd.endpoint)
        try:
            welcome = received(sock, lambda got: len(got) >= 18)
            assert sorted(t for t, _ in welcome) == sorted(t for ts in topics.values() for t in ts)
            assert {m["seq"] for _, m in welcome} == {4}  # the current state, not history
            feeds[1].send("speech/s10/", label("speech/s10/", 5))
            live = received(sock, lambda got: len(got) >= 1)
            assert [(t, m["seq"]) for t, m in live] == [("speech/s10/", 5)]
        finally:
            sock.close(0)
            ctx.term()
        # as from one process, a last message is re-sent once (a subscription flood must not multiply the
        # traffic of every subscriber): the next joiner gets each topic's next one; here, of one stream's prefix
        feeds[2].send("action/s21/", label("action/s21/", 5))
        wait_passed(fwd, 92)
        ctx, sock = subscriber(fwd.endpoint, b"action/s21/")
        try:
            assert [(t, m["seq"]) for t, m in received(sock, lambda got: len(got) >= 1)] == [("action/s21/", 5)]
        finally:
            sock.close(0)
            ctx.term()
    finally:
        for f in feeds:
            f.close()
        fwd.close()


def test_only_label_messages_pass_and_the_rest_are_counted():
    fwd = Forwarder(LOCAL, LOCAL)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.XPUB)  # a careless or hostile local publisher (an XPUB: it sees the subscription)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(fwd.inbound)
    ctx2, sock = subscriber(fwd.endpoint)
    try:
        assert raw.poll(10000) and raw.recv() == b"\x01"  # the forwarder subscribed: nothing sent now is lost
        bad = [[b"speech/a/", b"not json"],
               [b"speech/a/", label("speech/b/", 0)],  # topic frame and payload disagree
               [b"speech/a/", label("speech/a/", 0), b"third frame"],
               [b"../etc/", b'{"v":1,"topic":"../etc/",}']]  # not a schema topic
        for frames in bad:
            raw.send_multipart(frames)
        raw.send_multipart([b"speech/a/", label("speech/a/", 7)])
        got = received(sock, lambda got: len(got) >= 1)
        wait_passed(fwd, 5)
        assert [(t, m["seq"]) for t, m in got] == [("speech/a/", 7)]
        assert fwd.passed == 1 and fwd.rejected == 4
        # a frame over 64 KiB never reaches the forwarder's code: ZeroMQ drops that connection unread
        raw.send_multipart([b"speech/a/", label("speech/a/", 8)[:-1] + b" " * 70000 + b"}"])
        # (the last-value cache may hand seq 7 once more: a subscription the forwarder handles after passing it)
        assert not [m for _, m in received(sock, lambda got: False, timeout_s=1) if m["seq"] != 7]
        assert fwd.passed == 1
    finally:
        for s, c in ((raw, ctx), (sock, ctx2)):
            s.close(0)
            c.term()
        fwd.close()


def test_over_curve_only_allowed_publishers_and_subscribers_get_through(tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys, ["shard", "dash"])
    make_keys(tmp_path / "other", ["stranger"])
    fwd = Forwarder("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", keys=str(keys))  # test traffic stays on loopback
    port = lambda ep: ep.rsplit(":", 1)[1]  # noqa: E731
    out, inbound = f"tcp://127.0.0.1:{port(fwd.endpoint)}", f"tcp://127.0.0.1:{port(fwd.inbound)}"
    shard = Feed(inbound, feed_keys(str(keys), "shard"))
    stranger_feed = Feed(inbound, (feed_keys(str(keys), "shard")[0], *feed_keys(str(tmp_path / "other"),
                                                                                "stranger")[1:]))
    dash = subscriber(out, curve=(feed_keys(str(keys), "dash")))
    nosy = subscriber(out, curve=(feed_keys(str(keys), "shard")[0], *feed_keys(str(tmp_path / "other"),
                                                                              "stranger")[1:]))
    try:
        assert shard.wait_ready(10) and not stranger_feed.wait_ready(1)
        for seq in range(3):
            stranger_feed.send("speech/x/", label("speech/x/", seq))
            shard.send("speech/a/", label("speech/a/", seq))
        got = received(dash[1], lambda got: any(m["seq"] == 2 for _, m in got))
        wait_passed(fwd, 3)  # the forwarder counts a message after sending it
        assert {t for t, _ in got} == {"speech/a/"} and fwd.passed == 3
        assert received(nosy[1], lambda got: False, timeout_s=1) == []
    finally:
        for ctx, sock in (dash, nosy):
            sock.close(0)
            ctx.term()
        shard.close()
        stranger_feed.close()
        fwd.close()


def test_a_non_loopback_bind_without_keys_is_refused(free_tcp_port_pair=None):
    with pytest.raises(ConfigError, match="not loopback"):
        Forwarder(LOCAL, "tcp://0.0.0.0:*")
    with pytest.raises(ConfigError, match="not loopback"):
        Forwarder("tcp://0.0.0.0:*", LOCAL)
    r = run_cli("forward", "--publish", "tcp://0.0.0.0:5999", "--inbound", "tcp://127.0.0.1:5998")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not loopback" in r.stderr, r.stderr


def test_actstream_forward_runs_alone_and_counts_what_it_passed():
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    endpoint, inbound = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "actstream.cli", "forward", "--publish", endpoint, "--inbound",
                             inbound, "--seconds", "30"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    feed = Feed(inbound)
    ctx, sock = subscriber(endpoint, b"speech/")
    try:
        assert feed.wait_ready(20), "the forwarder never subscribed"
        feed.send("speech/door/", label("speech/door/", 0))
        got = received(sock, lambda got: len(got) >= 1, timeout_s=20)
        assert [(t, m["seq"]) for t, m in got] == [("speech/door/", 0)]
    finally:
        sock.close(0)
        ctx.term()
        feed.close()
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "forwarded 1 message(s), dropped 0" in err, err
