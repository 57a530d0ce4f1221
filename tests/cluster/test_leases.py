"""Partition leases and fencing on both dialects: a node alone holds every partition,
two nodes split them fairly and hand over on a join, a node that cannot renew stops
the work of its partitions before the lease expires, and a write made under an epoch
that has moved on is refused (StaleOwner) with nothing committed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import fiefdom
from fiefdom.cluster import ClusterSettings, Node
from fiefdom.storage import PARTITIONS, Job, JobOptions, Store, leases

sys.path.insert(0, str(Path(__file__).parent.parent / "storage"))

from storage_helpers import wait_until

FAST = ClusterSettings(lease=1.5, renew=0.3, margin=0.4)


class Note(Job):
    options = JobOptions(kind="note")
    text: str


async def test_a_node_alone_holds_every_partition(store: Store) -> None:
    """A node with no peers owns every partition after its first round."""
    async with Node(store, "alone", FAST) as node:
        assert node.held == PARTITIONS
        assert node.claimable() is None
        assert node.is_local("any key")
    owners = await leases(store).owners()
    assert {owner for _, owner, _, _ in owners} == {None}, "a stopped node hands everything over"


async def test_two_nodes_split_the_partitions_and_never_share_one(store: Store) -> None:
    """A second node joins: the first hands over half, and no partition is held by both."""
    async with Node(store, "a", FAST) as a:
        assert a.held == PARTITIONS
        async with Node(store, "b", FAST) as b:
            await wait_until(
                lambda: a.held == b.held == PARTITIONS // 2, what="a fair split of the partitions"
            )
            mine = {p for p in range(PARTITIONS) if a.owns(p)}
            theirs = {p for p in range(PARTITIONS) if b.owns(p)}
            assert mine.isdisjoint(theirs)
            assert len(mine | theirs) == PARTITIONS
            owners = {p: owner for p, owner, _, live in await leases(store).owners() if live}
            assert {p for p, o in owners.items() if o == "a"} == mine
        # b left: a takes its partitions back.
        await wait_until(lambda: a.held == PARTITIONS, what="the partitions of a node that left")
        assert a.handoffs >= 1


async def test_a_node_that_cannot_renew_fences_itself_before_its_lease_expires(
    store: Store,
) -> None:
    """With its lease table gone, a node gives up every partition (and says so to its
    engine) before the lease it last renewed could expire, on its own clock."""
    lost_at: list[float] = []
    node = Node(store, "fenced", FAST)
    await node.start()
    try:
        node.on_lost(lambda partitions, urgent: lost_at.append(time.monotonic()))
        renewed = node._renewed_at
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_partitions RENAME TO fiefdom_partitions_away")
        await wait_until(lambda: bool(lost_at), what="the node to fence itself")
        assert node.held == 0
        assert not node.is_local("any key")
        # Renewals may have succeeded until the rename: the last one bounds the fence.
        assert lost_at[0] < node._renewed_at + FAST.lease or node._renewed_at == renewed
        assert lost_at[0] < max(renewed, node._renewed_at) + FAST.lease
        assert node.fences == 1
    finally:
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_partitions_away RENAME TO fiefdom_partitions")
        await node.stop()


async def test_a_write_under_a_stale_epoch_is_refused_and_nothing_commits(store: Store) -> None:
    """After another node took a partition over, a transaction fenced with the old
    epoch raises StaleOwner and its other writes are rolled back."""
    table = leases(store)
    partition = fiefdom.storage.partition_of("doc-1")
    (first,) = (await table.hold("a", [partition], 30.0)).values()
    async with store.transaction() as tx:
        await store.check_owner(tx, partition, first)
        await store.enqueue(Note(text="under the current epoch"), tx=tx)
    await table.release("a", [partition])
    (second,) = (await table.hold("b", [partition], 30.0)).values()
    assert second == first + 1, "the epoch grows with every change of owner"
    with pytest.raises(fiefdom.StaleOwner) as info:
        await _write_fenced(store, partition, first)
    assert info.value.current == second
    texts = [msgspec.json.decode(j.args)["text"] for j in await store.list_jobs()]
    assert texts == ["under the current epoch"]


async def _write_fenced(store: Store, partition: int, epoch: int) -> None:
    async with store.transaction() as tx:
        await store.enqueue(Note(text="under a stale epoch"), tx=tx)
        await store.check_owner(tx, partition, epoch)


async def test_an_expired_lease_taken_back_by_its_owner_gets_a_new_epoch(store: Store) -> None:
    """A node that lets its lease lapse and takes the partition again holds it under a
    new epoch: what it wrote under the old one may have been fenced meanwhile."""
    table = leases(store)
    (first,) = (await table.hold("a", [7], -1.0)).values()  # a lease that has expired
    (again,) = (await table.hold("a", [7], 30.0)).values()
    assert again == first + 1
    (renewed,) = (await table.hold("a", [7], 30.0)).values()
    assert renewed == again, "a renewal of a live lease keeps its epoch"


@pytest.mark.dialect("postgres")  # SQLite has one writer: a fenced transaction blocks all
async def test_an_open_fenced_transaction_holds_back_only_its_own_partition(
    store: Store,
) -> None:
    """While the old owner's fenced transaction on one partition is open, a node takes
    over every other expired partition, keeps renewing its own and never fences itself;
    it takes the last one once that transaction has ended."""
    table = leases(store)
    theirs = list(range(1, PARTITIONS, 2))
    held = await table.hold("old", theirs, 0.5)
    locked = theirs[0]
    node = Node(store, "new", FAST)
    async with store.transaction() as tx:
        await store.check_owner(tx, locked, held[locked])
        await node.start()
        try:
            await wait_until(
                lambda: node.held == PARTITIONS - 1, what="every partition but the locked one"
            )
            assert not node.owns(locked)
        except BaseException:
            await node.stop()
            raise
    try:
        await wait_until(lambda: node.held == PARTITIONS, what="the partition, once released")
        assert node.fences == 0
    finally:
        await node.stop()


class Touch(Job):
    options = JobOptions(kind="touch", domain="res", key="key")
    key: str


class Res(fiefdom.Actor[Any]):
    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Any) -> None:
        return None


async def test_an_engine_serving_a_domain_joins_and_shows_it_in_metrics(store: Store) -> None:
    """With no configuration an engine serving a domain runs a node that holds every
    partition alone; its statistics (with the node's view: itself, its claim) and
    /metrics (with the node's counters) say so; one without a domain does not."""
    from fiefdom.protocol import ControlMetrics

    metrics = ControlMetrics()
    async with fiefdom.ActorSystem(name="metrics") as system:
        res = system.domain("res", Res)
        engine = fiefdom.JobEngine(store, domains={"res": res}, retention=None)
        metrics.engine = engine
        async with engine:
            stats = engine.statistics()
            assert (stats.partitions, stats.cluster_nodes) == (PARTITIONS, 1)
            metrics.render([])
            assert metrics.registry.get_sample_value("fiefdom_cluster_partitions_held") == 256
            assert metrics.registry.get_sample_value("fiefdom_cluster_nodes") == 1
            view = stats.cluster
            assert view is not None
            assert [(m.node, m.partitions) for m in view.members] == [(engine.worker, PARTITIONS)]
            assert [e.kind for e in view.events] == ["joined", "claimed"]
            renewals = metrics.registry.get_sample_value("fiefdom_cluster_lease_renewals_total")
            assert renewals is not None
            assert renewals >= view.counters.renewals >= 1  # read later, never fewer
            assert metrics.registry.get_sample_value("fiefdom_cluster_takeovers_total") == 0
    plain = fiefdom.JobEngine(store, retention=None)
    assert plain.statistics().partitions is None
    assert plain.statistics().cluster is None
