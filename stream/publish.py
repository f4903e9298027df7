"""Publish labels: a ZeroMQ PUB (XPUB) socket, multipart [topic, JSON], and an optional JSON-lines file.

Payload fields (schema.json has the contract): v, topic, seq (per topic, from 0, no gaps at the sender), t
(media seconds from the stream start), wall (Unix seconds the input was captured, or released by the
replay pacer), label, score, scores, source, model, and per topic a few more.

Socket handling:
- a bus thread owns the XPUB: publish() hands each message to it over an inproc pair and returns; the
  thread sends, reads subscriptions and answers late joiners. What peers make ZeroMQ do (it takes their
  subscriptions in inside the calls of the socket's owner) then never runs on the step loop.
- late joiners: the XPUB sees every subscription (XPUB_VERBOSE) and answers it with the last message of each
  topic the subscription matches, so a subscriber that joins mid-stream has the current labels at once.
  Subscribers already connected get that message a second time (same bytes); client.subscribe drops it.
- slow subscribers: the send high-water mark bounds each subscriber's queue; once a subscriber's queue is
  full, ZeroMQ drops for that subscriber only, until it has read down its queue. Each time that starts is
  counted per topic (`bus_overflows`; ZeroMQ does not say how many messages each subscriber then missed:
  the subscriber knows, from `seq`). The pipeline never blocks on a subscriber.
- security: a non-loopback bind needs CURVE keys (stream/security.py) or an explicit insecure flag.
- hostile peers: what a peer can make the publisher hold is bounded before and after authentication. An
  inbound frame (a handshake command or a subscription) over MAX_INBOUND_BYTES drops that connection before
  it is buffered (ZMQ_MAXMSGSIZE); a handshake not finished in HANDSHAKE_MS drops it too; each peer has at
  most INBOUND_HWM subscription messages queued and PEER_RCVBUF bytes in the kernel. Connections are bounded
  by stream/peers.py: at most max_peers at once, ACCEPT_RATE new ones a second, and what a TCP connection
  sends in all (PEER_BYTES + PEER_BYTES_PER_S of its age). A subscription that cannot match a topic
  (SUBSCRIPTION), or one more distinct one than MAX_TOPICS, drops the connection that sent it, so ZeroMQ's
  subscription trie holds little but real topics. A topic's last message is re-sent to late joiners at most
  once per message, so a subscription flood cannot multiply the traffic every subscriber receives.
- only labels: a message is a small JSON object; anything larger than MAX_MESSAGE_BYTES (raw frames or
  audio would be) is refused.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, IO

from actstream.common.errors import PublishError
from actstream.common.files import shown_path
from actstream.stream.peers import PeerGuard, message_fd, peer_limit
from actstream.common.closing import close_parts

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 65536  # a label message is ~300 bytes (~30 per class); a frame or a second of audio is far more
# What a peer may send us: subscriptions (1 byte + a topic prefix) and, on CURVE, handshake commands (INITIATE is
# ~300 bytes with its metadata; 512 is the least that works with libzmq 4.3). 1 KiB refuses a 1 GiB claim at
# once, before any byte of it is buffered, on any mechanism and before authentication.
MAX_INBOUND_BYTES = 1024
HANDSHAKE_MS = 5000  # a peer that has not finished the ZMTP (and CURVE) handshake by then is dropped
# Subscription messages ZeroMQ queues per peer before it stops reading from it (TCP pushes back). ZeroMQ puts
# what is queued in its subscription trie before the bus thread sees any of it: this is what one peer can add
# before its first subscription that matches no topic drops it.
INBOUND_HWM = 10
MAX_SUBSCRIPTIONS_PER_SEND = 200  # (un)subscriptions the bus thread reads between two looks at outgoing messages
# What one TCP connection may send in all: a subscriber sends a greeting, a handshake and a few subscriptions
# (well under 4 KiB), then only heartbeats if it sets them. Past this budget the connection is dropped, and
# what it subscribed with it.
PEER_BYTES = 16 * 1024
PEER_RCVBUF = 16 * 1024  # kernel receive buffer per connection: what is still read after a drop (Linux doubles it)
PEER_BYTES_PER_S = 256  # the budget grows with the connection's age, for heartbeats
# What a subscription may be: a prefix of a topic that can exist (HEAD or status, HEAD/ID/ of a stream of
# `serve`: engines.bundle.HEAD_NAME, stream.streamsfile.STREAM_ID), "" for all. A peer that sends anything
# else is dropped: ZeroMQ keeps every subscription in one trie for all peers, and removing a peer walks all
# of it, so distinct junk from N peers cost N^2 (200 peers of 150 x 100 bytes held the bus 18 s).
SUBSCRIPTION = re.compile(rb"(?:[A-Za-z][A-Za-z0-9_-]{0,31}(?:/(?:[A-Za-z0-9_-]{1,64}/?)?)?)?\Z")
MAX_TOPICS = 1024  # distinct subscriptions held at once (<= 100,000 trie nodes, ~5 MB); a peer past it is dropped
HANDOFF_HWM = 50000  # messages between the step loop and the bus thread (~100 s of a busy stream); past it, dropped
MAX_LAST_VALUES = 100_000  # last messages kept for late joiners (4 topics a stream: 25,000 streams; ~30 MB of labels)


class LastValues(OrderedDict):
    """topic -> its last message, for late joiners, at most MAX_LAST_VALUES: a new topic past that forgets the topic
    updated least recently (a stream removed long ago), so streams that come and go for months, or a forwarder's
    publishers, cannot make it grow without bound."""

    def __setitem__(self, topic, message) -> None:
        super().__setitem__(topic, message)
        self.move_to_end(topic)
        if len(self) > MAX_LAST_VALUES:
            self.popitem(last=False)


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
    insecure: allow a non-loopback bind without keys (warns); max_peers: connections held at once (0: chosen
    from the open-file limit, stream/peers.py).
    """

    def __init__(self, endpoint: str | None, out: str | Path | None, source: str, model: str, hwm: int = 1000,
                 keys: str | None = None, insecure: bool = False, max_peers: int = 0):
        from actstream.stream.security import check_bind

        self.endpoint = endpoint
        self.source = source
        self.model = model
        self.listeners: list = []  # callables taking each payload dict, after it is sent
        self._seq: dict[str, int] = {}
        self._last: dict[str, bytes] = LastValues()  # topic -> last message sent, for late joiners
        self._ctx = self._sock = self._curve = self._guard = self._tx = self._rx = self._bus = None
        self._subscribed = threading.Event()
        self.handoff_drops = 0  # messages the bus thread was too far behind to take (HANDOFF_HWM)
        self.forwarded = 0  # messages the bus thread has sent on (publish() has handed over `sent`)
        self._out: IO[bytes] | None = None
        self.out_path = Path(out) if out is not None else None
        self.out_error: str | None = None
        self.sent = 0
        self.bus_overflows: dict[str, int] = {}  # topic -> times a subscriber's queue was full
        self.welcomes = 0  # last-value messages sent to late joiners
        self._subscribers = 0
        self._welcomed: set[str] = set()  # topics whose last message was re-sent since it was published
        self.subscriptions = 0  # subscription messages received (joins, and whatever a peer sends)
        self.refused_subscriptions = 0  # subscriptions that matched no topic, or past MAX_TOPICS: their peer dropped
        self._topics: set[bytes] = set()  # distinct subscriptions held (each dropped when ZeroMQ says it is gone)
        if endpoint:
            check_bind(endpoint, keys, insecure)
            max_peers = peer_limit(max_peers)
        if out is not None:
            try:
                self._out = open(self.out_path, "wb")
            except OSError as exc:
                raise PublishError(f"cannot write --out {shown_path(out)}: {exc.strerror}: choose a writable "
                                   f"path") from exc
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
                self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
                self._sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
                self._sock.setsockopt(zmq.RCVHWM, INBOUND_HWM)
                self._sock.setsockopt(zmq.RCVBUF, PEER_RCVBUF)
                if keys:
                    from actstream.stream.security import CurveServer

                    self._curve = CurveServer(self._ctx, keys)
                    self._curve.apply(self._sock)
                if endpoint.startswith(("tcp://", "ipc://")):  # before the bind: what it sets holds for every peer
                    tcp = endpoint.startswith("tcp://") and hasattr(socket, "TCP_INFO")  # Linux
                    self._guard = PeerGuard(self._ctx, self._sock, "bus", max_peers, zap=not keys,
                                            budget=(PEER_BYTES, PEER_BYTES_PER_S) if tcp else None)
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
            # the XPUB belongs to the bus thread from here: ZeroMQ does the work a peer causes (taking in its
            # subscriptions) inside whichever call the socket's owner makes, and that must not be the step loop
            addr = f"inproc://actstream-bus-{id(self)}"
            self._tx = self._ctx.socket(zmq.PAIR)
            self._tx.setsockopt(zmq.SNDHWM, HANDOFF_HWM)
            self._tx.setsockopt(zmq.LINGER, 0)
            self._tx.bind(addr)
            self._rx = self._ctx.socket(zmq.PAIR)
            self._rx.setsockopt(zmq.RCVHWM, HANDOFF_HWM)
            self._rx.connect(addr)
            self._bus = threading.Thread(target=self._run_bus, name="actstream-bus", daemon=True)
            self._bus.start()

    def _run_bus(self) -> None:
        """The bus thread: forwards what publish() hands over, reads subscriptions, answers late joiners."""
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._rx, zmq.POLLIN)
        poller.register(self._sock, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(1000))
                if self._rx in events:
                    for _ in range(1000):  # then subscriptions get their turn
                        try:
                            frames = self._rx.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if len(frames) == 1:
                            return  # close(): everything before it has been sent
                        topic = frames[0].decode()
                        self._send(topic, frames[1])
                        self._last[topic] = frames[1]
                        self._welcomed.discard(topic)
                        self.forwarded += 1
                if self._sock in events:
                    self._drain_subscriptions()
        except zmq.ZMQError as exc:  # pragma: no cover - the context went away under it
            log.error("the label bus stopped: %s", exc)

    def _drain_subscriptions(self, timeout_ms: int = 0, limit: int = MAX_SUBSCRIPTIONS_PER_SEND) -> int:
        """(Bus thread.) Read up to `limit` (un)subscription messages (waiting up to timeout_ms for the first);
        answer the subscriptions among them with the current labels. Returns how many were read."""
        zmq = self._zmq
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return 0
        prefixes = []
        n = 0
        while n < limit:
            try:
                frame = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            msg = frame.bytes
            if msg[:1] == b"\x01" and self._admit(msg[1:], frame):
                self._subscribers += 1
                prefixes.append(msg[1:])
            elif msg[:1] == b"\x00" and msg[1:] in self._topics:  # ZeroMQ: the last peer holding it went
                self._topics.discard(msg[1:])
                self._subscribers = max(0, self._subscribers - 1)
        self.subscriptions += n
        if self._subscribers:
            self._subscribed.set()
        else:
            self._subscribed.clear()
        if prefixes:
            self._welcome(prefixes)
        return n

    def _admit(self, prefix: bytes, frame) -> bool:
        """(Bus thread.) Whether a subscription is one to hold; if not, its peer is dropped (ZeroMQ has put it
        in the trie already, and takes it out with the peer)."""
        if SUBSCRIPTION.match(prefix) and (prefix in self._topics or len(self._topics) < MAX_TOPICS):
            self._topics.add(prefix)
            if self._guard is not None:
                self._guard.active(message_fd(frame))
            return True
        self.refused_subscriptions += 1
        if self._guard is not None:
            self._guard.drop(message_fd(frame), "subscription")
        return False

    def _welcome(self, prefixes: list[bytes]) -> None:
        """Answer subscriptions with the last message of each topic they match (the current label state).

        Each last message is re-sent once at most: the subscribers already connected receive it again too
        (a repeat, which they drop), so answering every subscription of a flood would multiply their traffic.
        A subscriber that joins after its topics were re-sent gets the next message of each instead."""
        for topic, data in self._last.items():
            if topic in self._welcomed:
                continue
            name = topic.encode()
            if any(name.startswith(p) for p in prefixes):
                self._send(topic, data)
                self._welcomed.add(topic)
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
        if self._bus is None:
            return False
        return self._subscribed.wait(timeout_s)

    def publish(self, topic: str, t: float, wall: float, label: str | None, score: float | None,
                scores: dict[str, float], source: str | None = None, **extra: Any) -> dict:
        """Number, encode and send one message (source: the stream's, where it is not the publisher's)."""
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        payload = {"v": SCHEMA_VERSION, "topic": topic, "seq": seq, "t": round(t, 4), "wall": round(wall, 4),
                   "label": label, "score": _round(score), "scores": _round(scores),
                   "source": self.source if source is None else source, "model": self.model, **_round(extra)}
        try:
            data = encode(payload)
        except (TypeError, ValueError) as exc:
            raise PublishError(f"{topic}: a field is not JSON ({exc}): the label stream carries labels and "
                               f"numbers only") from exc
        if len(data) > MAX_MESSAGE_BYTES:
            raise PublishError(f"{topic}: message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}: the label "
                               f"stream carries labels, never raw frames or audio")
        if self._tx is not None:
            try:
                self._tx.send_multipart([topic.encode(), data], flags=self._zmq.NOBLOCK)
            except self._zmq.Again:  # the bus thread is HANDOFF_HWM messages behind: it is stuck; never wait on it
                self.handoff_drops += 1
                self.bus_overflows[topic] = self.bus_overflows.get(topic, 0) + 1
                if self.handoff_drops in (1, 1000):
                    log.error("the bus thread is %d messages behind: dropping messages (%d so far)",
                              HANDOFF_HWM, self.handoff_drops)
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
        if self._bus is not None:
            self._tx.setsockopt(self._zmq.SNDTIMEO, 2000)
            try:
                self._tx.send(b"")  # after the last message: the bus thread sends everything, then stops
            except self._zmq.ZMQError:
                pass
            self._bus.join(5.0)
            if self._bus.is_alive():  # pragma: no cover - stuck in ZeroMQ; closing under it would crash
                log.warning("the bus thread did not stop within 5 s; leaving its socket open")
                self._sock = self._ctx = self._guard = None  # left to the process's exit
            self._bus = None
        for s in (self._tx, self._rx):
            if s is not None:
                s.close(0)
        self._tx = self._rx = None
        close_parts(self, "_guard", "_sock", "_curve", "_ctx", linger_ms=linger_ms)


def stream_topic(head: str, stream: str) -> str:
    """The topic of one head of one stream of a many-stream process: `HEAD/STREAM/`. A subscriber takes one
    head of every stream by the prefix `HEAD/`, and one stream's head by `HEAD/STREAM/` (the closing slash
    keeps `speech/cam1/` from matching `speech/cam10/`); stream ids never hold a slash."""
    return f"{head}/{stream}/"


class Channel:
    """One stream's side of the publisher: the topics of its heads and status, and its source name. A
    stream without an id (replay, live: one stream per process) publishes on the bare head names, as ever;
    a stream of a many-stream process on `stream_topic(head, id)`, with `stream` and `head` in each payload.
    Sequence numbers and the late-joiner answer are per topic, so per stream."""

    def __init__(self, publisher: Publisher, stream: str | None = None, source: str | None = None):
        self.publisher = publisher
        self.stream = stream
        self.source = source

    def topic(self, head: str) -> str:
        return head if self.stream is None else stream_topic(head, self.stream)

    def publish(self, head: str, t: float, wall: float, label: str | None, score: float | None,
                scores: dict[str, float], **extra: Any) -> dict:
        if self.stream is None:
            return self.publisher.publish(head, t, wall, label, score, scores, source=self.source, **extra)
        return self.publisher.publish(self.topic(head), t, wall, label, score, scores, source=self.source,
                                      stream=self.stream, head=head, **extra)
