"""Connection bounds for a socket that peers connect to: the label bus's XPUB and `serve`'s control ROUTER.

ZeroMQ accepts every connection it is offered and has no limit of its own on how many it holds. What a
connection costs is the publisher's: a file descriptor, buffers, and on the XPUB every subscription its peer
sent, kept in one trie shared by all connections until the connection goes (removing one connection walks the
whole trie, so N peers holding distinct subscriptions cost N^2; see stream/publish.py). PeerGuard bounds the
connections from outside the socket: a thread follows them through a ZeroMQ monitor (accepted: the file
descriptor; disconnected, closed) and

- refuses a new connection past `rate` a second (a token bucket holding `burst`),
- refuses a new connection past `max_peers` connected, unless a peer that has done nothing useful (no
  subscription or request: `active(fd)`) for EVICT_AFTER_S can make room: the oldest of those is dropped,
- drops a connection that has sent more than its byte budget (`budget`, from the kernel's TCP_INFO).

To refuse or to drop is to shut the connection down (shutdown(2) on ZeroMQ's descriptor): ZeroMQ sees it end,
closes it and forgets what it held. The socket's owner drops a connection by the descriptor ZeroMQ attaches to
each message it reads (`message_fd`, ZMQ_SRCFD). The guard never calls the socket itself (it belongs to its
owner's thread) beyond starting and stopping the monitor.

max_peers: `peer_limit` reads the open-file limit at start (RLIMIT_NOFILE): a cap above what it leaves is
refused, and the default (0) is DEFAULT_MAX_PEERS or less under a low limit, so the process never runs out of
descriptors (at the limit ZeroMQ's accept fails without end: new subscribers got nothing, and its I/O thread
spun on the listening socket).
"""

from __future__ import annotations

import logging
import resource
import socket
import struct
import threading
import time

from actstream.common.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MAX_PEERS = 256  # connections per socket when publish.max_peers is 0 (and the open-file limit allows)
FILES_KEPT = 64  # descriptors left to the rest of the process (model files, devices, ZeroMQ's own) ...
SHARE = 4  # ... and of the others each socket's peers take at most a quarter (the bus and the control endpoint)
ACCEPT_RATE = 20.0  # new connections a second, on average (a subscriber connects once and reconnects with back-off)
ACCEPT_BURST = 20  # new connections at once, after a quiet while (subscribers coming back after a restart)
EVICT_AFTER_S = 1.0  # a connection idle this long (no subscription or request) may make room for a new one
GUARD_INTERVAL_S = 0.02  # how often each connection's received bytes are read (the byte budget)
_TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in struct tcp_info (Linux 4.1 and later)


def peer_limit(configured: int, key: str = "publish.max_peers") -> int:
    """The most peers one socket takes: `configured`, or for 0 DEFAULT_MAX_PEERS or what the open-file limit
    leaves when that is less. ConfigError when a configured cap is above what the limit leaves."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = DEFAULT_MAX_PEERS * SHARE if soft == resource.RLIM_INFINITY else max(1, (soft - FILES_KEPT) // SHARE)
    if configured == 0:
        if room < DEFAULT_MAX_PEERS:
            log.info("the open-file limit (%d, ulimit -n) leaves room for %d peers per socket", soft, room)
        return min(DEFAULT_MAX_PEERS, room)
    if configured > room:
        raise ConfigError(f"{key} = {configured} is more than the open-file limit allows: {soft} files (ulimit -n) "
                          f"leave room for {room} peers per socket; raise the limit (systemd: LimitNOFILE=) or "
                          f"lower {key} (0 chooses)")
    return configured


def message_fd(frame) -> int | None:
    """The descriptor of the connection a received ZeroMQ frame came on (ZMQ_SRCFD), or None (inproc)."""
    import zmq

    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def shut_down(fd: int) -> None:
    """Shut a connection of ZeroMQ's down; ZeroMQ closes the descriptor itself when it sees that."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return  # closed already
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.detach()  # the descriptor is ZeroMQ's


class _Peer:
    __slots__ = ("since", "active")

    def __init__(self, since: float):
        self.since = since
        self.active = False


class PeerGuard:
    """Bounds the connections of `sock` (bound to tcp:// or ipc://): max_peers at once, `rate` new ones a
    second (burst `burst`), and with `budget` = (bytes, bytes_per_s) what each TCP connection may send in all:
    bytes + bytes_per_s x its age. `refused` counts connections shut at their accept, `dropped` those shut
    later, `counts` both by reason."""

    REASONS = {"rate": "new connections came faster than {rate:g} a second",
               "full": "{max_peers} peers were connected and none idle",
               "idle": "it made room for a new one: connected {evict:g} s and more without a subscription or request",
               "bytes": "it sent more than {budget} bytes (a flood of subscriptions or frames)",
               "subscription": "it subscribed to what no topic can match, or past the number of distinct topics"}

    def __init__(self, ctx, sock, name: str, max_peers: int, budget: tuple[int, int] | None = None,
                 zap: bool = True, rate: float = ACCEPT_RATE, burst: int = ACCEPT_BURST):
        import zmq

        self._zmq = zmq
        self._sock = sock
        self.name = name
        self.max_peers = max_peers
        self.budget = budget
        self.rate, self.burst = rate, burst
        self._tokens, self._refilled = float(burst), time.monotonic()
        self._peers: dict[int, _Peer] = {}
        self._lock = threading.Lock()  # _peers: the owner's thread marks and drops peers too
        self.counts = dict.fromkeys(self.REASONS, 0)
        self._mon = self._zap = None
        try:
            addr = f"inproc://actstream-peers-{id(self)}"
            sock.monitor(addr, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
            self._mon = ctx.socket(zmq.PAIR)
            self._mon.setsockopt(zmq.RCVHWM, 0)  # the I/O thread must never wait on this queue
            self._mon.setsockopt(zmq.LINGER, 0)
            self._mon.connect(addr)
            if zap:
                # A NULL handshake asks this thread (ZAP, RFC 27) before it completes, and ZeroMQ reports the
                # accept before it asks: so a connection refused at its accept is shut down before its handshake
                # can complete, and nothing it sends reaches the socket. Without this, a fast peer finished its
                # handshake and sent its subscriptions before the refusal landed. (CURVE's authenticator,
                # stream/security.py, holds the handshake the same way for the clients it does not know.)
                self._zap = ctx.socket(zmq.REP)
                self._zap.setsockopt(zmq.LINGER, 0)
                self._zap.bind("inproc://zeromq.zap.01")
                sock.setsockopt(zmq.ZAP_DOMAIN, b"actstream")  # NULL goes through ZAP only with a domain
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"actstream-{name}-peers", daemon=True)
        self._thread.start()

    @property
    def refused(self) -> int:
        return self.counts["rate"] + self.counts["full"]

    @property
    def dropped(self) -> int:
        return self.counts["idle"] + self.counts["bytes"] + self.counts["subscription"]

    @property
    def connected(self) -> int:
        return len(self._peers)

    def active(self, fd: int | None) -> None:
        """(Any thread.) The peer on fd subscribed or asked something: it keeps its place when the socket is full.
        ZeroMQ may have closed that connection and given its descriptor to a new one since it read the message:
        the new one is then kept too, which costs nothing but a place."""
        with self._lock:
            peer = self._peers.get(fd)
            if peer is not None:
                peer.active = True

    def drop(self, fd: int | None, reason: str) -> bool:
        """(Any thread.) Shut down the connection on fd, if fd is one of this socket's connections (never
        anything else of the process's that has taken a closed connection's number). As for `active`, it may be
        a newer connection of this socket's if the peer that sent the message has gone meanwhile: that one is
        dropped instead, and its client reconnects. True when a connection was shut down."""
        with self._lock:
            if self._peers.pop(fd, None) is None:
                return False
        self._shut(fd, reason)
        return True

    def _shut(self, fd: int, reason: str) -> None:
        self.counts[reason] += 1  # first: counted by the time the peer sees its connection end
        n = self.counts[reason]
        shut_down(fd)
        if n in (1, 10) or n % 1000 == 0:  # a flood must not flood the log
            what = "refused" if reason in ("rate", "full") else "dropped"
            why = self.REASONS[reason].format(rate=self.rate, max_peers=self.max_peers, evict=EVICT_AFTER_S,
                                              budget=self.budget[0] if self.budget else 0)
            log.warning("%s a %s connection: %s (%d so far)", what, self.name, why, n)

    def _accepted(self, fd: int) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1.0:
            self._shut(fd, "rate")
            return
        self._tokens -= 1.0
        evict = None
        with self._lock:
            if len(self._peers) >= self.max_peers:
                idle = [(p.since, f) for f, p in self._peers.items() if not p.active and now - p.since >= EVICT_AFTER_S]
                if idle:
                    evict = min(idle)[1]
                    del self._peers[evict]
            taken = len(self._peers) < self.max_peers
            if taken:
                self._peers[fd] = _Peer(now)
        if evict is not None:
            self._shut(evict, "idle")
        if not taken:
            self._shut(fd, "full")

    def _run(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._mon, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        next_check = time.monotonic() + GUARD_INTERVAL_S
        while not self._stop.is_set():
            try:
                wait_s = next_check - time.monotonic() if self.budget else 0.2
                ready = dict(poller.poll(max(1, int(wait_s * 1000))))
                self._events(parse_monitor_message)
                while self._zap in ready and self._zap.poll(0):
                    request = self._zap.recv_multipart()
                    self._events(parse_monitor_message)  # this connection's accept first, then its handshake
                    self._zap.send_multipart([b"1.0", request[1] if len(request) > 1 else b"", b"200", b"OK", b"",
                                              b""])
            except zmq.ZMQError:
                return  # closing
            now = time.monotonic()
            if self.budget and now >= next_check:
                next_check = now + GUARD_INTERVAL_S
                limit, per_s = self.budget
                with self._lock:
                    peers = list(self._peers.items())
                for fd, peer in peers:
                    if _received(fd) > limit + per_s * (now - peer.since):
                        self.drop(fd, "bytes")

    def _events(self, parse) -> None:
        """Take in the monitor's events: accepted connections (refused or kept), ended ones."""
        zmq = self._zmq
        while self._mon.poll(0):
            ev = parse(self._mon.recv_multipart())
            if ev["event"] == zmq.EVENT_ACCEPTED:
                self._accepted(ev["value"])
            else:
                with self._lock:
                    self._peers.pop(ev["value"], None)

    def close(self) -> None:
        """Stop the thread and the monitor. Idempotent."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(2.0)
        if self._thread.is_alive():
            log.warning("the %s peer guard did not stop within 2 s", self.name)
        self._thread = None
        self._close_sockets()

    def _close_sockets(self) -> None:
        try:
            self._sock.disable_monitor()
        except self._zmq.ZMQError:
            pass
        for s in (self._mon, self._zap):
            if s is not None:
                s.close(0)
        self._mon = self._zap = None


def _received(fd: int) -> int:
    """Bytes the kernel has received on a TCP connection (0 when it is closed or not TCP)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return 0
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("Q", info, _TCPI_BYTES_RECEIVED)[0] if len(info) >= 136 else 0
    except OSError:
        return 0
    finally:
        s.detach()
