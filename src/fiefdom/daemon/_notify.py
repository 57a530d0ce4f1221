"""systemd's readiness protocol (``sd_notify``): when the service manager passes
``NOTIFY_SOCKET``, the daemon sends ``READY=1`` once it is ready and ``STOPPING=1``
when it begins to stop, each as one datagram on that unix socket. Without
``NOTIFY_SOCKET`` nothing is sent."""

from __future__ import annotations

import os
import socket

from .._log import get_logger

log = get_logger("fiefdom.daemon")

_SEND_TIMEOUT = 5.0  # a bound on a blocked send, not a wait: the manager reads at once


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ...) to ``NOTIFY_SOCKET``; whether
    it was sent. A path, or ``@name`` for an abstract socket; a failure is logged
    (the daemon runs on: readiness is the manager's concern)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.warning("NOTIFY_SOCKET is not a unix socket path; not notifying", address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("systemd notification failed", state=state, address=address, error=str(exc))
        return False
    return True
