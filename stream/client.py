"""Subscribe to a label stream: `for msg in subscribe("tcp://127.0.0.1:5556", topics=["speech"]): ...`"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import zmq


def subscribe(endpoint: str, topics: Iterable[str] | None = None, timeout_s: float | None = None,
              ctx: zmq.Context | None = None) -> Iterator[dict]:
    """Yield each message's payload (a dict) as it arrives.

    topics: topic names to receive (None = all); timeout_s: stop when nothing arrives for this long
    (None = wait forever). A subscriber that joins late misses what was sent before it connected; compare
    `seq` per topic to detect gaps.
    """
    own = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
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
            yield json.loads(payload)
    finally:
        sock.close()
        if own:
            ctx.term()
