"""``host_port``: a ``HOST:PORT`` setting read once, for every listener of the
project (the control server, a cluster node's peer server); ``is_loopback``."""

from __future__ import annotations

import ipaddress

from ._errors import ConfigurationError


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts as one, any other
    host name as not one): only this machine can reach it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(address: str, setting: str, example: str) -> tuple[str, int]:
    """``address`` as (host, port); a ConfigurationError naming ``setting`` (with
    ``example``) if it is not ``HOST:PORT`` with a port of 0-65535. An IPv6 host may
    be written in brackets; an empty host is 127.0.0.1."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(
            f"{setting} must be HOST:PORT (for example {example}), got {address!r}"
        )
    number = int(port)
    if number > 65535:
        # Left unchecked, the OS would take the port modulo 65536.
        raise ConfigurationError(f"{setting}: the port must be 0-65535, got {number}")
    return host.strip("[]") or "127.0.0.1", number
