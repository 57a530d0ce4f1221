"""The PostgreSQL pool of a real daemon: its bounds and statement timeout come from
``[store]``, and ``/metrics`` exposes connections in use, waiters and acquire time."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, write_config
from prometheus_client.parser import text_string_to_metric_families

from fiefdom.storage._postgres import PostgresStore

pytestmark = pytest.mark.dialect("postgres")


async def test_pool_settings_reach_the_connections(store_url: str) -> None:
    """pool_min_size connections open at once, and each carries the statement timeout."""
    store = PostgresStore(store_url, pool_size=4, pool_min_size=2, statement_timeout=1.5)
    await store.open(migrate=True)
    try:
        async with store.transaction() as tx:
            rows = await tx.fetch("SHOW statement_timeout")
        assert rows == [("1500ms",)]
        stats = store.pool_statistics()
        assert stats.max_size == 4
        assert stats.size >= 2
        assert stats.waiting == 0
        assert stats.acquires >= 1
        assert stats.acquire_times.buckets[-1] <= stats.acquires
    finally:
        await store.close()


def test_metrics_expose_the_pool(store_url: str, tmp_path: Path) -> None:
    """A daemon on PostgreSQL exposes its pool on /metrics: connections by state, the
    configured maximum, waiters, and the acquire-time histogram."""
    extra = f'[store]\nurl = "{store_url}"\npool_max_size = 7\nstatement_timeout = 60.0\n'
    with DaemonProcess(write_config(tmp_path, extra=extra)) as daemon:
        status, body = daemon.http("/metrics")
        assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    connections = {
        s.labels["state"]: s.value for s in families["fiefdom_store_pool_connections"].samples
    }
    assert set(connections) == {"in_use", "idle"}
    assert connections["in_use"] >= 0
    assert connections["idle"] >= 0
    assert families["fiefdom_store_pool_max"].samples[0].value == 7
    assert families["fiefdom_store_pool_waiting"].samples[0].value >= 0
    acquire = families["fiefdom_store_pool_acquire_seconds"]
    count = next(s for s in acquire.samples if s.name.endswith("_count")).value
    assert count >= 1
