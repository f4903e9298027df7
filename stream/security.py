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
import stat
import time
from pathlib import Path

from actstream.common.files import read_small_text, shown_path
from actstream.common.errors import ConfigError

log = logging.getLogger(__name__)

SERVER = "server"
CLIENTS = "clients"


ENDPOINT_FORMS = "tcp://HOST:PORT (port 1-65535, HOST an address, [IPv6], a name or *), ipc://PATH or inproc://NAME"
MAX_KEY_FILE_BYTES = 4096  # a certificate file is ~250 bytes (with its secret key ~320); anything larger is not one
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,252})")  # a host name, an interface name, or an IPv4 address


def parse_endpoint(endpoint: str, bind: bool = True) -> tuple[str, str, int | None]:
    """(transport, host or path, port or None for '*' and ipc/inproc) of a ZeroMQ endpoint, or ConfigError.

    ZeroMQ takes a port over 65535 modulo 65536 (`:99999` binds 34463), so every part is checked here.
    bind: also accept '*' for the host and port (an endpoint to bind; a subscriber connects to one place)."""
    what = "publish endpoint" if bind else "endpoint"
    if not isinstance(endpoint, str) or len(endpoint) > 1024 or any(c.isspace() or not c.isprintable()
                                                                     for c in endpoint):
        raise ConfigError(f"{what} {str(endpoint)[:80]!r} is not a valid endpoint: expected {ENDPOINT_FORMS}")
    for transport in ("ipc", "inproc"):
        if endpoint.startswith(transport + "://"):
            if len(endpoint) == len(transport) + 3:
                raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: it names no path: expected "
                                  f"{ENDPOINT_FORMS}")
            return transport, endpoint[len(transport) + 3:], None
    m = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):([0-9]{1,5}|\*)", endpoint)
    if not m:
        raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: expected {ENDPOINT_FORMS}")
    host, port_s = m.groups()
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: {host} is not an IPv6 address: "
                              f"expected {ENDPOINT_FORMS}") from None
    elif host == "*":
        if not bind:
            raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: '*' is for binding; connect to an "
                              f"address such as tcp://127.0.0.1:5556")
    elif not _HOST.fullmatch(host):
        raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: {host!r} is not a host name or "
                          f"address: expected {ENDPOINT_FORMS}")
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: {host} is not an IPv4 address: "
                              f"expected {ENDPOINT_FORMS}") from None
    if port_s == "*":
        if not bind:
            raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: '*' is for binding; pass the port")
        return "tcp", host, None
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {endpoint!r} is not a valid endpoint: port {port} is out of range: "
                          f"use a port from 1 to 65535")
    return "tcp", host, port


def is_local(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: tcp on a loopback address, ipc://, inproc://."""
    try:
        transport, host, _ = parse_endpoint(endpoint)
    except ConfigError:
        return False
    if transport != "tcp":
        return True
    host = host.strip("[]")
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


MAX_FOLDER_ENTRIES = 10_000  # a keys folder holds the server pair and a few clients: more is some other folder


def _keys_layout_intruder(folder: Path) -> str | None:
    """The first entry of `folder` that has no place in a keys folder (server.key, server.key_secret,
    NAME.key_secret, clients/NAME.key), or None when every entry has one (an empty folder included)."""
    with os.scandir(folder) as entries:
        for i, entry in enumerate(entries):
            if i >= MAX_FOLDER_ENTRIES:
                return entry.name
            if entry.name == CLIENTS and entry.is_dir(follow_symlinks=False):
                inside = _keys_layout_intruder_in_clients(Path(entry.path))
                if inside is not None:
                    return f"{CLIENTS}/{inside}"
            elif not (entry.is_file(follow_symlinks=False) and (entry.name in (f"{SERVER}.key", f"{SERVER}.key_secret")
                                                                  or entry.name.endswith(".key_secret"))):
                return entry.name
    return None


def _keys_layout_intruder_in_clients(clients: Path) -> str | None:
    with os.scandir(clients) as entries:
        for i, entry in enumerate(entries):
            if i >= MAX_FOLDER_ENTRIES or not (entry.is_file(follow_symlinks=False) and entry.name.endswith(".key")):
                return entry.name
    return None


def _claim_folder(folder: Path) -> None:
    """Make the keys folder (mode 700), or take an existing one only if it is the user's own and empty or
    already a keys folder; it is then set to mode 700. Anything else is refused before a byte is written:
    `actstream keys /tmp` run as root must not lock every other user out of /tmp."""
    shown = shown_path(folder)
    fix = "name a new folder (it is made, mode 700), an empty folder of your own, or a keys folder"
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # whatever the umask
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"keys folder {shown} is a symbolic link: {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"keys folder {shown} is not a folder: {fix}")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"keys folder {shown} belongs to another user (uid {st.st_uid}), and keys would set it "
                          f"to mode 700: {fix}")
    intruder = _keys_layout_intruder(folder)
    if intruder is not None:
        raise ConfigError(f"keys folder {shown} holds other files ({shown_path(intruder)}), and keys would set it "
                          f"to mode 700: {fix}")
    os.chmod(folder, 0o700)


def make_keys(folder: str | Path, clients: list[str] = (), replace: bool = False) -> list[Path]:
    """Create the server key pair (if absent) and one key pair per client name; returns the files written.

    folder: made here (mode 700), or an existing folder of the user's own that is empty or already holds keys
    (see _claim_folder); any other folder is refused, untouched.

    An existing client's key is replaced only with replace=True (its old key pair stops working); without,
    an existing name is refused before anything is written."""
    import zmq

    folder = Path(folder)
    for name in clients:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name == SERVER or set(name) <= {"."}:
            raise ConfigError(f"client name {name[:80]!r} is not usable: use 1 to 64 letters, digits, '.', '-' or "
                              f"'_' (and not {SERVER!r})")
        if not replace:
            for existing in (folder / CLIENTS / f"{name}.key", folder / f"{name}.key_secret"):
                if existing.exists() or existing.is_symlink():
                    raise ConfigError(f"client {name!r} already has a key ({shown_path(existing)}): pass --replace to "
                                      f"make it a new one (its old key pair stops working), or choose another name")
    written = []
    try:
        _claim_folder(folder)
        (folder / CLIENTS).mkdir(mode=0o700, exist_ok=True)
        if not (folder / f"{SERVER}.key_secret").exists():
            public, secret = zmq.curve_keypair()
            _write_key_file(folder / f"{SERVER}.key", public, None)
            _write_key_file(folder / f"{SERVER}.key_secret", public, secret)
            written += [folder / f"{SERVER}.key", folder / f"{SERVER}.key_secret"]
        for name in clients:
            public, secret = zmq.curve_keypair()
            _write_key_file(folder / CLIENTS / f"{name}.key", public, None)
            _write_key_file(folder / f"{name}.key_secret", public, secret)
            written += [folder / CLIENTS / f"{name}.key", folder / f"{name}.key_secret"]
    except OSError as exc:
        raise ConfigError(f"cannot write keys to {shown_path(folder)}: {exc.strerror}: choose a writable "
                          f"folder") from exc
    return written


_KEY_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')


def _read_key_file(path: Path, what: str) -> str:
    """The text of a certificate file: a regular file, at most MAX_KEY_FILE_BYTES, UTF-8."""
    hint = "make keys with `actstream keys DIR --client NAME`"
    return read_small_text(path, MAX_KEY_FILE_BYTES, what, fix=hint)


def load_pair(path: str | Path, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from a certificate file (zmq.auth's format); secret is None for a public-only file.

    Read here, bounded, rather than by zmq.auth (which reads any size, and follows a FIFO into a hang)."""
    from zmq.utils import z85

    path = Path(path)
    keys: dict[str, bytes] = {}
    for line in _read_key_file(path, what).splitlines():
        m = _KEY_LINE.match(line)
        if m:
            keys[m.group(1)] = m.group(2).encode()
    for kind, key in keys.items():
        try:
            ok = len(key) == 40 and len(z85.decode(key)) == 32
        except (ValueError, KeyError, IndexError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(f"{what} {shown_path(path)}: its {kind} key is not a 40-character Z85 CURVE key: make "
                              f"keys with `actstream keys`")
    if "public" not in keys:
        raise ConfigError(f"{what} {shown_path(path)} holds no valid public key: make keys with `actstream keys`")
    return keys["public"], keys.get("secret")


def check_bind(endpoint: str, keys: str | None, insecure: bool) -> None:
    """Refuse to expose the bus beyond this machine without CURVE, unless explicitly insecure."""
    parse_endpoint(endpoint)
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
        allowed = self._allow_list(clients)
        if not allowed:
            raise ConfigError(f"no client public keys in {shown_path(clients)}: add one with `actstream keys "
                              f"{shown_path(self.folder)} --client NAME`")
        mode = (self.folder / f"{SERVER}.key_secret").stat().st_mode & 0o077
        if mode:
            log.warning("%s is readable by other users (mode %o): chmod 600 it",
                        self.folder / f"{SERVER}.key_secret", mode | 0o600)
        self.allowed = len(allowed)
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".zap"))
        self.auth.start()
        # the keys checked above, not the folder: zmq.auth would read it again, and one bad file makes it
        # load none (every client refused, silently)
        self.auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(allowed))

    @staticmethod
    def _allow_list(clients: Path) -> set[bytes]:
        """The public keys of every clients/*.key; any file there that is not a valid key is refused by name."""
        if not clients.is_dir():
            return set()
        allowed = set()
        for path in sorted(clients.iterdir()):
            if path.name.endswith(".key"):
                public, _ = load_pair(path, "client key")
                allowed.add(public)
            elif not path.name.startswith("."):
                raise ConfigError(f"{shown_path(path)} is not a client key (NAME.key): only the keys made by "
                                  f"`actstream keys DIR --client NAME` belong in {shown_path(clients)}: move it away")
        return allowed

    def apply(self, sock) -> None:
        import zmq

        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class _AllowList:
    """ZAP credentials provider: admits exactly the Z85 public keys it was given."""

    def __init__(self, keys: set[bytes]):
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


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
