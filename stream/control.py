"""The control endpoint of a many-stream process: streams added, removed and listed while it runs.

A ZeroMQ ROUTER (loopback by default; off loopback only with the bus's CURVE keys, as the bus) takes one JSON
object per request and answers each with one JSON object:

    {"op": "list"}                                  -> {"ok": true, "streams": [{"id": ..., "phase": ...}, ...]}
    {"op": "add", "stream": {"id": "door", "camera": "http://..."}}   -> {"ok": true, "id": "door"}
    {"op": "remove", "id": "door"}                  -> {"ok": true, "id": "door"}

A request that is not that (malformed, oversized, an unknown op or id, a duplicate id) gets
{"ok": false, "error": "..."} and changes nothing. What a peer can make it do is bounded: a request is at most
MAX_REQUEST_BYTES (larger drops the connection before it is buffered), at most INBOUND_HWM are queued per
peer, the handshake must finish in HANDSHAKE_MS, and past RATE requests a second the rest are answered
`busy` without being looked at. Connections are bounded as the bus's (stream/peers.py): at most max_peers at
once (publish.max_peers), a bounded number of new ones a second, and one that has asked nothing for a second
makes room for a new one when all places are taken. The endpoint's thread only parses and answers; the
scheduler does the work at its next tick.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from actstream.common.errors import ActstreamError, ConfigError
from actstream.common.closing import close_parts

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
MAX_REPLY_BYTES = 1 << 20
INBOUND_HWM = 100
HANDSHAKE_MS = 5000
RATE = 50  # requests per second answered; the rest are refused as busy
DEFAULT_TIMEOUT_S = 10.0


class ControlServer:
    """endpoint: where to bind; handle(request dict) -> reply dict (raising ActstreamError for a refusal);
    keys, insecure: as the bus (stream/security.py); max_peers: connections held at once (0: chosen from the
    open-file limit, stream/peers.py)."""

    def __init__(self, endpoint: str, handle: Callable[[dict], dict], keys: str | None = None,
                 insecure: bool = False, max_peers: int = 0):
        import zmq

        from actstream.stream.peers import PeerGuard, peer_limit
        from actstream.stream.security import check_bind

        check_bind(endpoint, keys, insecure)
        max_peers = peer_limit(max_peers)
        self._zmq = zmq
        self.handle = handle
        self._ctx = zmq.Context()
        self._curve = self._guard = None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self.requests = self.refused = 0
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            self._sock.setsockopt(zmq.RCVHWM, INBOUND_HWM)
            self._sock.setsockopt(zmq.SNDHWM, INBOUND_HWM)
            self._sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a peer gone before its answer: the answer is dropped
            if keys:
                from actstream.stream.security import CurveServer

                self._curve = CurveServer(self._ctx, keys)
                self._curve.apply(self._sock)
            if endpoint.startswith(("tcp://", "ipc://")):  # before the bind, as the bus's
                self._guard = PeerGuard(self._ctx, self._sock, "control", max_peers, zap=not keys)
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            hint = ("another process is using it: stop it or set serve.control to another port"
                    if exc.errno == zmq.EADDRINUSE else "set serve.control to tcp://127.0.0.1:PORT")
            raise ConfigError(f"cannot bind the control endpoint {endpoint}: {exc.strerror}: {hint}") from exc
        self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="actstream-control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from actstream.stream.peers import message_fd

        zmq = self._zmq
        window, answered = time.monotonic(), 0
        while not self._stop.is_set():
            try:
                if not self._sock.poll(200):
                    continue
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            except zmq.ZMQError:
                return  # closing
            if self._guard is not None:
                self._guard.active(message_fd(parts[-1]))  # it asked: it keeps its place
            frames = [p.bytes for p in parts]
            now = time.monotonic()
            if now - window >= 1.0:
                window, answered = now, 0
            answered += 1
            self.requests += 1
            if len(frames) < 2:
                continue  # not a request a REQ or DEALER peer sends
            envelope, body = frames[:-1], frames[-1]
            if answered > RATE:
                reply = {"ok": False, "error": f"busy: more than {RATE} requests a second; try again"}
            else:
                reply = self._answer(body)
            if not reply.get("ok"):
                self.refused += 1
            data = json.dumps(reply, separators=(",", ":")).encode()
            if len(data) > MAX_REPLY_BYTES:
                data = json.dumps({"ok": False, "error": "the answer is too large"}).encode()
            try:
                self._sock.send_multipart([*envelope, data], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the peer's queue is full or it is gone: it gets nothing

    def _answer(self, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return {"ok": False, "error": "a request is one JSON object, e.g. {\"op\": \"list\"}"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "a request is a JSON object with \"op\": list, add or remove"}
        try:
            return {"ok": True, **self.handle(request)}
        except ActstreamError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must never take the process down through its control port
            log.exception("control request %r failed", request.get("op"))
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}

    def close(self) -> None:
        """Stop the thread, close the socket. Idempotent."""
        if getattr(self, "_thread", None) is not None:
            self._stop.set()
            self._thread.join(2.0)
            self._thread = None
        close_parts(self, "_guard", "_sock", "_curve", "_ctx")


def request(endpoint: str, req: dict, timeout_s: float = DEFAULT_TIMEOUT_S, server_key: str | None = None,
            client_key: str | None = None) -> dict:
    """Send one request to a control endpoint and return its answer; ConfigError when none comes."""
    import zmq

    from actstream.stream.security import apply_client, parse_endpoint

    parse_endpoint(endpoint, bind=False)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        if server_key or client_key:
            apply_client(sock, server_key, client_key)
        sock.connect(endpoint)
        sock.send(json.dumps(req).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise ConfigError(f"no answer from the control endpoint {endpoint} within {timeout_s:.0f} s: is "
                              f"`actstream serve` running there (serve.control)?")
        return json.loads(sock.recv())
    finally:
        sock.close(0)
        ctx.term()
