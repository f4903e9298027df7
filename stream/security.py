"""Securing the label bus: ZeroMQ CURVE keys, the client allow-list, and the loopback rule.

Layout of a keys folder (made by `actstream keys DIR --client NAME`), every file mode 600:

    DIR/server.key          the server's public key (give it to clients)
    DIR/server.key_secret   the server's key pair (stays on the server)
    DIR/clients/NAME.key    public keys of the clients allowed to subscribe (the allow-list)
    DIR/NAME.key_secret     a client's key pair: move it to that client and delete it here

The publisher binds with CURVE when given a keys folder; a ZAP authenticator admits only clients whose
public key is in DIR/clients/. Binding to anything but loopback (or ipc://) without keys is refused unless
`--insecure` is passed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

SERVER = "server"
CLIENTS = "clients"


def is_local(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: tcp on a loopback address, ipc://, inproc://."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = re.match(r"^tcp://(.+):(\d+|\*)$", endpoint)
    if not m:
        return False
    host = m.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from outside


def _write_key_file(path: Path, public: bytes, secret: bytes | None) -> None:
    """A ZeroMQ certificate file (zmq.auth's format), created with mode 600 before any byte is written."""
    kind = "Secret" if secret else "Public"
    lines = [f"#   ****  Generated on {time.strftime('%Y-%m-%d %H:%M:%S')} by actstream keys  ****",
             f"#   ZeroMQ CURVE **{kind}** Certificate", "", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)  # in case the umask was stricter or a stale file existed


def make_keys(folder: str | Path, clients: list[str] = ()) -> list[Path]:
    """Create the server key pair (if absent) and one key pair per client name; returns the files written."""
    import zmq

    folder = Path(folder)
    written = []
    try:
        (folder / CLIENTS).mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        if not (folder / f"{SERVER}.key_secret").exists():
            public, secret = zmq.curve_keypair()
            _write_key_file(folder / f"{SERVER}.key", public, None)
            _write_key_file(folder / f"{SERVER}.key_secret", public, secret)
            written += [folder / f"{SERVER}.key", folder / f"{SERVER}.key_secret"]
        for name in clients:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == SERVER:
                raise ConfigError(f"client name {name!r} is not usable: use letters, digits, '.', '-' or '_' "
                                  f"(and not {SERVER!r})")
            public, secret = zmq.curve_keypair()
            _write_key_file(folder / CLIENTS / f"{name}.key", public, None)
            _write_key_file(folder / f"{name}.key_secret", public, secret)
            written += [folder / CLIENTS / f"{name}.key", folder / f"{name}.key_secret"]
    except OSError as exc:
        raise ConfigError(f"cannot write keys to {folder}: {exc.strerror}: choose a writable folder") from exc
    return written


def load_pair(path: str | Path, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from a certificate file; secret is None for a public-only file."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found: make keys with `actstream keys DIR --client NAME`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what} {path} is not a ZeroMQ certificate ({exc}): make keys with `actstream keys`") from exc
    if public is None or len(public) != 40:
        raise ConfigError(f"{what} {path} holds no valid public key: make keys with `actstream keys`")
    return public, secret


def check_bind(endpoint: str, keys: str | None, insecure: bool) -> None:
    """Refuse to expose the bus beyond this machine without CURVE, unless explicitly insecure."""
    if is_local(endpoint) or keys:
        return
    if not insecure:
        raise ConfigError(f"publish endpoint {endpoint} is not loopback: anyone who can reach it could read the "
                          f"labels; pass --keys DIR (made with `actstream keys DIR --client NAME`) to require "
                          f"CURVE, or --insecure to publish in the clear")
    log.warning("INSECURE: publishing on %s without encryption or authentication: anyone who can reach this "
                "address reads the label stream (use --keys DIR)", endpoint)


class CurveServer:
    """Makes a socket a CURVE server and runs the ZAP authenticator that holds the client allow-list.

    keys: the keys folder (server.key_secret, clients/*.key). `close()` stops the authenticator thread.
    """

    def __init__(self, ctx, keys: str | Path):
        from zmq.auth.thread import ThreadAuthenticator

        self.folder = Path(keys)
        self.public, self.secret = load_pair(self.folder / f"{SERVER}.key_secret", "server key")
        if self.secret is None:
            raise ConfigError(f"{self.folder / (SERVER + '.key_secret')} holds no secret key: it must be the "
                              f"server's key pair from `actstream keys`")
        clients = self.folder / CLIENTS
        allowed = sorted(clients.glob("*.key")) if clients.is_dir() else []
        if not allowed:
            raise ConfigError(f"no client public keys in {clients}: add one with `actstream keys {self.folder} "
                              f"--client NAME`")
        mode = (self.folder / f"{SERVER}.key_secret").stat().st_mode & 0o077
        if mode:
            log.warning("%s is readable by other users (mode %o): chmod 600 it",
                        self.folder / f"{SERVER}.key_secret", mode | 0o600)
        self.allowed = len(allowed)
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".zap"))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(clients))

    def apply(self, sock) -> None:
        import zmq

        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def apply_client(sock, server_key: str | Path, client_key: str | Path) -> None:
    """Make a SUB socket a CURVE client: the server's public key and this client's key pair."""
    import zmq

    server_public, _ = load_pair(server_key, "server public key")
    public, secret = load_pair(client_key, "client key")
    if secret is None:
        raise ConfigError(f"client key {client_key} holds no secret key: pass the NAME.key_secret file")
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
