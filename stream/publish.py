"""Publish labels: a ZeroMQ PUB (XPUB) socket, multipart [topic, JSON], and an optional JSON-lines file.

Payload fields (schema.json has the contract): v, topic, seq (per topic, from 0, no gaps at the sender), t
(media seconds from the stream start), wall (Unix seconds the input was captured, or released by the
replay pacer), label, score, scores, source, model, and per topic a few more.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, IO

from .errors import PublishError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOPICS_FIXED = ("status",)


def _round(x: Any) -> Any:
    """4 decimals for probabilities and seconds: stable bytes, more precision than any label needs."""
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class Publisher:
    """Numbers, encodes and sends messages; writes each to `out` too, in publish order.

    endpoint: ZeroMQ bind address or None; out: JSON-lines path or None; hwm: send high-water mark.
    The socket is an XPUB so the publisher can see subscriptions (`wait_for_subscriber`); to subscribers
    it is an ordinary PUB.
    """

    def __init__(self, endpoint: str | None, out: str | Path | None, source: str, model: str, hwm: int = 1000):
        self.endpoint = endpoint
        self.source = source
        self.model = model
        self._seq: dict[str, int] = {}
        self._ctx = self._sock = None
        self._out: IO[bytes] | None = None
        self.sent = 0
        self._subscribers = 0
        if out is not None:
            out = Path(out)
            try:
                self._out = open(out, "wb")
            except OSError as exc:
                raise PublishError(f"cannot write --out {out}: {exc.strerror}: choose a writable path") from exc
        if endpoint:
            import zmq

            self._zmq = zmq
            self._ctx = zmq.Context()
            self._sock = self._ctx.socket(zmq.XPUB)
            self._sock.setsockopt(zmq.SNDHWM, hwm)
            self._sock.setsockopt(zmq.LINGER, 0)
            try:
                self._sock.bind(endpoint)
            except zmq.ZMQError as exc:
                self.close()
                hint = ("another process is using it: stop it or pass --publish with another port"
                        if exc.errno == zmq.EADDRINUSE else "pass --publish tcp://127.0.0.1:PORT")
                raise PublishError(f"cannot bind {endpoint}: {exc.strerror}: {hint}") from exc
            self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def _drain_subscriptions(self, timeout_ms: int = 0) -> None:
        zmq = self._zmq
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            msg = self._sock.recv()
            if msg[:1] == b"\x01":
                self._subscribers += 1
            elif msg[:1] == b"\x00":
                self._subscribers = max(0, self._subscribers - 1)
            timeout_ms = 0

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Block until at least one subscription arrives (or timeout): no message is lost to a slow joiner."""
        if self._sock is None:
            return False
        deadline = time.monotonic() + timeout_s
        while self._subscribers == 0 and time.monotonic() < deadline:
            self._drain_subscriptions(timeout_ms=int(max(1, (deadline - time.monotonic()) * 1000)))
        return self._subscribers > 0

    def publish(self, topic: str, t: float, wall: float, label: str | None, score: float | None,
                scores: dict[str, float], **extra: Any) -> dict:
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        payload = {"v": SCHEMA_VERSION, "topic": topic, "seq": seq, "t": round(t, 4), "wall": round(wall, 4),
                   "label": label, "score": _round(score), "scores": _round(scores), "source": self.source,
                   "model": self.model, **_round(extra)}
        data = encode(payload)
        if self._sock is not None:
            try:
                self._sock.send_multipart([topic.encode(), data], flags=self._zmq.NOBLOCK)
            except self._zmq.Again:
                pass  # PUB drops at the high-water mark by design; XPUB with NOBLOCK says so instead
        if self._out is not None:
            try:
                self._out.write(data + b"\n")
            except OSError as exc:
                raise PublishError(f"writing --out failed: {exc.strerror}") from exc
        self.sent += 1
        return payload

    def close(self, linger_ms: int = 500) -> None:
        """Flush the file, give queued messages up to linger_ms to leave, close the socket. Idempotent."""
        if self._out is not None:
            try:
                self._out.close()
            finally:
                self._out = None
        if self._sock is not None:
            self._sock.setsockopt(self._zmq.LINGER, linger_ms)
            self._sock.close()
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
