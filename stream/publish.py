"""Publish labels: a ZeroMQ PUB (XPUB) socket, multipart [topic, JSON], and an optional JSON-lines file.

Payload fields (schema.json has the contract): v, topic, seq (per topic, from 0, no gaps at the sender), t
(media seconds from the stream start), wall (Unix seconds the input was captured, or released by the
replay pacer), label, score, scores, source, model, and per topic a few more.

Socket handling:
- late joiners: the XPUB sees every subscription (XPUB_VERBOSE) and answers it with the last message of each
  topic the subscription matches, so a subscriber that joins mid-stream has the current labels at once.
  Subscribers already connected get that message a second time (same bytes); client.subscribe drops it.
- slow subscribers: the send high-water mark bounds each subscriber's queue; once a subscriber's queue is
  full, ZeroMQ drops for that subscriber only, until it has read down its queue. Each time that starts is
  counted per topic (`bus_overflows`; ZeroMQ does not say how many messages each subscriber then missed:
  the subscriber knows, from `seq`). The pipeline never blocks on a subscriber.
- security: a non-loopback bind needs CURVE keys (stream/security.py) or an explicit insecure flag.
- only labels: a message is a small JSON object; anything larger than MAX_MESSAGE_BYTES (raw frames or
  audio would be) is refused.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, IO

from .errors import PublishError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOPICS_FIXED = ("status",)
MAX_MESSAGE_BYTES = 65536  # a label message is ~300 bytes (~30 per class); a frame or a second of audio is far more


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
    The socket is an XPUB so the publisher can see subscriptions (`wait_for_subscriber`, late joiners);
    to subscribers it is an ordinary PUB. keys: a CURVE keys folder (stream/security.py) or None;
    insecure: allow a non-loopback bind without keys (warns).
    """

    def __init__(self, endpoint: str | None, out: str | Path | None, source: str, model: str, hwm: int = 1000,
                 keys: str | None = None, insecure: bool = False):
        from .security import check_bind

        self.endpoint = endpoint
        self.source = source
        self.model = model
        self.listeners: list = []  # callables taking each payload dict, after it is sent
        self._seq: dict[str, int] = {}
        self._last: dict[str, bytes] = {}  # topic -> last message sent, for late joiners
        self._ctx = self._sock = self._curve = None
        self._out: IO[bytes] | None = None
        self.out_path = Path(out) if out is not None else None
        self.out_error: str | None = None
        self.sent = 0
        self.bus_overflows: dict[str, int] = {}  # topic -> times a subscriber's queue was full
        self.welcomes = 0  # last-value messages sent to late joiners
        self._subscribers = 0
        if endpoint:
            check_bind(endpoint, keys, insecure)
        if out is not None:
            try:
                self._out = open(self.out_path, "wb")
            except OSError as exc:
                raise PublishError(f"cannot write --out {out}: {exc.strerror}: choose a writable path") from exc
        if endpoint:
            import zmq

            self._zmq = zmq
            self._ctx = zmq.Context()
            try:
                self._sock = self._ctx.socket(zmq.XPUB)
                self._sock.setsockopt(zmq.SNDHWM, hwm)
                self._sock.setsockopt(zmq.LINGER, 0)
                self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, so each late joiner is seen
                self._sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue says EAGAIN: overflows can be counted
                if keys:
                    from .security import CurveServer

                    self._curve = CurveServer(self._ctx, keys)
                    self._curve.apply(self._sock)
                self._sock.bind(endpoint)
            except zmq.ZMQError as exc:
                self.close()
                hint = ("another process is using it: stop it or pass --publish with another port"
                        if exc.errno == zmq.EADDRINUSE else "pass --publish tcp://127.0.0.1:PORT")
                raise PublishError(f"cannot bind {endpoint}: {exc.strerror}: {hint}") from exc
            except Exception:
                self.close()
                raise
            self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def _drain_subscriptions(self, timeout_ms: int = 0) -> None:
        zmq = self._zmq
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            msg = self._sock.recv()
            if msg[:1] == b"\x01":
                self._subscribers += 1
                self._welcome(msg[1:])
            elif msg[:1] == b"\x00":
                self._subscribers = max(0, self._subscribers - 1)
            timeout_ms = 0

    def _welcome(self, prefix: bytes) -> None:
        """Answer a subscription with the last message of each topic it matches (the current label state)."""
        for topic, data in self._last.items():
            if topic.encode().startswith(prefix):
                self._send(topic, data)
                self.welcomes += 1

    def _send(self, topic: str, data: bytes) -> None:
        zmq = self._zmq
        frames = [topic.encode(), data]
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            # some subscriber's queue is at the high-water mark: count it, then send to the others only
            self.bus_overflows[topic] = self.bus_overflows.get(topic, 0) + 1
            self._sock.setsockopt(zmq.XPUB_NODROP, 0)
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
            finally:
                self._sock.setsockopt(zmq.XPUB_NODROP, 1)

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
        try:
            data = encode(payload)
        except (TypeError, ValueError) as exc:
            raise PublishError(f"{topic}: a field is not JSON ({exc}): the label stream carries labels and "
                               f"numbers only") from exc
        if len(data) > MAX_MESSAGE_BYTES:
            raise PublishError(f"{topic}: message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}: the label "
                               f"stream carries labels, never raw frames or audio")
        if self._sock is not None:
            self._drain_subscriptions()
            self._send(topic, data)
            self._last[topic] = data
        if self._out is not None:
            self._write_out(data + b"\n", flush=topic == "status")
        for listener in self.listeners:  # in-process consumers: overlay, metrics, plots
            listener(payload)
        self.sent += 1
        return payload

    def _write_out(self, data: bytes, flush: bool) -> None:
        """Write to --out; on a full or failing disk, stop writing it (the bus keeps going) and keep the error."""
        try:
            self._out.write(data)
            if flush:
                self._out.flush()
        except OSError as exc:
            self._fail_out(exc)

    def _fail_out(self, exc: OSError) -> None:
        self.out_error = (f"writing --out {self.out_path} failed ({exc.strerror}): free some space or choose "
                          f"another path; the label stream kept publishing")
        log.error("%s", self.out_error)
        out, self._out = self._out, None
        try:
            out.close()
        except OSError:
            pass  # the buffered tail cannot be written either

    def close(self, linger_ms: int = 500) -> None:
        """Flush the file, give queued messages up to linger_ms to leave, close the socket. Idempotent."""
        if self._out is not None:
            try:
                self._out.flush()
                os.fsync(self._out.fileno())
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # fsync on a pipe or character device: nothing to sync
                    self._fail_out(exc)
            if self._out is not None:
                self._out.close()
                self._out = None
        if self._sock is not None:
            self._sock.setsockopt(self._zmq.LINGER, linger_ms)
            self._sock.close()
            self._sock = None
        if self._curve is not None:
            self._curve.close()
            self._curve = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
