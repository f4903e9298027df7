"""Subscribe to a label stream: `for msg in subscribe("tcp://127.0.0.1:5556", topics=["speech"]): ...`

A subscriber that joins mid-stream first gets the last message of each topic it subscribed to (the current
label state), then the live stream. `SeqTracker` tells from the per-topic `seq` whether anything was missed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import zmq

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

    def check(self, msg: dict) -> int:
        topic, seq = msg.get("topic"), msg.get("seq")
        if not isinstance(seq, int):
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


def subscribe(endpoint: str, topics: Iterable[str] | None = None, timeout_s: float | None = None,
              ctx: zmq.Context | None = None, server_key: str | Path | None = None,
              client_key: str | Path | None = None, tracker: SeqTracker | None = None) -> Iterator[dict]:
    """Yield each message's payload (a dict) as it arrives, without repeats.

    topics: topic names to receive (None = all); timeout_s: stop when nothing arrives for this long
    (None = wait forever); server_key / client_key: the server's public key file and this client's key pair
    file, for a CURVE-secured stream; tracker: a SeqTracker to read gaps from (one is made if None).
    The first message per topic is the publisher's last one before this subscriber joined.
    """
    own = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    tracker = tracker if tracker is not None else SeqTracker()
    try:
        if server_key or client_key:
            from .security import apply_client

            apply_client(sock, server_key, client_key)
        sock.connect(endpoint)
        for topic in (topics or [""]):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        wanted = set(topics) if topics else None
        while True:
            if timeout_s is not None and not sock.poll(int(timeout_s * 1000)):
                return
            topic, payload = sock.recv_multipart()[:2]
            if wanted is not None and topic.decode() not in wanted:
                continue  # ZeroMQ matches prefixes; topics here are whole names
            msg = json.loads(payload)
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
