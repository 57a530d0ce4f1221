"""What a node tells of its cluster, on both dialects: every node with its partition
count and epochs, this node's counters (renewals, takeovers, partitions lost, handoffs,
fences) and its last events, from memory (a store that is down does not make it
fail), through the engine's statistics to /metrics; and the control channel's
ClusterInfo stays readable by clients of either age."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import fiefdom
from fiefdom.cluster import ClusterEvent, ClusterMember, ClusterSettings, ClusterView, Node
from fiefdom.protocol import ClusterInfo
from fiefdom.storage import PARTITIONS, Store, leases

sys.path.insert(0, str(Path(__file__).parent.parent / "storage"))

from storage_helpers import wait_until

# For a test that waits for a node to fence itself (a lease, less its margin).
FAST = ClusterSettings(lease=1.5, renew=0.3, margin=0.4)
# Renewed as often, but lasting long enough that a stalled test run does not let
# the node's leases expire: for the tests that need no expiry, or make one by hand.
LONG = ClusterSettings(lease=10.0, renew=0.3, margin=2.0)
HALF = PARTITIONS // 2


def _shares(view: ClusterView) -> dict[str, tuple[int, int | None, int | None]]:
    """Each live-leased node of ``view``: (partitions, min epoch, max epoch)."""
    return {m.node: (m.partitions, m.min_epoch, m.max_epoch) for m in view.members}


def _events(view: ClusterView, kind: str) -> list[ClusterEvent]:
    return [e for e in view.events if e.kind == kind]


async def test_a_node_joining_shows_in_both_views_with_the_handoff(store: Store) -> None:
    """A node alone claims every partition under epoch 1; a second joins: both views
    come to show both nodes with half each (the newcomer's under epoch 2), the first
    counts a handoff of half to the newcomer and the newcomer counts them received,
    with neither counting a takeover."""
    async with Node(store, "a", LONG) as a:
        alone = a.view()
        assert _shares(alone) == {"a": (PARTITIONS, 1, 1)}
        assert (alone.node, alone.partitions, alone.min_epoch, alone.max_epoch) == ("a", 256, 1, 1)
        assert [e.kind for e in alone.events] == ["joined", "claimed"]
        assert _events(alone, "claimed")[0].partitions == PARTITIONS
        assert alone.counters.claimed == PARTITIONS
        assert alone.counters.renewals >= 1
        assert alone.as_of is not None
        async with Node(store, "b", LONG) as b:
            split = {"a": (HALF, 1, 1), "b": (HALF, 2, 2)}
            await wait_until(
                lambda: _shares(a.view()) == split == _shares(b.view()),
                what="both views to show the split",
            )
            seen_by_a, seen_by_b = a.view(), b.view()
            assert all(m.alive for m in seen_by_a.members)
            assert seen_by_a.unowned == seen_by_b.unowned == 0
            (handoff,) = _events(seen_by_a, "handed_over")
            assert (handoff.partitions, handoff.nodes) == (HALF, ["b"])
            assert _events(seen_by_a, "peer_joined")[0].nodes == ["b"]
            assert (seen_by_a.counters.handed_over, seen_by_a.counters.handoffs) == (HALF, 1)
            assert _events(seen_by_b, "joined")[0].nodes == ["a"]
            assert sum(e.partitions for e in _events(seen_by_b, "received")) == HALF
            assert seen_by_b.counters.received == HALF
            assert seen_by_a.counters.took_over == seen_by_b.counters.took_over == 0
            assert (seen_by_b.partitions, seen_by_b.min_epoch, seen_by_b.max_epoch) == (HALF, 2, 2)
        assert b.view().events[-1].kind == "left"


async def test_a_silent_node_s_partitions_are_taken_over_and_counted(store: Store) -> None:
    """A node whose loop stops (a paused process: it neither renews nor releases) has
    its partitions taken over once its leases expire: the survivor counts them as a
    takeover from it, under a new epoch, and sees it go. (The silent node's heartbeat
    and leases are moved into the past, as the store's clock finds them a lease
    later: the survivor's own leases, long ones, stay live whatever the test run's
    stalls.)"""
    async with Node(store, "a", LONG) as a:
        b = Node(store, "b", LONG)
        await b.start()
        try:
            await wait_until(lambda: a.held == b.held == HALF, what="a fair split")
            task = b._task
            assert task is not None
            task.cancel()  # b stops renewing, and keeps its leases until they expire
            await asyncio.wait([task])
            past = "now() - interval '1 hour'" if store.backend == "postgres" else "0"
            async with store.transaction() as tx:
                await tx.execute(f"UPDATE fiefdom_nodes SET heartbeat_at = {past} WHERE id = 'b'")
                await tx.execute(
                    f"UPDATE fiefdom_partitions SET lease_expires_at = {past} WHERE owner = 'b'"
                )
            await wait_until(lambda: a.held == PARTITIONS, what="a to take b's partitions")
            await wait_until(
                lambda: _shares(a.view()) == {"a": (PARTITIONS, 1, 3)},
                what="a's view of the cluster after the takeover",
            )
            view = a.view()
            assert view.counters.took_over == HALF
            assert view.counters.lost == view.counters.fences == 0
            took = _events(view, "took_over")
            assert sum(e.partitions for e in took) == HALF
            assert {n for e in took for n in e.nodes} == {"b"}
            assert _events(view, "peer_gone")[0].nodes == ["b"]
            epochs = {p: a.epoch(p) for p in range(PARTITIONS)}
            assert {epochs[p] for p in range(PARTITIONS) if p % 2} == {3}, "b held them at 2"
        finally:
            await b.stop()


async def test_a_partition_taken_behind_a_node_s_back_counts_as_lost(store: Store) -> None:
    """Partitions another owner takes while the node believes it holds them (its lease
    ran out by the database's clock: a clock step, a long stall) count as lost, show
    under their new owner, and count as taken over once that owner's lease expires."""
    async with Node(store, "a", LONG) as a:
        soon = (
            "now() + interval '1 second'"
            if store.backend == "postgres"
            else "(julianday('now') - 2440587.5) * 86400.0 + 1"
        )
        async with store.transaction() as tx:
            await tx.execute(
                "UPDATE fiefdom_partitions SET owner = 'thief', epoch = epoch + 1, "
                f"lease_expires_at = {soon} WHERE partition IN (5, 6, 7)"
            )
        await wait_until(lambda: a.view().counters.lost == 3, what="the loss to be counted")
        (lost,) = _events(a.view(), "lost")
        assert lost.partitions == 3
        await wait_until(
            lambda: a.view().counters.took_over == 3, what="the partitions to be taken back"
        )
        (took,) = _events(a.view(), "took_over")
        assert (took.partitions, took.nodes) == (3, ["thief"])
        assert {a.epoch(p) for p in (5, 6, 7)} == {3}
        assert {a.epoch(p) for p in range(PARTITIONS) if p not in (5, 6, 7)} == {1}
        await wait_until(
            lambda: _shares(a.view()) == {"a": (PARTITIONS, 1, 3)}, what="the view of it all"
        )
        assert a.view().counters.expired == 0


async def test_a_lease_that_expired_under_its_holder_stops_its_work(store: Store) -> None:
    """Leases that expire while their node holds them (by the store's clock: a stall
    past the lease, a clock step) are held again at the next round under a new epoch,
    and count as expired: the work begun under the old epoch is stopped at once (the
    lost-partitions callbacks hear of them, urgent), since another node could have run
    their keys meanwhile."""
    told: list[tuple[frozenset[int], bool]] = []
    async with Node(store, "a", LONG) as a:
        a.on_lost(lambda partitions, urgent: told.append((partitions, urgent)))
        assert {a.epoch(p) for p in range(PARTITIONS)} == {1}
        ran_out = "now() - interval '1 hour'" if store.backend == "postgres" else "0"
        async with store.transaction() as tx:
            await tx.execute(
                f"UPDATE fiefdom_partitions SET lease_expires_at = {ran_out} "
                "WHERE partition IN (8, 9)"
            )
        await wait_until(lambda: a.view().counters.expired >= 2, what="the expiry to be counted")
        await wait_until(lambda: a.held == PARTITIONS, what="the partitions to be held again")
        view = a.view()
        assert view.counters.expired == 2, "only the leases that ran out expire"
        assert (a.epoch(8), a.epoch(9)) == (2, 2)
        assert {a.epoch(p) for p in range(PARTITIONS) if p not in (8, 9)} == {1}
        assert told == [(frozenset({8, 9}), True)]
        (expired,) = _events(view, "expired")
        assert expired.partitions == 2
        assert view.counters.lost == view.counters.fences == view.counters.took_over == 0
        assert view.counters.claimed == PARTITIONS + 2, "taken again as its own"
        await wait_until(
            lambda: _shares(a.view()) == {"a": (PARTITIONS, 1, 2)}, what="the view after it"
        )


@pytest.mark.dialect("postgres")
async def test_an_expired_lease_passed_over_for_a_locked_row_counts_as_expired(
    store: Store,
) -> None:
    """On PostgreSQL a node takes an expired lease back only when no transaction holds
    its row (the old epoch's fenced transaction, say): it passes it over that round.
    Its own expired lease passed over counts as expired (its work stops at once), not
    as lost (the table names no other owner), and is held again at a later round."""
    told: list[tuple[frozenset[int], bool]] = []
    async with Node(store, "a", LONG) as a:
        a.on_lost(lambda partitions, urgent: told.append((partitions, urgent)))

        async def a_round_waits_for_the_row() -> bool:
            async with store.transaction() as probe:
                waiting = await probe.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN "
                    "('transactionid', 'tuple')"
                )
            return bool(waiting)

        async with store.transaction() as tx:
            await tx.execute(
                "UPDATE fiefdom_partitions SET lease_expires_at = now() - interval '1 hour' "
                "WHERE partition = 8"
            )
            # The node's renewal of its leases (still live as committed) waits for
            # this row; once this commits, the row's expired lease is passed over.
            await wait_until(a_round_waits_for_the_row, what="a's round to wait for the row")
        await wait_until(lambda: a.view().counters.expired == 1, what="the expiry to count")
        assert told == [(frozenset({8}), True)]
        assert a.view().counters.lost == 0, "no other node took it"
        await wait_until(lambda: a.held == PARTITIONS, what="partition 8 to be held again")
        assert a.epoch(8) == 2
        assert a.view().counters.expired == 1


async def test_the_view_outlives_a_store_that_cannot_be_read(store: Store) -> None:
    """With its partition table gone the node fences itself; its view, built from
    memory, still answers: the nodes as its last good round saw them, the failed
    rounds counted and the fence among its events."""
    node = Node(store, "a", FAST)
    await node.start()
    try:
        before = node.view()
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_partitions RENAME TO fiefdom_partitions_away")
        await wait_until(lambda: node.fences == 1, what="the node to fence itself")
        view = node.view()
        assert view.as_of is not None
        assert before.as_of is not None
        assert view.as_of >= before.as_of
        assert [m.node for m in view.members] == ["a"]
        assert view.partitions == view.members[0].partitions == 0
        assert view.counters.renewal_failures >= 1
        assert view.counters.fences == 1
        (fenced,) = _events(view, "fenced")
        assert fenced.partitions == PARTITIONS
    finally:
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_partitions_away RENAME TO fiefdom_partitions")
        await node.stop()


class Res(fiefdom.Actor[Any]):
    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Any) -> None:
        return None


async def test_an_engine_s_takeover_shows_in_its_statistics_and_metrics(store: Store) -> None:
    """An engine joins a store whose partitions an earlier node left held (it died: no
    heartbeat, leases running out): once they expire its node takes all of them over,
    and the engine's statistics and /metrics count the takeover and the renewals."""
    from fiefdom.protocol import ControlMetrics

    await leases(store).hold("gone", list(range(PARTITIONS)), 1.0)
    metrics = ControlMetrics()
    async with fiefdom.ActorSystem(name="metrics") as system:
        engine = fiefdom.JobEngine(
            store, domains={"res": system.domain("res", Res)}, lease=1.5, retention=None
        )
        metrics.engine = engine
        async with engine:
            await wait_until(
                lambda: engine.statistics().partitions == PARTITIONS, what="the takeover"
            )
            view = engine.statistics().cluster
            assert view is not None
            assert view.node == engine.worker
            assert view.counters.took_over == PARTITIONS
            assert [e.nodes for e in _events(view, "took_over")] == [["gone"]]
            metrics.render([])

            def sample(name: str) -> float | None:
                return metrics.registry.get_sample_value(name)

            assert sample("fiefdom_cluster_takeovers_total") == PARTITIONS
            renewals = sample("fiefdom_cluster_lease_renewals_total")
            assert renewals is not None
            assert renewals >= 2
            for name in (
                "lease_failures",
                "partitions_lost",
                "partitions_expired",
                "handoffs",
                "fences",
            ):
                assert sample(f"fiefdom_cluster_{name}_total") == 0, name


def test_cluster_info_decodes_across_versions() -> None:
    """A ClusterInfo from a daemon that sends only the first four fields decodes with
    empty members and events; a full one decodes where a client knows only those
    four (unknown fields are skipped), in both encodings."""

    class OldClusterInfo(msgspec.Struct, kw_only=True):
        node: str
        partitions: int
        total: int
        nodes: int

    old = OldClusterInfo(node="n", partitions=256, total=256, nodes=1)
    new = ClusterInfo(
        node="n",
        partitions=128,
        total=256,
        nodes=2,
        min_epoch=1,
        max_epoch=2,
        members=[ClusterMember(node="n", partitions=128, min_epoch=1, max_epoch=2)],
        events=[ClusterEvent(at=1.5, kind="joined", nodes=["m"])],
    )
    for encoder, decode in (
        (msgspec.json.encode, msgspec.json.decode),
        (msgspec.msgpack.encode, msgspec.msgpack.decode),
    ):
        upgraded = decode(encoder(old), type=ClusterInfo)
        assert (upgraded.members, upgraded.events, upgraded.counters) == ([], [], None)
        assert decode(encoder(new), type=OldClusterInfo) == OldClusterInfo(
            node="n", partitions=128, total=256, nodes=2
        )
        assert decode(encoder(new), type=ClusterInfo) == new
