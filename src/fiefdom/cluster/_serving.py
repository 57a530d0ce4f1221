"""``ServingNode``: the cluster node a ``JobEngine`` runs for the domains it serves. It
holds partition leases as a ``Node`` does, and forwards messages for keys owned by
other nodes to them (``Peers``): a domain it serves asks and tells every key, the
local ones here and the others on their owner."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgspec

from .._lifecycle import State, StopMode
from ..actors import Domain
from ..jobs._ownership import ClusterView
from ..storage import Store
from ._forward import Peers
from ._node import ClusterSettings, Node


class ServingNode(Node):
    """A ``Node`` that also serves and sends forwarded messages. ``listen`` is where
    its peer server listens (loopback, any free port, by default); the address it
    advertises is ``settings.address``, else the one it listens on."""

    def __init__(
        self,
        store: Store,
        name: str,
        settings: ClusterSettings | None = None,
        *,
        listen: str = "127.0.0.1:0",
    ) -> None:
        super().__init__(store, name, settings)
        self.peers = Peers(name, store, listen=listen, advertise=self.settings.address)

    async def start(self) -> None:
        if self.state is State.NEW:
            # Before joining: the node's row advertises where peers reach it.
            address = await self.peers.start()
            self.settings = dataclasses.replace(self.settings, address=address)
        try:
            await super().start()
        except BaseException:
            if self.state is not State.RUNNING:
                await self.peers.stop()
            raise

    async def stop(self, mode: StopMode = "drain") -> None:
        await super().stop(mode)
        await self.peers.stop()

    def view(self) -> ClusterView:
        """The node's view, its forwarding counted in."""
        view = super().view()
        peers = self.peers
        counters = msgspec.structs.replace(
            view.counters,
            forwarded=peers.forwarded,
            forward_failures=peers.forward_failures,
            forward_seconds=peers.forward_seconds,
            peer_connections_refused=peers.peer_connections_refused,
        )
        return msgspec.structs.replace(view, counters=counters)

    def serve(self, name: str, domain: Domain[Any, Any]) -> Callable[[], None]:
        """Run only the keys of ``domain`` (known to the cluster as ``name``) this
        node owns, send the others to their owners, and take theirs; returns the
        function that undoes it."""
        remove = domain.add_placement(self)
        domain.set_forwarder(self.peers.forwarder(name, domain.path))
        self.peers.domains[name] = domain

        def undo() -> None:
            remove()
            domain.set_forwarder(None)
            if self.peers.domains.get(name) is domain:
                del self.peers.domains[name]

        return undo
