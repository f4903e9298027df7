"""Ray, started or joined: a local Ray inside this process when no cluster is named (nothing to install or start
by hand), or an existing cluster (`--address auto|HOST:PORT`).

A local Ray listens on 127.0.0.1 only: its node address is the loopback, and Ray is told not to look for the
machine's outward address (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when `ray` is first imported, so it is set
before that); no dashboard, no usage report (RAY_USAGE_STATS_ENABLED=0). Node failures are noticed within about 2 s (GCS health checks every 500 ms, three
missed), so a lost node's actors restart elsewhere quickly. A cluster that is joined is the operator's: its
addresses, ports and TLS are as it was started (README "Beyond one machine").
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from actstream.common.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps every address it picks on the loopback
# node failures noticed in about 1.5-2.5 s instead of Ray's default 15 s (3 s x 5 missed health checks)
FAST_FAILURE = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 1000,
                "health_check_initial_delay_ms": 1000}
EXTRA = "pip install 'actstream[cluster]' (Ray core) or run `make setup`"
_ADDRESS = re.compile(r"auto|[A-Za-z0-9_.-]{1,253}:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}\Z")


def check_address(address: str | None) -> str | None:
    """`--address`: None (a local Ray), `auto` (the cluster this machine belongs to) or HOST:PORT of a head's GCS."""
    if address is None:
        return None
    if not _ADDRESS.fullmatch(address) or (address != "auto" and not 1 <= int(address.rsplit(":", 1)[1]) <= 65535):
        raise ConfigError(f"--address {address[:80]!r} is not a Ray address: expected auto or HOST:PORT of the head "
                          f"node (ray start --head prints it), or leave it out for a local Ray")
    return address


def import_ray(local: bool):
    """The `ray` module, or ConfigError naming the extra to install. local: this process will start a local Ray,
    which must stay on the loopback: the environment says so before the first import."""
    if local:
        os.environ[CLUSTER_ENV] = "0"
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray's usage report would be its only traffic off this machine
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"Ray is not installed ({exc}): {EXTRA}") from exc
    if local:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:  # imported earlier without the setting: it would pick an outward address
            raise ConfigError(f"Ray was imported before {CLUSTER_ENV}=0 was set: set it in the environment first")
    return ray


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """Connect this process to Ray: join `address`, or start a local Ray on the loopback with num_cpus (default:
    the machine's cores) and num_gpus (default: Ray's detection). Returns (the `ray` module, whether this call
    connected it: then stop_ray disconnects). A process that is connected already (a test's cluster, a driver
    of the caller's) is left as it is."""
    ray = import_ray(local=address is None and not _imported_and_connected())
    if ray.is_initialized():
        return ray, False
    # Ray's own lines (its start, its token authentication) only with -v: the product says what matters
    level = logging.INFO if logging.getLogger().getEffectiveLevel() < logging.WARNING else logging.ERROR
    quiet = dict(log_to_driver=False, logging_level=level)
    handlers = _signal_handlers()
    try:
        if address is None:
            ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
                     _system_config=FAST_FAILURE, **quiet)
        else:
            ray.init(address=address, **quiet)
        _restore(handlers)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot {'start a local Ray' if address is None else 'join the Ray cluster at ' + address}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          f"{'' if address is None else ': is `ray start --head` running there?'}") from exc
    if address is None:
        ips = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        if ips != {LOOPBACK}:  # never expected: fail closed rather than serve on an outward address
            ray.shutdown()
            raise ConfigError(f"the local Ray took the address(es) {sorted(ips)} instead of {LOOPBACK}: "
                              f"set {CLUSTER_ENV}=0 in the environment")
    return ray, True


def _signal_handlers() -> dict:
    """SIGINT's and SIGTERM's handlers as the caller set them (the main thread only can)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict) -> None:
    """Ray's core worker installs its own SIGTERM handler, which ends the process at once: the caller's (the
    command stops cleanly, outputs flushed) are put back."""
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _imported_and_connected() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def worker_env() -> dict:
    """A runtime_env for actstream's actors: the environment the `actstream` command sets for itself (one BLAS
    thread, as replay has, so that workers compute what replay computes; the libraries' own lines quiet), set
    before the worker process imports numpy."""
    env = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for var in ("OPENCV_LOG_LEVEL", "OPENCV_FFMPEG_LOGLEVEL"):
        if var in os.environ:
            env[var] = os.environ[var]
    return {"env_vars": env}


def stop_ray(started_here: bool) -> None:
    """Disconnect; a local Ray started by this process stops with it."""
    if started_here:
        import ray

        ray.shutdown()


def alive_nodes(ray) -> list[dict]:
    """The cluster's live nodes: NodeID, NodeManagerAddress, Resources."""
    return [n for n in ray.nodes() if n["Alive"]]


def _sockets_of(pid: int) -> set[str]:
    """Socket inodes a process holds open."""
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(target[8:-1])
    except OSError:
        pass
    return found


def _listening(table: str) -> list[tuple[str, int, str]]:
    """(hex local address, port, inode) of every TCP socket in LISTEN state in /proc/net/tcp or tcp6."""
    rows = []
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return rows
    for line in lines:
        f = line.split()
        if len(f) > 9 and f[3] == "0A":  # TCP_LISTEN
            addr, port = f[1].split(":")
            rows.append((addr, int(port, 16), f[9]))
    return rows


def _is_loopback_hex(addr: str) -> bool:
    """A /proc/net/tcp* address (hex, as the kernel stores it) on the loopback: 127.0.0.0/8, ::1 or ::ffff:127.x."""
    if len(addr) == 8:
        return addr[6:8] == "7F"  # little-endian IPv4: the first octet is the last byte
    return addr in ("00000000000000000000000001000000",) or (addr[:16] == "0" * 16 and addr[16:24] == "FFFF0000"
                                                              and addr[30:32] == "7F")


def listeners_beyond_loopback(pids: list[int]) -> list[str]:
    """The TCP ports the given processes listen on at any address but the loopback ('PID port'), from /proc:
    empty when everything they expose stays on this machine."""
    inodes = {ino: pid for pid in pids for ino in _sockets_of(pid)}
    bad = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for addr, port, ino in _listening(table):
            if ino in inodes and not _is_loopback_hex(addr):
                bad.append(f"{inodes[ino]} {port}")
    return bad
