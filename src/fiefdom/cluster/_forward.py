"""Forwarding: a message for a domain key owned by another node of the cluster goes
to that node over a websocket between the two, and the reply comes back.

- Each node runs a small peer server (``listen``, loopback by default) and
  advertises its address in the node table. A peer presents the cluster's secret,
  kept in the store (``fiefdom_cluster``), so nothing needs configuring.
- The owner of a key is the owner of its partition in the store; the sender keeps
  that table for a moment and reads it again when a peer answers that it no longer
  owns the key (nothing ran there) or while no node holds the partition.
- An ask keeps its deadline (what is left of it travels: queued past it, the message
  is removed unrun; running, it is cancelled) and its call chain, so a cycle that
  crosses nodes fails at once. A caller cancelled while it waits cancels the ask on
  the owner too. If no owner answers within the deadline: ``OwnerUnavailable``.
- Only keys that are strings or integers travel (they must hash to the same
  partition on the owner), and messages that are ``msgspec.Struct`` instances of a
  type the owner has imported too; a ``domain.call(fn)`` cannot travel."""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

import aiohttp
import anyio
import msgspec

from .._address import host_port
from .._errors import (
    ActorStopped,
    AskTimeout,
    CallCycleError,
    OwnerUnavailable,
    RemoteHandlerError,
    StoreError,
)
from .._log import get_logger
from ..actors import DEFAULT_CANCEL_GRACE, Domain, Request
from ..actors._cell import chain_paths
from ..actors._message import Invoke
from ..storage import Store, leases, partition_of
from ._peer_link import Link, LinkLost
from ._peer_server import PeerServer
from ._peer_wire import AskFrame, ErrorFrame, ReplyFrame, TellFrame, reply_type, type_name

log = get_logger("fiefdom.cluster")

# How long the owners read from the store are trusted before they are read again.
_OWNERS_FRESH = 1.0
# A tell (which has no deadline of its own) waits this long for its owner to queue it,
# and an ask without a deadline this long to find an owner that answers.
TELL_TIMEOUT = 10.0


class Peers:
    """This node's side of forwarding: its peer server, its links to the other nodes,
    and the domains it delivers forwarded messages to (see the module doc)."""

    def __init__(
        self, node: str, store: Store, *, listen: str = "127.0.0.1:0", advertise: str | None = None
    ) -> None:
        self.node = node
        self._leases = leases(store)
        self._listen = host_port(listen, "cluster listen address", "127.0.0.1:7001")
        self._advertise = advertise
        self.address: str | None = None
        self.domains: dict[str, Domain[Any, Any]] = {}
        self._server: PeerServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._links: dict[str, Link] = {}
        self._secret = ""
        self._owners: dict[int, str | None] = {}
        self._addresses: dict[str, str | None] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Future[None] | None = None
        # Figures for status and metrics.
        self.forwarded = 0
        self.forward_failures = 0
        self.forward_seconds = 0.0

    @property
    def peer_connections_refused(self) -> int:
        """Connections to this node's peer server its admission closed or refused."""
        return 0 if self._server is None else sum(self._server.refused.values())

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> str:
        """Read (or set) the cluster's secret and start serving peers; returns the
        address this node advertises."""
        self._secret = await self._leases.shared("peer_secret", secrets.token_urlsafe(32))
        server = PeerServer(self)
        host, port = self._listen
        bound = await server.start(host, port)
        self._server = server
        self.address = self._advertise or f"{host}:{bound}"
        self._session = aiohttp.ClientSession()
        return self.address

    async def stop(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def authorized(self, header: str) -> bool:
        return bool(self._secret) and hmac.compare_digest(
            header.encode(), f"Bearer {self._secret}".encode()
        )

    # -- sending ---------------------------------------------------------------------

    def forwarder(self, name: str, path: str) -> DomainForwarder:
        """What the domain ``path``, known to the cluster as ``name``, forwards with."""
        return DomainForwarder(self, name, path)

    async def forward_ask(
        self, domain: str, path: str, key: Hashable, msg: Request[Any], timeout: float | None
    ) -> Any:
        key = _travelling_key(path, key)
        if isinstance(msg, Invoke):
            raise OwnerUnavailable(path, "a function call (call) cannot be forwarded to its node")
        chain = chain_paths()
        if path in chain:
            raise CallCycleError([*chain[chain.index(path) :], path])
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        frame = AskFrame(
            id=0,
            domain=domain,
            key=key,
            type=type_name(type(msg)),
            body=_encode(path, msg),
            timeout=timeout,
            chain=list(chain),
        )

        def refresh_left(frame: AskFrame) -> float | None:
            if deadline is None:
                return None
            frame.timeout = max(0.0, deadline - time.monotonic())
            # The owner waits its handler's grace past the deadline before it answers.
            return frame.timeout + DEFAULT_CANCEL_GRACE + 1.0

        reply = await self._send(path, key, frame, deadline, refresh_left, timeout)
        self.forward_seconds += time.monotonic() - began
        return msgspec.msgpack.decode(reply.body, type=reply_type(type(msg)))

    async def forward_tell(self, domain: str, path: str, key: Hashable, msg: object) -> None:
        key = _travelling_key(path, key)
        began = time.monotonic()
        frame = TellFrame(
            id=0, domain=domain, key=key, type=type_name(type(msg)), body=_encode(path, msg)
        )
        deadline = began + TELL_TIMEOUT
        await self._send(path, key, frame, deadline, lambda _: deadline - time.monotonic())
        self.forward_seconds += time.monotonic() - began

    async def _send(
        self,
        path: str,
        key: str | int,
        frame: AskFrame | TellFrame,
        deadline: float | None,
        left: Callable[[Any], float | None],
        timeout: float | None = None,
    ) -> ReplyFrame:
        self.forwarded += 1
        partition = partition_of(key)
        # An ask without a deadline waits for its reply as long as the handler runs,
        # but not for ever for a node to answer at all.
        give_up = time.monotonic() + TELL_TIMEOUT if deadline is None else deadline
        pause = 0.02
        fresh = False
        why = "no node holds its partition (its lease is changing hands)"
        while True:
            address = await self._owner_address(partition, fresh=fresh)
            fresh = True
            if address is not None:
                try:
                    answer = await self._ask_peer(address, frame, left(frame), deadline)
                except (LinkLost, OSError, aiohttp.ClientError, TimeoutError) as exc:
                    why = f"its node at {address} cannot be reached: {exc or type(exc).__name__}"
                else:
                    if isinstance(answer, ReplyFrame):
                        return answer
                    if answer.code != "not_owner":
                        self.forward_failures += 1
                        raise _error(answer, frame, timeout)
                    why = answer.message
            if time.monotonic() + pause >= give_up:
                self.forward_failures += 1
                raise OwnerUnavailable(path, why)
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _ask_peer(
        self, address: str, frame: AskFrame | TellFrame, wait: float | None, deadline: float | None
    ) -> ReplyFrame | ErrorFrame:
        link = self._links.get(address)
        if link is None or link.closed:
            link = await self._open_link(address, link, deadline)
        return await link.request(frame, wait)

    async def _open_link(self, address: str, old: Link | None, deadline: float | None) -> Link:
        assert self._session is not None, "forwarding before the node started"
        if old is not None:
            await old.close()
        link = Link(self._session, address, self._secret, self.node)
        connect = TELL_TIMEOUT if deadline is None else max(0.01, deadline - time.monotonic())
        with anyio.fail_after(connect):
            await link.open()
        current = self._links.get(address)
        if current is not None and current is not old and not current.closed:
            # Another caller opened one meanwhile: one link per peer.
            await link.close()
            return current
        self._links[address] = link
        return link

    async def _owner_address(self, partition: int, *, fresh: bool) -> str | None:
        """The address of the node that holds ``partition``, from the store (read
        again if older than a moment, or if ``fresh``); None if nobody holds it."""
        if fresh or time.monotonic() - self._read_at > _OWNERS_FRESH:
            await self._read_owners()
        owner = self._owners.get(partition)
        if owner is None or owner == self.node:
            # This node holds it in the store but has not taken it up yet: wait.
            return None
        return self._addresses.get(owner)

    async def _read_owners(self) -> None:
        # One read at a time; callers that come meanwhile share it.
        if self._reading is not None:
            await asyncio.shield(self._reading)
            return
        self._reading = asyncio.get_running_loop().create_future()
        try:
            try:
                rows = await self._leases.owners()
                addresses = await self._leases.addresses()
            except StoreError as exc:
                log.warning("cannot read the partition owners", error=str(exc))
                return
            self._owners = {p: owner if live else None for p, owner, _, live in rows}
            self._addresses = addresses
            self._read_at = time.monotonic()
        finally:
            self._reading.set_result(None)
            self._reading = None


class DomainForwarder:
    """The ``Forwarder`` of one domain: its messages for keys owned elsewhere go
    through ``peers`` under the name the cluster knows the domain by."""

    def __init__(self, peers: Peers, name: str, path: str) -> None:
        self._peers = peers
        self._name = name
        self._path = path

    def forward_ask(
        self, key: Hashable, msg: Request[Any], timeout: float | None
    ) -> Coroutine[Any, Any, Any]:
        path = f"{self._path}/{key}"
        return self._peers.forward_ask(self._name, path, key, msg, timeout)

    def forward_tell(self, key: Hashable, msg: object) -> Coroutine[Any, Any, None]:
        return self._peers.forward_tell(self._name, f"{self._path}/{key}", key, msg)


def _travelling_key(path: str, key: Hashable) -> str | int:
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise OwnerUnavailable(
            path, f"a key of type {type(key).__name__} cannot be forwarded (only str and int)"
        )
    return key


def _encode(path: str, msg: object) -> bytes:
    """``msg`` as it travels; a TypeError naming what is wrong if it cannot (nothing
    was sent)."""
    if not isinstance(msg, msgspec.Struct):
        raise TypeError(
            f"a message to {path}, owned by another node, must be a msgspec.Struct, "
            f"got {type(msg).__name__}"
        )
    try:
        return msgspec.msgpack.encode(msg)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise TypeError(
            f"{type(msg).__name__} cannot be sent to {path}, owned by another node: {exc}"
        ) from None


def _error(answer: ErrorFrame, frame: AskFrame | TellFrame, timeout: float | None) -> Exception:
    """The exception the caller gets for the owner's ``answer``."""
    match answer.code:
        case "timeout":
            return AskTimeout(
                answer.path,
                frame.type.rpartition(".")[2],
                timeout or 0.0,
                "running" if answer.phase == "running" else "queued",
                handler_exited=answer.handler_exited,
            )
        case "cycle":
            return CallCycleError(answer.cycle)
        case "stopped":
            return ActorStopped(answer.path, answer.message)
        case "raised":
            return RemoteHandlerError(answer.path, answer.node, answer.error_type, answer.message)
        case _:
            return OwnerUnavailable(answer.path, answer.message)
