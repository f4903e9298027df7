"""One endpoint for subscribers of many publishers: the forwarder, and a publisher's feed into it.

ZeroMQ's own proxy (XSUB in, XPUB out) joins publishers into one endpoint, but it breaks the late-joiner
answer: its XPUB passes a topic's first subscription upstream and no later one, so a subscriber that joins
mid-stream gets nothing until the next message. The forwarder is the ZeroMQ guide's last-value cache instead:
it subscribes to everything its publishers send (the shards of `serve --cluster`, each a many-stream
process), keeps the last message of every topic, and answers each subscription with the last message of every
topic it matches, so a late joiner gets the current state of every stream at once, as from one process.

Its subscriber side is a Publisher (stream/publish.py) fed with the messages as they came: the same bounds on
peers (1 KiB inbound frames, handshake within 5 s, queued subscriptions, bytes per connection), the same
high-water mark and overflow counting for slow subscribers, the same CURVE keys and allow-list, and the same
refusal of a non-loopback bind without keys. Its publisher side (`inbound`) takes only label messages:
[topic, JSON object] whose payload starts with the schema version and that topic, at most 64 KiB; anything
else is dropped and counted. Over CURVE, publishers are clients of the same keys folder (a client key, e.g.
`actstream keys DIR --client shard`). At most MAX_LAST_VALUES topics are kept (the least recently updated is
forgotten past that).
"""

from __future__ import annotations

import logging
import re
import threading
import time

from actstream.stream.publish import HANDSHAKE_MS, MAX_MESSAGE_BYTES, SCHEMA_VERSION, Publisher
from actstream.common.closing import close_parts

log = logging.getLogger(__name__)

INBOUND_HWM = 10_000  # messages queued per publisher in the forwarder before ZeroMQ stops reading it (~1 s of 300 streams)
FEED_HWM = 10_000  # messages a feed queues while the forwarder is slow or away; past it they are dropped
TOPIC = re.compile(rb"[A-Za-z][A-Za-z0-9_-]{0,31}(/[A-Za-z0-9_-]{1,64}/)?\Z")  # schema.json's topic pattern
DRAIN = 1000  # messages passed on between two looks at the subscriptions


def label_message(topic: bytes, data: bytes) -> bool:
    """A message the forwarder passes on: a schema topic and a payload of at most MAX_MESSAGE_BYTES that is a
    JSON object starting with this schema version and that topic (as every publisher here encodes it). The full
    JSON is not parsed: subscribers check what they decode (client.decode)."""
    return (len(data) <= MAX_MESSAGE_BYTES and TOPIC.match(topic) is not None and data.endswith(b"}")
            and data.startswith(b'{"v":%d,"topic":"%s",' % (SCHEMA_VERSION, topic)))


class Forwarder(Publisher):
    """endpoint: where subscribers connect (XPUB, as a publisher's); inbound: where publishers connect (XSUB);
    keys/insecure: as the bus (stream/security.py), for both; hwm: each subscriber's send high-water mark.

    One thread (the Publisher's bus thread) owns both sockets: it passes each message from the XSUB straight to
    the XPUB and keeps it as its topic's last message, and answers subscriptions as a publisher's bus does."""

    def __init__(self, endpoint: str, inbound: str, keys: str | None = None, insecure: bool = False,
                 hwm: int = 1000):
        import zmq

        from actstream.common.errors import PublishError
        from actstream.stream.security import check_bind

        check_bind(inbound, keys, insecure)
        self.passed = self.rejected = 0  # messages passed on; dropped as not label messages
        self._in_ctx = zmq.Context()
        self._in_curve = None
        self._in = self._in_ctx.socket(zmq.XSUB)
        try:
            self._in.setsockopt(zmq.LINGER, 0)
            self._in.setsockopt(zmq.RCVHWM, INBOUND_HWM)
            self._in.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES + 1024)
            self._in.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
            if keys:
                from actstream.stream.security import CurveServer

                self._in_curve = CurveServer(self._in_ctx, keys)
                self._in_curve.apply(self._in)
            self._in.bind(inbound)
            self._in.send(b"\x01")  # subscribe to everything: every topic's last message is kept
            self.inbound = self._in.getsockopt(zmq.LAST_ENDPOINT).decode()
        except zmq.ZMQError as exc:
            self._close_inbound()
            raise PublishError(f"cannot bind the forwarder's inbound endpoint {inbound}: {exc.strerror}: "
                               f"pass --inbound tcp://127.0.0.1:PORT with a free port") from exc
        except Exception:
            self._close_inbound()
            raise
        try:
            super().__init__(endpoint, None, "forward", "", hwm, keys=keys, insecure=insecure)
        except Exception:
            self._close_inbound()
            raise

    def _run_bus(self) -> None:
        """The bus thread: messages from the publishers on to the subscribers, subscriptions answered with the
        last messages; until close()."""
        zmq = self._zmq
        poller = zmq.Poller()
        for sock in (self._rx, self._sock, self._in):
            poller.register(sock, zmq.POLLIN)
        inbound, last, welcomed, send = self._in, self._last, self._welcomed, self._send
        try:
            while True:
                events = dict(poller.poll(1000))
                if self._rx in events:
                    return  # close()
                if inbound in events:
                    for _ in range(DRAIN):  # then subscriptions get their turn
                        try:
                            frames = inbound.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if len(frames) != 2 or not label_message(frames[0], frames[1]):
                            self._reject()
                            continue
                        topic = frames[0].decode()
                        send(topic, frames[1])
                        last[topic] = frames[1]
                        welcomed.discard(topic)
                        self.passed += 1
                if self._sock in events:
                    self._drain_subscriptions()
        except zmq.ZMQError as exc:  # pragma: no cover - the context went away under it
            log.error("the forwarder stopped: %s", exc)

    def _reject(self) -> None:
        self.rejected += 1
        if self.rejected in (1, 1000) or self.rejected % 100_000 == 0:
            log.warning("forwarder: dropped %d message(s) that were no label messages", self.rejected)

    def _close_inbound(self) -> None:
        close_parts(self, "_in", "_in_curve", "_in_ctx")

    def close(self, linger_ms: int = 500) -> None:
        """Stop passing messages on, close both sides. Idempotent."""
        super().close(linger_ms)
        self._close_inbound()


class Feed:
    """A publisher's connection into a forwarder's inbound endpoint. `send(topic, data)` never blocks: while the
    forwarder is slow or away, up to FEED_HWM messages wait, then they are dropped (ZeroMQ reconnects by
    itself). Any thread may send (a lock orders them). curve: (server public key, client public key, client
    secret key), Z85 bytes, for a forwarder with keys."""

    def __init__(self, inbound: str, curve: tuple[bytes, bytes, bytes] | None = None, hwm: int = FEED_HWM):
        import zmq

        from actstream.stream.security import parse_endpoint

        parse_endpoint(inbound, bind=False)
        self._zmq = zmq
        self._lock = threading.Lock()
        self._ctx = zmq.Context()
        # an XPUB, not a PUB: it sees the forwarder's subscription, so `wait_ready` knows when nothing is lost
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        if curve:
            self._sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
            self._sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
            self._sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
        self._sock.connect(inbound)
        self.sent = 0

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the forwarder has subscribed (what is sent before that is lost); False after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._sock.poll(0):
                    return self._sock.recv()[:1] == b"\x01"
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.02, left))

    def send(self, topic: str, data: bytes) -> None:
        with self._lock:
            self._sock.send_multipart([topic.encode(), data], self._zmq.NOBLOCK)
            self.sent += 1

    def close(self, linger_ms: int = 500) -> None:
        """Give queued messages up to linger_ms to leave, then close. Idempotent."""
        with self._lock:
            if self._sock is not None:
                self._sock.setsockopt(self._zmq.LINGER, linger_ms)
                self._sock.close()
                self._sock = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None


def feed_keys(keys: str, client: str) -> tuple[bytes, bytes, bytes]:
    """A feed's CURVE keys from a keys folder: its server public key and the key pair of `client`
    (DIR/CLIENT.key_secret, made by `actstream keys DIR --client CLIENT`, whose public key the forwarder allows)."""
    from pathlib import Path

    from actstream.common.errors import ConfigError
    from actstream.stream.security import SERVER, load_pair

    server, _ = load_pair(Path(keys) / f"{SERVER}.key", "server public key")
    public, secret = load_pair(Path(keys) / f"{client}.key_secret", "publisher key")
    if secret is None:
        raise ConfigError(f"{Path(keys) / (client + '.key_secret')} holds no secret key: make it with "
                          f"`actstream keys {keys} --client {client}`")
    return server, public, secret
