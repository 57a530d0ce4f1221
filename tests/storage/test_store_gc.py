"""An open store raises the garbage collector's youngest threshold as a running actor
system does (``fiefdom._gc``): raised while it is open, put back when it closes (also
when its opening fails after it connected), held while a system still runs, left
alone when opted out; and the raise is what makes a large batch enqueue run fewer
collections."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from enqueue_jobs import Plain

import fiefdom
from fiefdom._errors import SchemaMismatch
from fiefdom._gc import THRESHOLD
from fiefdom.storage import open_store

DEFAULT = (700, 10, 10)


pytestmark = pytest.mark.usefixtures("interpreter_gc_thresholds")


async def test_raised_while_open_and_put_back(store_url: str) -> None:
    store = open_store(store_url)
    assert gc.get_threshold() == DEFAULT  # not before it opens
    await store.open(migrate=True)
    try:
        assert gc.get_threshold() == (THRESHOLD, 10, 10)
    finally:
        await store.close()
    assert gc.get_threshold() == DEFAULT


async def test_opted_out_by_argument_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url, tune_gc=False)
    await store.open(migrate=True)
    assert gc.get_threshold() == DEFAULT
    await store.close()
    monkeypatch.setenv("FIEFDOM_GC", "default")
    async with open_store(url):
        assert gc.get_threshold() == DEFAULT
    monkeypatch.setenv("FIEFDOM_GC", "2500")
    async with open_store(url):
        assert gc.get_threshold() == (2500, 10, 10)
    assert gc.get_threshold() == DEFAULT


async def test_put_back_when_opening_fails_after_connecting(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaMismatch, match="migrate"):
        await store.open()  # connects, then finds no schema and closes
    assert gc.get_threshold() == DEFAULT


async def test_held_while_a_system_still_runs(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    await store.open(migrate=True)
    system = fiefdom.ActorSystem(name="beside")
    await system.start()
    await store.close()
    assert gc.get_threshold()[0] == THRESHOLD  # the system still runs
    await system.stop()
    assert gc.get_threshold() == DEFAULT


async def test_a_batch_enqueue_runs_fewer_young_collections(store_url: str) -> None:
    """What the raise is for: counted, not timed (the counts depend on allocations
    alone). A store that did not raise the threshold would fail this test."""
    counts: dict[bool, int] = {}
    for tuned in (False, True):
        young = 0

        def count(phase: str, info: dict[str, int]) -> None:
            nonlocal young
            if phase == "start" and info["generation"] == 0:
                young += 1

        store = open_store(store_url, tune_gc=tuned)
        await store.open(migrate=True)
        batch = [Plain(n=n) for n in range(20_000)]
        gc.callbacks.append(count)
        try:
            await store.enqueue_many(batch)
        finally:
            gc.callbacks.remove(count)
            await store.close()
        counts[tuned] = young
    assert counts[False] >= 20, counts  # the interpreter's threshold: many
    assert counts[True] * 5 <= counts[False], counts
