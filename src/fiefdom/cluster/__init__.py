"""The cluster: one owner per domain key across every process that shares a store.
Keys hash to partitions; a ``Node`` holds leases on its fair share of them, with an
epoch that grows on every change of owner, renews them, hands them over when a node
joins or it stops, and fences itself (stops the work of partitions whose leases it
cannot renew) before they expire. Every ``JobEngine`` that serves a domain runs a
node by itself: importing this package registers it as the engine's ownership.
``Node.view()`` tells what a node knows of the cluster (``ClusterView``: its
``ClusterMember`` nodes, ``ClusterEvent`` events and ``ClusterCounters``), as
``fiefdom status`` and ``/metrics`` show it."""

from ..jobs import register_ownership as _register_ownership
from ..jobs._ownership import ClusterCounters as ClusterCounters
from ..jobs._ownership import ClusterEvent as ClusterEvent
from ..jobs._ownership import ClusterMember as ClusterMember
from ..jobs._ownership import ClusterView as ClusterView
from ..storage import Store as _Store
from ._node import ClusterSettings as ClusterSettings
from ._node import Node as Node
from ._serving import ServingNode as ServingNode


def _engine_node(store: _Store, name: str, lease: float, listen: str, address: str | None) -> Node:
    # An engine's node keeps its partitions with the engine's own job lease, and
    # forwards messages for the keys other nodes own to them.
    settings = ClusterSettings(lease=lease, renew=lease / 3, margin=lease / 5, address=address)
    return ServingNode(store, name, settings, listen=listen)


_register_ownership(_engine_node)

__all__ = [
    "ClusterCounters",
    "ClusterEvent",
    "ClusterMember",
    "ClusterSettings",
    "ClusterView",
    "Node",
    "ServingNode",
]
