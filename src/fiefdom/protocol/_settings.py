"""Settings of the control channel (the ``[control]`` section of the daemon's
configuration) and the tokens it accepts."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec

from .._address import host_port, is_loopback
from ._messages import Role

# Bounds checked when the configuration is decoded; the message names the key.
_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
_AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
_PositiveRate = Annotated[float, msgspec.Meta(gt=0)]


class TokenSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A token and the role it carries; give the secret inline or in a file."""

    role: Role
    token: str | None = None
    token_file: str | None = None
    name: str = ""


class ControlSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[control]`` section: the address, the tokens, and the channel's limits."""

    listen: str = "127.0.0.1:8765"
    tokens: list[TokenSpec] = msgspec.field(default_factory=list)
    # TLS: the certificate (chain) and its private key, PEM files (relative paths: to
    # the configuration file's folder); both or neither. With them the listener
    # serves https:// and wss:// only; SIGHUP loads them again from disk.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Whether /metrics needs a token (role read). Unset: only when ``listen`` is not a
    # loopback address, so that a scraper on the same machine needs no secret while
    # one elsewhere does. /healthz and /readyz never need one.
    metrics_auth: bool | None = None
    max_frame_bytes: _AtLeastOne = 1 << 20
    # Arrays and objects (maps) nested deeper than this in a frame are refused before
    # decoding ("invalid_frame"): decoders recurse, and Python's stack is a few
    # hundred of them deep. The frame itself is the first level.
    max_frame_depth: Annotated[int, msgspec.Meta(ge=2, le=256)] = 32
    max_connections: _AtLeastOne = 256  # clients that have authenticated
    # Websockets that have not yet authenticated (no valid hello yet), counted apart:
    # idle sockets that never say hello must not lock authenticated clients out. When
    # they are all taken, a new one closes the oldest of them (1013, try again later),
    # so a client that authenticates by hello (a browser) always gets its turn.
    max_unauthenticated: _AtLeastOne = 32
    messages_per_second: _PositiveRate = 1000.0
    burst: _AtLeastOne = 2000
    # Fairness (see _fairness.py). A connection with max_in_flight requests not yet
    # answered is not read from until one is. Requests of every connection share
    # max_running_requests slots, a free one going to the connection holding the
    # fewest, and one connection holds at most max_running_per_connection of them (a
    # flooder's requests then queue behind its own, not in front of everyone's); a
    # request past running_request_slice gives its slot back and runs on.
    max_in_flight: _AtLeastOne = 64
    max_running_requests: _AtLeastOne = 256
    max_running_per_connection: _AtLeastOne = 4
    running_request_slice: _PositiveSeconds = 0.1
    subscriber_buffer: _AtLeastOne = 1000  # events held for a slow subscriber before dropping
    hello_timeout: _PositiveSeconds = 5.0  # an unauthenticated connection is closed after this
    shutdown_timeout: _Seconds = 5.0  # open connections get this long to finish on stop
    # HTTP connections (see _admission.py). A connection must send a whole request's
    # headers within header_timeout of connecting, or of its previous request (an idle
    # keep-alive connection is closed then too: aiohttp's keepalive_timeout). A body
    # a handler does not read is read and dropped for at most body_timeout (aiohttp's
    # lingering_time); a handler that reads one reads it within body_timeout too.
    header_timeout: _PositiveSeconds = 10.0
    body_timeout: _PositiveSeconds = 10.0
    # Connections of every kind (websockets included). Past it, a newcomer closes the
    # oldest one with no request under way, else it may only probe /healthz and
    # /readyz on one of probe_connections spare slots; past those it gets a 503. Keep
    # the sum under the daemon's limit on open files (ulimit -n) with room to spare.
    max_http_connections: _AtLeastOne = 512
    probe_connections: _AtLeastOne = 16

    def host_port(self) -> tuple[str, int]:
        return host_port(self.listen, "control.listen", "127.0.0.1:8765")

    def metrics_auth_required(self) -> bool:
        """Whether ``/metrics`` asks for a token: ``metrics_auth`` when it is set, else
        unless ``listen`` is a loopback address (a host name counts as not one)."""
        if self.metrics_auth is not None:
            return self.metrics_auth
        return not self.loopback()

    def loopback(self) -> bool:
        """Whether ``listen`` is a loopback address (``localhost`` counts as one, any
        other host name as not one): only this machine can reach it."""
        return is_loopback(self.host_port()[0])

    @property
    def tls(self) -> bool:
        """Whether the listener serves TLS (``tls_cert`` and ``tls_key`` are set)."""
        return self.tls_cert is not None and self.tls_key is not None


@dataclass(frozen=True, slots=True)
class Credential:
    """A resolved token: its secret bytes, its role and a name for logs."""

    secret: bytes
    role: Role
    name: str


class TokenTable:
    """Resolves a presented token to its role, comparing in constant time."""

    def __init__(self, credentials: Sequence[Credential]) -> None:
        if not credentials:
            raise ValueError("the control channel needs at least one token")
        self._credentials = tuple(credentials)

    def role_of(self, presented: str | None) -> Role | None:
        if presented is None:
            return None
        candidate = presented.encode()
        found: Role | None = None
        # Compare against every credential, without stopping at a match, so that the
        # time taken does not tell which (or whether a) token matched.
        for cred in self._credentials:
            if hmac.compare_digest(candidate, cred.secret) and found is None:
                found = cred.role
        return found
