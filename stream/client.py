"""Subscribe to a label stream: `for msg in subscribe("tcp://127.0.0.1:5556", topics=["speech"]): ...`

A subscriber that joins mid-stream first gets the last message of each topic it subscribed to (the current
label state), then the live stream. `SeqTracker` tells from the per-topic `seq` whether anything was missed.
A connection that ZeroMQ drops, or that stays silent, is made anew and subscribed again (see subscribe).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import zmq

from actstream.common.errors import ConfigError
from actstream.common.files import escaped
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
        self.reconnects = 0  # connections subscribe() made anew: dropped, or silent since their handshake

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


SILENCE_S = 5.0  # seconds without a message before subscribe() says what it waits for (then 2x, 4x, ...)
MAX_SILENCE_S = 60.0  # the longest interval between two such notices
RECONNECT_S = (0.1, 5.0)  # the delay before a dropped connection is made anew: first, doubling up to most


class _Connection:
    """One SUB socket, connected and subscribed, with a monitor that tells when its handshake succeeded and
    when ZeroMQ dropped it."""

    EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def __init__(self, ctx: zmq.Context, endpoint: str, topics: list[str], server_key, client_key):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.monitor = None
        try:
            if server_key or client_key:
                from actstream.stream.security import apply_client

                apply_client(self.sock, server_key, client_key)
            self.monitor = self.sock.get_monitor_socket(self.EVENTS)
            self.sock.connect(endpoint)
            for topic in topics:
                self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        except BaseException:
            self.close()
            raise
        self.handshake_at: float | None = None  # monotonic time of the last successful handshake
        self.failed: str | None = None  # the last failed handshake, for messages

    def dropped(self) -> bool:
        """Read the monitor's events: True when the connection was dropped after a handshake (subscribed,
        then cut off); notes each handshake that succeeded or failed."""
        from zmq.utils.monitor import recv_monitor_message

        dropped = False
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_at, self.failed = time.monotonic(), None
            elif event == zmq.EVENT_DISCONNECTED:
                dropped = dropped or self.handshake_at is not None
            else:  # ZeroMQ may not try again after a failed handshake: subscribe()'s silence rule does
                self.failed = "auth" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "protocol"
        return dropped

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
        self.sock.close(0)


def subscribe(endpoint: str, topics: Iterable[str] | None = None, timeout_s: float | None = None,
              ctx: zmq.Context | None = None, server_key: str | Path | None = None,
              client_key: str | Path | None = None, tracker: SeqTracker | None = None,
              silence_s: float | None = SILENCE_S, streams: Iterable[str] | None = None) -> Iterator[dict]:
    """Yield each message's payload (a dict) as it arrives, without repeats.

    topics: heads (or `status`) to receive (None = all); streams: the streams of a many-stream process
    (`actstream serve`) to receive (None = all): `topics=["speech"]` takes `speech` and every stream's
    `speech/ID/`, `streams=["cam1"]` every topic of stream cam1 (never cam10's); timeout_s: stop when nothing
    arrives for this long
    (None = wait forever); server_key / client_key: the server's public key file and this client's key pair
    file, for a CURVE-secured stream (both or neither); tracker: a SeqTracker to read gaps, `bad` (messages
    skipped because they were not [topic, JSON object]) and `reconnects` from (one is made if None).
    The first message per topic is the publisher's last one before this subscriber joined.

    A connection that drops (a frame over MAX_FRAME_BYTES, after which ZeroMQ itself never connects again;
    a publisher that stopped or restarted) is made anew, after RECONNECT_S's backoff, and subscribed again.
    silence_s: after this long without a message a warning says what is awaited and from where (then after
    twice as long, and so on, at most MAX_SILENCE_S apart; None: never); at each such notice a connection that
    has carried nothing for silence_s / 2 or more since its handshake (a publisher that lost the subscription,
    a half-open TCP connection), or whose handshake failed, is made anew too. Each new connection is logged
    and counted in tracker.reconnects.
    """
    if bool(server_key) != bool(client_key):
        given, missing = ("--server-key", "--client-key") if server_key else ("--client-key", "--server-key")
        raise ConfigError(f"{given} was given without {missing}: a CURVE subscriber needs both, the server's "
                          f"public key (server.key) and its own key pair (NAME.key_secret)")
    from actstream.stream.security import parse_endpoint

    parse_endpoint(endpoint, bind=False)
    topics, wanted = topic_filter(list(topics or []), list(streams or []))
    what = (f"topic{'s' if len(topics) > 1 else ''} {', '.join(escaped(t) for t in topics)}" if topics != [""]
            else "all topics") + (f" of stream{'s' if len(streams) > 1 else ''} {', '.join(streams)}" if streams else "")
    own = ctx is None
    ctx = ctx or zmq.Context()
    tracker = tracker if tracker is not None else SeqTracker()
    conn: _Connection | None = None
    try:
        conn = _Connection(ctx, endpoint, topics, server_key, client_key)
        last = quiet_since = time.monotonic()  # the last frame received, the last message yielded (or the start)
        notice_at = last + silence_s if silence_s is not None else None  # when silence is next said
        backoff = RECONNECT_S[0]
        remake_at: float | None = None  # a dropped connection is made anew then
        poller = zmq.Poller()
        poller.register(conn.sock, zmq.POLLIN)
        poller.register(conn.monitor, zmq.POLLIN)
        while True:
            now = time.monotonic()
            due = [t for t in (last + timeout_s if timeout_s is not None else None, notice_at, remake_at)
                   if t is not None]
            ready = dict(poller.poll(None if not due else max(0, int((min(due) - now) * 1000) + 1)))
            now = time.monotonic()
            if conn.sock in ready:  # first: what arrived before a drop is still read
                frames = conn.sock.recv_multipart()
                last = now
                msg = _message(frames, wanted, tracker)
                if msg is not None:
                    quiet_since, backoff = now, RECONNECT_S[0]
                    notice_at = now + silence_s if silence_s is not None else None
                    yield msg
                continue
            if conn.monitor in ready and conn.dropped() and remake_at is None:
                tracker.reconnects += 1
                log.warning("connection to %s dropped (a frame over %d KiB, or the publisher stopped): "
                            "connecting and subscribing again in %.1f s (reconnect %d)", endpoint,
                            MAX_FRAME_BYTES // 1024, backoff, tracker.reconnects)
                # the old socket stays open until then: ZeroMQ reports the drop before it hands over the
                # last messages read with it, which are still delivered
                remake_at = now + backoff
                backoff = min(RECONNECT_S[1], backoff * 2)
                continue
            if remake_at is not None and now >= remake_at:
                conn = _remake(conn, poller, ctx, endpoint, topics, server_key, client_key)
                remake_at = None
                continue
            if timeout_s is not None and now >= last + timeout_s:
                return
            if notice_at is not None and now >= notice_at:
                quiet = now - quiet_since
                # silent since its handshake for half the interval at least: not a publisher that has only
                # just bound and is about to send (replay --wait-subscriber), whose first messages would be lost
                remake = remake_at is None and (conn.failed is not None or (
                    conn.handshake_at is not None and now - max(last, conn.handshake_at) >= silence_s / 2))
                if conn.handshake_at is None or remake_at is not None:
                    state = (f"the handshake failed ({conn.failed}: check --server-key and --client-key)"
                             if conn.failed else "no publisher has answered there yet")
                else:
                    state = "connected, but nothing arrives"
                if remake:
                    tracker.reconnects += 1
                    log.warning("no message from %s for %s s (%s): %s; still waiting, connecting and "
                                "subscribing again (reconnect %d)", endpoint, _seconds(quiet), what, state,
                                tracker.reconnects)
                    conn = _remake(conn, poller, ctx, endpoint, topics, server_key, client_key)
                    remake_at = None
                else:
                    log.warning("no message from %s for %s s (%s): %s; still waiting", endpoint, _seconds(quiet),
                                what, state)
                # the next notice when the silence has doubled, at most MAX_SILENCE_S later
                notice_at = now + min(MAX_SILENCE_S, max(silence_s, quiet))
    finally:
        if conn is not None:
            conn.close()
        if own:
            ctx.term()


def _remake(conn: _Connection, poller: zmq.Poller, ctx: zmq.Context, endpoint: str, topics: list[str],
            server_key, client_key) -> _Connection:
    """A new connection, subscribed, in place of `conn` (closed), and polled instead of it."""
    poller.unregister(conn.sock)
    poller.unregister(conn.monitor)
    conn.close()
    conn = _Connection(ctx, endpoint, topics, server_key, client_key)
    poller.register(conn.sock, zmq.POLLIN)
    poller.register(conn.monitor, zmq.POLLIN)
    return conn


def _seconds(x: float) -> str:
    """5.003 -> "5", 0.501 -> "0.5", 12.4 -> "12": a duration in a notice."""
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}".removesuffix(".0")


def topic_filter(topics: list[str], streams: list[str]) -> tuple[list[str], Callable[[str], bool] | None]:
    """The ZeroMQ subscriptions (prefixes) and the exact test of a received topic for heads and streams.

    A head's topic is `HEAD` (one stream per process) or `HEAD/ID/` (a stream of `actstream serve`): heads
    alone subscribe to `HEAD` and take both; streams take `HEAD/ID/` of the heads given, or, with no head
    given, everything, kept when its topic is `*/ID/` (the closing slash keeps cam1 apart from cam10)."""
    from actstream.engines.bundle import HEAD_NAME
    from actstream.stream.publish import stream_topic
    from actstream.stream.streamsfile import STREAM_ID

    bad = [s for s in streams if not STREAM_ID.match(s)]
    if bad:
        raise ConfigError(f"stream {escaped(bad[0])}: not a stream id (1-64 letters, digits, - or _)")
    bad = [t for t in topics if not HEAD_NAME.match(t)]
    if bad:  # the publisher drops a connection whose subscription can match no topic
        raise ConfigError(f"topic {escaped(bad[0]) or repr('')}: not a head name or status (1-32 letters, digits, "
                          f"- or _, a letter first)")
    if topics and streams:
        exact = {stream_topic(t, s) for t in topics for s in streams}
        return sorted(exact), exact.__contains__
    if streams:
        ends = tuple(f"/{s}/" for s in streams)
        return [""], lambda topic: topic.endswith(ends) and topic.count("/") == 2
    if topics:
        return topics, lambda topic: any(topic == t or topic.startswith(t + "/") and topic.count("/") == 2
                                         for t in topics)
    return [""], None


def _message(frames: list[bytes], wanted: Callable[[str], bool] | None, tracker: SeqTracker) -> dict | None:
    """The payload to yield for one received message, or None: another topic's (ZeroMQ matches prefixes,
    topics here are whole names), a bad one (counted), or a repeat."""
    if wanted is not None and not wanted(frames[0].decode("utf-8", "replace")):
        return None
    msg = decode(frames)
    if msg is None:
        tracker.bad += 1
        if tracker.bad == 1 or tracker.bad % 1000 == 0:
            log.warning("skipped %d message(s) that were not [topic, JSON object] (the last: %d frame(s), "
                        "%d bytes)", tracker.bad, len(frames), sum(len(f) for f in frames))
        return None
    gap = tracker.check(msg)
    if gap < 0:
        return None
    if gap:
        log.warning("%s: missed %d message(s) before seq %d", escaped(str(msg.get("topic"))), gap, msg.get("seq"))
    return msg
