"""Closing what an object owns, in order, once: the shutdown sequence that every ZeroMQ owner (publisher,
control endpoint, forwarder) and every service (serve, a cluster's supervisor) repeats."""

from __future__ import annotations


def close_parts(owner, *names: str, linger_ms: int = 0) -> None:
    """Close the attributes `names` of owner in the order given, each set to None after (already None: skipped,
    so a second call does nothing). A ZeroMQ context is terminated (name it after its sockets); a ZeroMQ socket
    closed after at most linger_ms for its queued messages; anything else by its close()."""
    for name in names:
        part = getattr(owner, name, None)
        if part is None:
            continue
        if hasattr(part, "term"):  # zmq.Context
            part.term()
        elif hasattr(part, "setsockopt"):  # zmq.Socket
            part.close(linger=linger_ms)
        else:
            part.close()
        setattr(owner, name, None)
