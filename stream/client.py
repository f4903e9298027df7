"""Subscribe to a label stream: `for msg in subscribe("tcp://127.0.0.1:5556", topics=["speech"]): ...`

A subscriber that joins mid-stream first gets the last message of each topic it subscribed to (the current
label state), then the live stream. `SeqTracker` tells from the per-topic `seq` whether anything was missed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import zmq

from actstream.common.errors import ConfigError
from actstream.stream.publish import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class SeqTracker:
    """Per-topic sequence bookkeeping on the receiving side.

    `check(msg)` returns how many messages of msg's topic were missed just before it (0 when in order), or
    -1 for a repeat of the message received last (the publisher's welcome to a later joiner reaches the
    subscribers already connected too). A seq that goes back to 0 is a restarted publisher, not a gap.
    `missed` holds the total per topic.
    """

    def __init__(self):
        self.last: dict[str, int] = {}
        self.missed: dict[str, int] = {}
        self.repeats = 0
        self.bad = 0  # messages subscribe() skipped: not [topic, JSON object], or too large

    def check(self, msg: dict) -> int:
        topic, seq = msg.get("topic"), msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(topic, str):
            return 0
        prev = self.last.get(topic)
        if prev is not None and seq == prev:
            self.repeats += 1
            return -1
        self.last[topic] = seq
        if prev is None or seq < prev:
            return 0  # first message (a late joiner starts anywhere) or a restarted stream
        gap = seq - prev - 1
        if gap:
            self.missed[topic] = self.missed.get(topic, 0) + gap
        return gap


MAX_FRAME_BYTES = MAX_MESSAGE_BYTES + 1024  # a label message is at most 64 KiB; room for CURVE's framing


def _non_finite(_: str) -> None:
    return None


def _float(text: str) -> float | None:
    x = float(text)
    return x if math.isfinite(x) else None  # 1e999 parses to inf: JSON has no such number


def decode(frames: list[bytes]) -> dict | None:
    """The payload of one [topic, JSON object] message, or None for anything else: one frame, a payload that
    is not UTF-8 JSON or not an object, a topic frame that differs from the payload's topic. NaN, Infinity
    and numbers beyond a double become None, so what comes out always encodes as valid JSON."""
    if len(frames) != 2 or len(frames[1]) > MAX_MESSAGE_BYTES:
        return None
    try:
        msg = json.loads(frames[1].decode("utf-8"), parse_constant=_non_finite, parse_float=_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(msg, dict) or msg.get("topic") != frames[0].decode("utf-8", "replace"):
        return None
    return msg


def subscribe(endpoint: str, topics: Iterable[str] | None = None, timeout_s: float | None = None,
              ctx: zmq.Context | None = None, server_key: str | Path | None = None,
              client_key: str | Path | None = None, tracker: SeqTracker | None = None) -> Iterator[dict]:
    """Yield each message's payload (a dict) as it arrives, without repeats.

    topics: topic names to receive (None = all); timeout_s: stop when nothing arrives for this long
    (None = wait forever); server_key / client_key: the server's public key file and this client's key pair
    file, for a CURVE-secured stream (both or neither); tracker: a SeqTracker to read gaps and `bad` (messages
    skipped because they were not [topic, JSON object]) from (one is made if None).
    The first message per topic is the publisher's last one before this subscriber joined. A frame over
    MAX_FRAME_BYTES drops the connection before it is buffered (ZeroMQ reconnects).
    """
    if bool(server_key) != bool(client_key):
        given, missing = ("--server-key", "--client-key") if server_key else ("--client-key", "--server-key")
        raise ConfigError(f"{given} was given without {missing}: a CURVE subscriber needs both, the server's "
                          f"public key (server.key) and its own key pair (NAME.key_secret)")
    from actstream.stream.security import parse_endpoint

    parse_endpoint(endpoint, bind=False)
    own = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    tracker = tracker if tracker is not None else SeqTracker()
    try:
        if server_key or client_key:
            from actstream.stream.security import apply_client

            apply_client(sock, server_key, client_key)
        sock.connect(endpoint)
        for topic in (topics or [""]):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        wanted = set(topics) if topics else None
        while True:
            if timeout_s is not None and not sock.poll(int(timeout_s * 1000)):
                return
            frames = sock.recv_multipart()
            if wanted is not None and frames[0].decode("utf-8", "replace") not in wanted:
                continue  # ZeroMQ matches prefixes; topics here are whole names
            msg = decode(frames)
            if msg is None:
                tracker.bad += 1
                if tracker.bad == 1 or tracker.bad % 1000 == 0:
                    log.warning("skipped %d message(s) that were not [topic, JSON object] (the last: %d frame(s), "
                                "%d bytes)", tracker.bad, len(frames), sum(len(f) for f in frames))
                continue
            gap = tracker.check(msg)
            if gap < 0:
                continue
            if gap:
                log.warning("%s: missed %d message(s) before seq %d", msg.get("topic"), gap, msg.get("seq"))
            yield msg
    finally:
        sock.close()
        if own:
            ctx.term()
