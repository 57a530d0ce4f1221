"""Membership and partition leases on SQLite: each change in one ``BEGIN IMMEDIATE``
transaction on the store's engine connection (processes on one host)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from ._queries import Leases
from ._sqlite import SQLiteStore


class SQLiteLeases(Leases):
    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store)
        self._sqlite = store

    async def heartbeat(self, node: str, address: str | None, lease: float) -> list[str]:
        async with self._sqlite._tx() as tx:
            now = time.time()
            await tx.raw(
                "INSERT INTO fiefdom_nodes (id, address, started_at, heartbeat_at) "
                "VALUES (?1, ?2, ?3, ?3) ON CONFLICT (id) DO UPDATE SET "
                "address = ?2, heartbeat_at = ?3",
                (node, address, now),
            )
            # Nodes silent for long are forgotten (their leases expired long ago).
            await tx.raw("DELETE FROM fiefdom_nodes WHERE heartbeat_at < ?", (now - 10 * lease,))
            rows = await tx.raw(
                "SELECT id FROM fiefdom_nodes WHERE heartbeat_at >= ? ORDER BY id", (now - lease,)
            )
        return [r[0] for r in rows]

    async def hold(self, node: str, partitions: Sequence[int], lease: float) -> dict[int, int]:
        if not partitions:
            return {}
        wanted = msgspec.json.encode(sorted(partitions)).decode()
        async with self._sqlite._tx() as tx:
            now = time.time()
            rows = await tx.raw(
                "UPDATE fiefdom_partitions SET "
                "epoch = CASE WHEN owner IS ?1 AND lease_expires_at >= ?2 THEN epoch "
                "ELSE epoch + 1 END, owner = ?1, lease_expires_at = ?3 "
                "WHERE partition IN (SELECT value FROM json_each(?4)) "
                "AND (owner IS NULL OR owner = ?1 OR lease_expires_at < ?2) "
                "RETURNING partition, epoch",
                (node, now, now + lease, wanted),
            )
        return {r[0]: r[1] for r in rows}

    async def release(self, node: str, partitions: Sequence[int]) -> None:
        if not partitions:
            return
        released = msgspec.json.encode(sorted(partitions)).decode()
        async with self._sqlite._tx() as tx:
            await tx.raw(
                "UPDATE fiefdom_partitions SET owner = NULL, lease_expires_at = NULL "
                "WHERE owner = ? AND partition IN (SELECT value FROM json_each(?))",
                (node, released),
            )

    async def leave(self, node: str) -> None:
        async with self._sqlite._tx() as tx:
            await tx.raw(
                "UPDATE fiefdom_partitions SET owner = NULL, lease_expires_at = NULL "
                "WHERE owner = ?",
                (node,),
            )
            await tx.raw("DELETE FROM fiefdom_nodes WHERE id = ?", (node,))

    async def owners(self) -> list[tuple[int, str | None, int, bool]]:
        async with self._sqlite._read() as tx:
            now = time.time()
            rows = await tx.raw(
                "SELECT partition, owner, epoch, coalesce(lease_expires_at >= ?, 0) "
                "FROM fiefdom_partitions ORDER BY partition",
                (now,),
            )
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]

    async def addresses(self) -> dict[str, str | None]:
        async with self._sqlite._read() as tx:
            rows = await tx.raw("SELECT id, address FROM fiefdom_nodes")
        return {r[0]: r[1] for r in rows}

    async def shared(self, name: str, proposed: str) -> str:
        async with self._sqlite._tx() as tx:
            rows = await tx.raw(
                "INSERT INTO fiefdom_cluster (name, value) VALUES (?1, ?2) "
                "ON CONFLICT (name) DO UPDATE SET value = value RETURNING value",
                (name, proposed),
            )
        value: str = rows[0][0]
        return value
