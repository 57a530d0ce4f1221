"""Membership and partition leases on PostgreSQL: each change one statement, timed
by the database's clock (``now()``), so nodes on several machines agree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._postgres import PostgresStore
from ._queries import Leases

if TYPE_CHECKING:
    from ._postgres_pool import Conn


class PostgresLeases(Leases):
    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store)
        self._pg = store

    async def heartbeat(self, node: str, address: str | None, lease: float) -> list[str]:
        async def run(conn: Conn) -> list[str]:
            await conn.execute(
                "INSERT INTO fiefdom_nodes (id, address) VALUES ($1, $2) "
                "ON CONFLICT (id) DO UPDATE SET address = $2, heartbeat_at = now()",
                node,
                address,
            )
            # Nodes silent for long are forgotten (their leases expired long ago).
            await conn.execute(
                "DELETE FROM fiefdom_nodes WHERE heartbeat_at < now() - make_interval(secs => $1)",
                10 * lease,
            )
            rows = await conn.fetch(
                "SELECT id FROM fiefdom_nodes "
                "WHERE heartbeat_at >= now() - make_interval(secs => $1) ORDER BY id",
                lease,
            )
            return [r[0] for r in rows]

        result: list[str] = await self._pg._run(run)
        return result

    async def hold(self, node: str, partitions: Sequence[int], lease: float) -> dict[int, int]:
        if not partitions:
            return {}
        # A renewal of a live lease waits for nobody: a fenced transaction holds its
        # partition's row FOR KEY SHARE, which a plain UPDATE does not conflict with.
        # A takeover locks the rows it takes FOR UPDATE, which does conflict: it
        # skips a partition whose fenced transaction is still open (the old owner's
        # write decides first) and takes it at a later round.
        rows = await self._pg._run(
            lambda conn: conn.fetch(
                "WITH taken AS (SELECT partition FROM fiefdom_partitions "
                "WHERE partition = ANY($2::smallint[]) "
                "AND NOT (owner IS NOT DISTINCT FROM $1 AND lease_expires_at >= now()) "
                "AND (owner IS NULL OR owner = $1 OR lease_expires_at < now()) "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE fiefdom_partitions SET "
                "epoch = CASE WHEN owner = $1 AND lease_expires_at >= now() THEN epoch "
                "ELSE epoch + 1 END, owner = $1, "
                "lease_expires_at = now() + make_interval(secs => $3) "
                "WHERE partition = ANY($2::smallint[]) "
                "AND ((owner = $1 AND lease_expires_at >= now()) "
                "OR partition IN (SELECT partition FROM taken)) "
                "RETURNING partition, epoch",
                node,
                sorted(partitions),
                lease,
            )
        )
        return {r[0]: r[1] for r in rows}

    async def release(self, node: str, partitions: Sequence[int]) -> None:
        if partitions:
            await self._pg._run(
                lambda conn: conn.execute(
                    "UPDATE fiefdom_partitions SET owner = NULL, lease_expires_at = NULL "
                    "WHERE owner = $1 AND partition = ANY($2::smallint[])",
                    node,
                    sorted(partitions),
                )
            )

    async def leave(self, node: str) -> None:
        async def run(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE fiefdom_partitions SET owner = NULL, lease_expires_at = NULL "
                    "WHERE owner = $1",
                    node,
                )
                await conn.execute("DELETE FROM fiefdom_nodes WHERE id = $1", node)

        await self._pg._run(run)

    async def owners(self) -> list[tuple[int, str | None, int, bool]]:
        rows = await self._pg._run(
            lambda conn: conn.fetch(
                "SELECT partition, owner, epoch, coalesce(lease_expires_at >= now(), false) "
                "FROM fiefdom_partitions ORDER BY partition"
            )
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def addresses(self) -> dict[str, str | None]:
        rows = await self._pg._run(lambda conn: conn.fetch("SELECT id, address FROM fiefdom_nodes"))
        return {r[0]: r[1] for r in rows}

    async def shared(self, name: str, proposed: str) -> str:
        value: str = await self._pg._run(
            lambda conn: conn.fetchval(
                "INSERT INTO fiefdom_cluster (name, value) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET value = fiefdom_cluster.value RETURNING value",
                name,
                proposed,
            )
        )
        return value
