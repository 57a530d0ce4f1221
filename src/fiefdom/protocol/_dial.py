"""How a client reaches the daemon: the URL forms it accepts, the TLS context it
verifies the daemon with, and the wait for TLS to close. Apart from the channel, as
these are settled before the websocket opens and after it has closed."""

from __future__ import annotations

import asyncio
from os import PathLike
from ssl import SSLContext, SSLError, create_default_context
from typing import Any

from .._errors import ConfigurationError

# Seconds a stopping client waits for the daemon's side of closing TLS (one round trip
# when it answers) before it aborts the connection.
_TLS_CLOSE = 2.0


def _ws_url(url: str) -> str:
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif "://" not in url:
        url = "ws://" + url
    return url if url.rstrip("/").endswith("/ws") else url.rstrip("/") + "/ws"


def _client_tls(
    url: str, ssl: SSLContext | None, cafile: str | PathLike[str] | None
) -> SSLContext | None:
    """The context to verify the daemon's certificate with (None: aiohttp's default,
    the system's trusted CAs, for a ``wss://`` URL)."""
    if ssl is not None and cafile is not None:
        raise ValueError("give ssl or cafile, not both")
    if ssl is None and cafile is None:
        return None
    if not url.startswith("wss://"):
        raise ValueError(f"ssl and cafile are for wss:// (or https://) URLs, not {url}")
    if ssl is not None:
        return ssl
    try:
        return create_default_context(cafile=cafile)
    except SSLError as exc:
        reason = str(exc.reason or exc).lower().replace("_", " ")
        raise ConfigurationError(f"cafile: {cafile} holds no PEM certificate ({reason})") from None
    except OSError as exc:
        raise ConfigurationError(f"cafile: cannot read {cafile}: {exc.strerror or exc}") from None


async def _tls_closed(protocol: Any) -> None:
    """Wait until the socket of a TLS connection whose websocket has closed is closed
    too. Closing TLS takes one more exchange with the daemon, which aiohttp leaves to
    finish in the background: a caller whose loop ends at once (``asyncio.run``
    around the client) would leave the socket open until it is collected. The wait is
    one round trip; past ``_TLS_CLOSE`` the connection is aborted."""
    closed = getattr(protocol, "closed", None)
    if not isinstance(closed, asyncio.Future):
        return
    # asyncio.wait: a timeout must not cancel aiohttp's own future.
    await asyncio.wait([closed], timeout=_TLS_CLOSE)
    if not closed.done():
        protocol.abort()
