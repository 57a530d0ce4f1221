"""What the daemon checks before it writes anything: the data folder (and that no other
daemon holds it), the control address, the configured tokens, the TLS certificate and
key, the store's URL and the user's modules. A start that fails here leaves the disk
as it was, and its error is one line naming the setting to change."""

from __future__ import annotations

import errno
import resource
import socket
from dataclasses import dataclass

from .._address import host_port, is_loopback
from .._admission import bind
from .._errors import ConfigurationError, FiefdomError
from ..cluster._peer_server import MAX_PEER_CONNECTIONS
from ..protocol import ControlSettings
from ._config import Config
from ._datadir import DataDirLock, check_data_dir
from ._modules import UserModule, import_modules
from ._storage import Store, open_configured_store
from ._tls import ServerTLS, server_tls
from ._tokens import configured_credentials


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the checks produced, for the start to use: the store (not yet open), the
    imported modules, the data folder's lock (taken already if its file existed), and
    the listener's TLS (loaded; None without it)."""

    store: Store
    modules: list[UserModule]
    lock: DataDirLock
    tls: ServerTLS | None
    # The soft limit on open files, before and after it was raised (None: left as it was).
    open_files_raised: tuple[int, int] | None = None


def prepare(config: Config) -> Prepared:
    """Run every check that needs nothing created; raises ConfigurationError."""
    check_data_dir(config.data_path)
    lock = DataDirLock(config.data_path)
    # First: a daemon already running there is the answer, whatever else is wrong
    # (it may well hold the same port).
    lock.acquire_existing()
    try:
        check_listen(config.control)
        raised = check_open_files(config)
        configured_credentials(config)
        tls = server_tls(config)
        try:
            store = open_configured_store(config.store_url, config.store)
        except FiefdomError as exc:
            raise ConfigurationError(f"store.url: {exc}") from exc
        modules = import_modules(config)
    except BaseException:
        lock.release()
        raise
    return Prepared(store, modules, lock, tls, raised)


def check_listen(settings: ControlSettings) -> None:
    """Bind (and close at once) every address ``control.listen`` resolves to, as the
    control server will: a taken port or a foreign address is refused here."""
    host, port = settings.host_port()
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"control.listen: cannot resolve {host!r}: {exc.strerror}; set control.listen "
            "to an address of this machine"
        ) from None
    try:
        sockets = bind(addresses, None)  # as the control server will
    except OSError as exc:
        raise ConfigurationError(listen_error(exc, settings)) from None
    for sock in sockets:
        sock.close()


# Files kept for what is not a control connection: the store's connections and files,
# the log, the event loop, a handler's files.
OPEN_FILES_RESERVE = 64


def check_open_files(config: Config) -> tuple[int, int] | None:
    """Make sure the process may open the control port's connections (and the peer
    server's, when it listens off loopback) and then some: a soft limit below that is
    raised to the hard one (returned, before and after); a hard limit below it is
    refused, naming the settings."""
    control = config.control
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    connections = control.max_http_connections + control.probe_connections
    # TLS handshakes under way are at most as many again (see fiefdom._admission).
    needed = connections * (2 if control.tls else 1) + OPEN_FILES_RESERVE
    parts = ["twice those for TLS handshakes"] if control.tls else []
    peer_host, _ = host_port(config.cluster.listen, "cluster.listen", "127.0.0.1:7001")
    if not is_loopback(peer_host):
        # Only this machine can flood a loopback peer server: one of many ways it could.
        needed += MAX_PEER_CONNECTIONS
        parts.append(f"{MAX_PEER_CONNECTIONS} for the cluster's peers on {config.cluster.listen}")
    parts.append(f"the daemon's own {OPEN_FILES_RESERVE}")
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigurationError(
            f"control.max_http_connections: {control.max_http_connections} connections "
            f"and {control.probe_connections} probe_connections need {needed} open files "
            f"(with {', '.join(parts)}), and this process may open {hard} (ulimit -Hn); "
            "lower control.max_http_connections, or raise the limit (LimitNOFILE= in a "
            "systemd unit)"
        )
    raised = needed if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    return soft, raised


def listen_error(exc: OSError, settings: ControlSettings) -> str:
    """The one line for a failure to listen on ``control.listen``."""
    host, port = settings.host_port()
    if exc.errno == errno.EADDRINUSE:
        return (
            f"control.listen: {settings.listen} is in use by another process; stop it, "
            "or set control.listen to a free port (port 0 lets the system choose one)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"control.listen: {host} is not an address of this machine; set control.listen "
            "to one of its addresses (127.0.0.1 for this machine only, 0.0.0.0 for every "
            "interface)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"control.listen: this user may not listen on port {port} (ports below 1024 "
            "need privileges); set control.listen to a port above 1023"
        )
    return (
        f"control.listen: cannot listen on {settings.listen}: {exc.strerror or exc}; "
        "set control.listen to another address"
    )
