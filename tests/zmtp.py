"""A raw ZMTP 3.0 peer for the bus tests: the greeting, commands and frames written byte by byte (ZeroMQ RFC 23),
so a test can send what no well-behaved ZeroMQ library would (huge frame claims, floods, garbage)."""

from __future__ import annotations

import socket
import struct


def greeting(mechanism: bytes = b"NULL", as_server: bool = False) -> bytes:
    """The 64-byte greeting: signature, version 3.0, mechanism, as-server, filler."""
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + mechanism.ljust(20, b"\x00")
            + bytes([1 if as_server else 0]) + b"\x00" * 31)


def frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def frame_header(size: int, command: bool = False) -> bytes:
    """A long-frame header claiming `size` bytes (the body is not sent)."""
    return bytes([0x02 | (0x04 if command else 0)]) + struct.pack(">Q", size)


def command(name: bytes, data: bytes = b"") -> bytes:
    return frame(bytes([len(name)]) + name + data, command=True)


def ready(socket_type: bytes = b"SUB") -> bytes:
    """The NULL mechanism's READY command with the Socket-Type property."""
    prop = b"Socket-Type"
    return command(b"READY", bytes([len(prop)]) + prop + struct.pack(">I", len(socket_type)) + socket_type)


def subscription(prefix: bytes) -> bytes:
    return frame(b"\x01" + prefix)


def connect(port: int, timeout_s: float = 2.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the publisher")
        data += chunk
    return data


def null_sub(port: int, timeout_s: float = 2.0, socket_type: bytes = b"SUB") -> socket.socket:
    """A connection that has done the NULL handshake as a SUB (or socket_type): what follows are its messages.
    Each side's greeting is read before READY is sent (libzmq drops what a peer sends before it has read the
    greeting). ConnectionError when the publisher closes it first (it refused the connection)."""
    s = connect(port, timeout_s)
    try:
        s.sendall(greeting(b"NULL"))
        recv_exactly(s, 64)
        s.sendall(ready(socket_type))
        flags, size = recv_exactly(s, 2)  # the publisher's READY
        recv_exactly(s, size)
    except OSError:
        s.close()
        raise
    return s


def send_quietly(s: socket.socket, data: bytes) -> bool:
    """Send; False once the publisher has dropped the connection."""
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def open_peers(port: int, n: int, send=None, limit_s: float = 5.0,
               socket_type: bytes = b"SUB") -> tuple[list[socket.socket], int]:
    """Up to n handshaken peers, each sending send(i) (nothing for None) and staying, tried in turn for limit_s
    at most: the publisher refuses connections past its accept rate and its cap, and each is tried again after
    a pause. Returns them (non-blocking) and how many tries were refused."""
    import time

    peers, refused = [], 0
    deadline = time.monotonic() + limit_s
    while len(peers) < n and time.monotonic() < deadline:
        try:
            s = null_sub(port, socket_type=socket_type)
        except OSError:
            refused += 1
            time.sleep(0.005)  # paces the attacker (two cores are shared with the publisher): no synchronisation
            continue
        data = send(len(peers)) if send else b""
        if data:
            send_quietly(s, data)
        s.setblocking(False)
        peers.append(s)
    return peers, refused


def still_open(peers: list[socket.socket]) -> int:
    """How many of these (non-blocking) connections the publisher has not closed."""
    n = 0
    for s in peers:
        try:
            n += s.recv(1) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n
