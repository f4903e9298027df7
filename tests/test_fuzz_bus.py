"""Fuzzing the bus with hypothesis: a live Publisher on loopback takes random frames and commands from a raw
ZMTP peer (a well-formed NULL greeting and READY first) and random bytes from a raw TCP peer, and keeps
publishing to a good subscriber: every message arrives, in order, and nothing raises or aborts.

The unmarked tests run 150 inputs each; the slow-marked ones 10^5 each (`make test-slow`; set
ACTSTREAM_FUZZ_EXAMPLES to change that)."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from actstream.stream.client import SeqTracker
from actstream.stream.publish import Publisher
from tests import zmtp
from tests.conftest import free_port
from tests.test_fuzz import FAST, SLOW


class Bus:
    """One Publisher and one good subscriber for a whole test; `check()` publishes a message and expects it."""

    def __init__(self):
        self.port = free_port()
        self.pub = Publisher(f"tcp://127.0.0.1:{self.port}", None, "fuzz", "m@0")
        self.ctx = zmq.Context()
        self.good = self.ctx.socket(zmq.SUB)
        self.good.setsockopt(zmq.LINGER, 0)
        self.good.setsockopt(zmq.SUBSCRIBE, b"speech")
        self.good.connect(f"tcp://127.0.0.1:{self.port}")
        self.tracker = SeqTracker()
        self.k = 0
        assert self.pub.wait_for_subscriber(10)

    def check(self) -> None:
        """Publish one message; the good subscriber must get it, after any welcome repeat of the one before
        (a random frame can be a subscription), with no gap."""
        seq = self.pub.publish("speech", self.k / 10, self.k / 10, "speech", 0.9,
                               {"speech": 0.9, "no_speech": 0.1})["seq"]
        self.k += 1
        while self.tracker.last.get("speech") != seq:
            assert self.good.poll(10000), f"the good subscriber got nothing for 10 s, waiting for seq {seq}"
            frames = self.good.recv_multipart()
            assert self.tracker.check(json.loads(frames[1])) in (0, -1)
        assert self.tracker.missed == {}

    def close(self) -> None:
        self.good.close(0)
        self.pub.close(linger_ms=0)
        self.ctx.term()


@pytest.fixture(scope="module")
def bus():
    b = Bus()
    yield b
    b.close()


def send_and_close(port: int, data: bytes) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        pytest.fail("the publisher stopped accepting connections")
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, no TIME_WAIT pile-up
        s.sendall(data)
    except OSError:
        pass  # dropped by the publisher mid-send: what it should do with garbage
    finally:
        s.close()


NAMES = st.sampled_from([b"READY", b"SUBSCRIBE", b"CANCEL", b"PING", b"PONG", b"ERROR", b"HELLO", b"INITIATE",
                         b"MESSAGE", b"WELCOME", b""]) | st.binary(max_size=12)


@st.composite
def zmtp_frames(draw) -> bytes:
    """A sequence of frames: subscriptions, (un)known commands, random flags, sizes that lie."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["sub", "unsub", "message", "command", "raw_flags", "lying_size"]))
        if kind == "sub":
            out += zmtp.subscription(draw(st.binary(max_size=40)))
        elif kind == "unsub":
            out += zmtp.frame(b"\x00" + draw(st.binary(max_size=40)))
        elif kind == "message":
            out += zmtp.frame(draw(st.binary(max_size=300)), more=draw(st.booleans()))
        elif kind == "command":
            out += zmtp.command(draw(NAMES), draw(st.binary(max_size=64)))
        elif kind == "raw_flags":
            body = draw(st.binary(max_size=64))
            out += bytes([draw(st.integers(0, 255)), len(body)]) + body
        else:
            out += zmtp.frame_header(draw(st.sampled_from([0, 1, 1023, 1024, 1025, 1 << 20, 1 << 30, 1 << 62,
                                                            (1 << 64) - 1])), command=draw(st.booleans()))
            out += draw(st.binary(max_size=64))
    return bytes(out)


def zmtp_case(bus: Bus, frames: bytes) -> None:
    send_and_close(bus.port, zmtp.greeting(b"NULL") + zmtp.ready(b"SUB") + frames)
    bus.check()


def tcp_case(bus: Bus, data: bytes) -> None:
    send_and_close(bus.port, data)
    bus.check()


RANDOM_TCP = st.one_of(st.binary(min_size=1, max_size=512),
                       st.binary(max_size=200).map(lambda b: zmtp.greeting(b"NULL")[:11] + b),  # signature, then junk
                       st.binary(max_size=200).map(lambda b: zmtp.greeting(b"CURVE") + b))


@FAST
@given(frames=zmtp_frames())
def test_fuzz_bus_raw_zmtp_peer(bus, frames):
    zmtp_case(bus, frames)


@FAST
@given(data=RANDOM_TCP)
def test_fuzz_bus_raw_tcp_peer(bus, data):
    tcp_case(bus, data)


@pytest.mark.slow
@SLOW
@given(frames=zmtp_frames())
def test_fuzz_bus_raw_zmtp_peer_1e5(bus, frames):
    zmtp_case(bus, frames)


@pytest.mark.slow
@SLOW
@given(data=RANDOM_TCP)
def test_fuzz_bus_raw_tcp_peer_1e5(bus, data):
    tcp_case(bus, data)
