"""Every vault listing and lookup reads through an index (DESIGN, Storage; GUARANTEES
000/2a-2d): PostgreSQL's executed plans of the vault's own statements, on tables of
20,000 resources, 40,000 versions and 20,000 blobs. (Stats count whole tables on
purpose and are not a listing.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fiefdom.storage import Store
from fiefdom.vault._sql import statements

pytestmark = pytest.mark.dialect("postgres")

ROWS = 20_000
FILL = f"""
INSERT INTO fiefdom_blobs (location, sha256, size, refs, created_at, marked_at)
SELECT 'main', encode(sha256(('b' || i)::bytea), 'hex'), i, CASE WHEN i % 100 = 0 THEN 0 ELSE 2 END,
    now(), CASE WHEN i % 100 = 0 THEN now() - interval '2 hours' END
FROM generate_series(1, {ROWS}) AS i;
INSERT INTO fiefdom_resources (name, last_version, created_at, updated_at, deleted_at)
SELECT 'res-' || lpad(i::text, 6, '0'), 2, now(), now(), CASE WHEN i % 50 = 0 THEN now() END
FROM generate_series(1, {ROWS}) AS i;
INSERT INTO fiefdom_versions (resource, number, blob, size, created_at)
SELECT r, n, 1 + (r * 2 + n) % {ROWS}, 10, now()
FROM generate_series(1, {ROWS}) AS r, generate_series(1, 2) AS n;
ANALYZE fiefdom_blobs; ANALYZE fiefdom_resources; ANALYZE fiefdom_versions;
"""
VAULT_TABLES = {"fiefdom_resources", "fiefdom_versions", "fiefdom_blobs"}
SQL = statements("postgres")
HASH = "0" * 64
# Each listing or lookup with arguments that select a small part of the tables.
CHECKED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "resources (first page)": (SQL.resources, ("", 101)),
    "resources (a later page)": (SQL.resources, ("res-010000", 101)),
    "latest version": (SQL.latest, ("res-000123",)),
    "one version": (SQL.version, ("res-000123", 2)),
    "versions": (SQL.versions, ("res-000123",)),
    "resource id": (SQL.resource_id, ("res-000123",)),
    "lock resource": (SQL.lock_resource, ("res-000123",)),
    "lock blob": (SQL.lock_blob, (77,)),
    "versions of a blob": (SQL.blob_versions, (77,)),
    "due sweeps": (SQL.due_sweeps, (time.time() - 3600, 1000, ["main"])),
    "blob page": (SQL.blob_page, (ROWS // 2, 500)),
    "known blobs": (SQL.known_blobs, ("main", [HASH, "1" * 64])),
}


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


class _Rollback(Exception):
    pass


async def explain(store: Store, sql: str, args: tuple[Any, ...]) -> dict[str, Any]:
    plan: dict[str, Any] = {}
    try:
        async with store.transaction() as tx:
            rows = await tx.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            plan = json.loads(rows[0][0])[0]["Plan"]
            raise _Rollback
    except _Rollback:
        pass
    return plan


async def test_every_vault_listing_and_lookup_reads_through_an_index(store: Store) -> None:
    """No statement of the list above scans a vault table sequentially, and each reads a
    bounded slice of the rows (at most a few pages' worth)."""
    async with store.transaction() as tx:
        await tx.execute(FILL)
    # The check can fail: an unindexed filter is seen as a sequential scan.
    control = await explain(store, "SELECT count(*) FROM fiefdom_versions WHERE size = $1", (10,))
    assert any(n["Node Type"] == "Seq Scan" for n in nodes(control))
    problems: list[str] = []
    for name, (sql, args) in CHECKED.items():
        plan = await explain(store, sql, args)
        for node in nodes(plan):
            if node.get("Relation Name") not in VAULT_TABLES:
                continue
            if node["Node Type"] == "Seq Scan":
                problems.append(f"{name}: sequential scan of {node['Relation Name']}")
            read = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) + node.get(
                "Rows Removed by Filter", 0
            )
            if read > 2000:
                problems.append(f"{name}: read {read} rows of {node['Relation Name']}")
    assert problems == []
