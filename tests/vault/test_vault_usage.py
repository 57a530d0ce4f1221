"""What a storage location's blobs take is kept by the database as blob rows come and
go (migration 0010), so a quota check reads one row instead of summing every blob of
its location. For any sequence of uploads (new and repeated bytes, two locations),
deletes, sweeps and fsck repairs, on both dialects, the kept figures equal the sum
over the blob rows; and the quota is enforced from them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vault_helpers import chunks

from fiefdom.storage import Store, open_store
from fiefdom.vault import Location, NotFound, QuotaExceeded, Vault

NAMES = ("a", "b", "c")
CONTENTS = (b"", b"one", b"two bytes and more", b"x" * 5000)

Operation = tuple[object, ...]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(NAMES),
            st.integers(0, len(CONTENTS) - 1),
            st.sampled_from(("main", "cold")),
        ),
        st.tuples(st.just("delete"), st.sampled_from(NAMES)),
        st.tuples(st.just("sweep")),
        st.tuples(st.just("lose_file")),
        st.tuples(st.just("fsck")),
    ),
    max_size=25,
)


async def kept_and_counted(store: Store) -> tuple[dict[str, tuple[int, int]], ...]:
    """(kept figures, figures counted from the blob rows), per location."""
    async with store.read() as tx:
        kept = await tx.fetch("SELECT location, blobs, bytes FROM fiefdom_vault_usage")
        counted = await tx.fetch(
            "SELECT location, count(*), coalesce(sum(size), 0) FROM fiefdom_blobs GROUP BY location"
        )
    as_dict = {str(r[0]): (int(r[1]), int(r[2])) for r in kept if int(r[1]) or int(r[2])}
    return as_dict, {str(r[0]): (int(r[1]), int(r[2])) for r in counted}


async def fresh(store_url: str) -> Store:
    store = open_store(store_url)
    await store.open(migrate=True)
    async with store.transaction() as tx:
        for table in ("fiefdom_versions", "fiefdom_blobs", "fiefdom_resources"):
            await tx.execute(f"DELETE FROM {table}")
        await tx.execute("DELETE FROM fiefdom_vault_locations")
        await tx.execute("DELETE FROM fiefdom_jobs")
    return store


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_kept_usage_equals_the_blob_rows_after_any_sequence(
    store_url: str, tmp_path_factory: pytest.TempPathFactory, ops: list[Operation]
) -> None:
    """After every step of any sequence of puts, deletes, sweeps, lost files and fsck
    repairs, each location's kept (blobs, bytes) equal those counted from its rows."""
    root = tmp_path_factory.mktemp("usage")

    async def check() -> None:
        store = await fresh(store_url)
        main = Location("main", root / "main")
        cold = Location("cold", root / "cold")
        vault = Vault(store, [main, cold], grace=0.0)
        try:
            for op in ops:
                if op[0] == "put":
                    _, name, content, where = op
                    await vault.put(str(name), chunks(CONTENTS[int(content)]), location=where)
                elif op[0] == "delete":
                    with contextlib.suppress(NotFound):
                        await vault.delete(str(op[1]))
                elif op[0] == "sweep":
                    await vault.sweep_due()
                elif op[0] == "lose_file":
                    files = sorted(p for p in main.blobs.rglob("*") if p.is_file())
                    if files:
                        files[0].unlink()
                else:
                    await vault.fsck(repair=True)
                kept, counted = await kept_and_counted(store)
                assert kept == counted, f"after {op}"
            kept, counted = await kept_and_counted(store)
            assert kept == counted
            stats = await vault.stats()
            assert (stats.blobs, stats.bytes) == (
                sum(b for b, _ in counted.values()),
                sum(n for _, n in counted.values()),
            )
        finally:
            await store.close()

    asyncio.run(check())


async def test_a_quota_is_enforced_from_the_kept_usage(store: Store, tmp_path: Path) -> None:
    """The quota counts the bytes the kept figures say: a blob that fits is stored, one
    that would pass the quota is refused naming the bytes used, the same bytes again
    cost nothing, and once a sweep frees room a new blob fits again."""
    location = Location("capped", tmp_path / "capped", quota=10)
    vault = Vault(store, location, grace=0.0)
    await vault.put("first", chunks(b"12345678"))
    with pytest.raises(QuotaExceeded) as info:
        await vault.put("second", chunks(b"abc"))
    assert (info.value.used, info.value.size) == (8, 3)
    await vault.put("again", chunks(b"12345678"))  # a blob already there
    await vault.delete("first")
    await vault.delete("again")
    assert await vault.sweep_due() == 1
    await vault.put("second", chunks(b"abc"))
    kept, counted = await kept_and_counted(store)
    assert kept == counted == {"capped": (1, 3)}
