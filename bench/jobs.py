"""Job engine throughput and pickup latency, on SQLite and PostgreSQL.

Per backend: enqueue N no-op jobs in batches, drain them with one engine (jobs/s
for both phases), then the pickup latency (enqueue of one job to its handler
starting, on an idle engine) as p50 and p99. The baseline, measured in the same
run: the bare driver inserting and updating the same number of rows in the same
batches (asyncpg; aiosqlite for SQLite). Prints one JSON object per figure.

    .venv/bin/python bench/jobs.py [--jobs 20000] [--backend sqlite|postgres|all]
        [--loop uvloop|asyncio] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Job, JobOptions, Store, open_store

ENQUEUE_BATCH = 1000
POSTGRES = os.environ.get("FIEFDOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class Noop(Job):
    options = JobOptions(kind="noop")
    n: int


def emit(loop: str, backend: str, figure: str, **values: Any) -> None:
    print(
        json.dumps({"bench": "jobs", "backend": backend, "figure": figure, "loop": loop, **values})
    )


async def drain(store: Store, n: int, concurrency: int, batch: int) -> float:
    done = asyncio.Event()
    count = 0

    async def noop(job: Noop, ctx: JobContext[Any]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    engine = JobEngine(
        store, queues={"default": concurrency}, batch_size=batch, retention=None, poll_interval=1.0
    )
    engine.register(Noop, noop)
    start = time.perf_counter()
    async with engine:
        await done.wait()
        # Done when every outcome is committed, not merely when the handlers ran.
        await engine.stop()
        elapsed = time.perf_counter() - start
    assert engine.statistics().outcomes.get("completed") == n
    return elapsed


async def pickup(store: Store, samples: int) -> list[float]:
    started: asyncio.Future[float] | None = None

    async def noop(job: Noop, ctx: JobContext[Any]) -> None:
        if started is not None and not started.done():
            started.set_result(time.perf_counter())

    engine = JobEngine(store, queues={"default": 10}, retention=None, poll_interval=1.0)
    engine.register(Noop, noop)
    latencies: list[float] = []
    async with engine:
        await asyncio.sleep(0.2)  # let the listener connect: the engine is idle from here
        for i in range(samples):
            started = asyncio.get_running_loop().create_future()
            t0 = time.perf_counter()
            await store.enqueue(Noop(n=i))
            latencies.append((await started) - t0)
            await asyncio.sleep(0.005)  # idle again before the next one
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def engine_figures(url: str, backend: str, loop: str, n: int, samples: int) -> None:
    store = open_store(url)
    await store.open(migrate=True)
    try:
        start = time.perf_counter()
        for i in range(0, n, ENQUEUE_BATCH):
            await store.enqueue_many([Noop(n=j) for j in range(i, min(n, i + ENQUEUE_BATCH))])
        enqueue = time.perf_counter() - start
        emit(loop, backend, "enqueue", jobs=n, batch=ENQUEUE_BATCH, jobs_per_s=round(n / enqueue))
        elapsed = await drain(store, n, concurrency=200, batch=100)
        emit(
            loop,
            backend,
            "drain",
            jobs=n,
            concurrency=200,
            claim_batch=100,
            jobs_per_s=round(n / elapsed),
        )
        latencies = await pickup(store, samples)
        emit(
            loop,
            backend,
            "pickup_latency",
            samples=samples,
            p50_ms=round(percentile(latencies, 50) * 1000, 3),
            p99_ms=round(percentile(latencies, 99) * 1000, 3),
        )
    finally:
        await store.close()


async def postgres_baseline(url: str, loop: str, n: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE bench_rows (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "state text NOT NULL, args jsonb NOT NULL)"
        )
        start = time.perf_counter()
        for i in range(0, n, ENQUEUE_BATCH):
            k = min(ENQUEUE_BATCH, n - i)
            await conn.execute(
                "INSERT INTO bench_rows (state, args) SELECT 'available', a::jsonb "
                "FROM unnest($1::text[]) AS a",
                [f'{{"n":{j}}}' for j in range(i, i + k)],
            )
        insert = time.perf_counter() - start
        emit(
            loop,
            "postgres",
            "baseline_asyncpg_insert",
            rows=n,
            batch=ENQUEUE_BATCH,
            rows_per_s=round(n / insert),
        )
        start = time.perf_counter()
        for i in range(1, n + 1, 100):
            await conn.execute(
                "UPDATE bench_rows SET state = 'completed' WHERE id = ANY($1::bigint[])",
                list(range(i, min(n + 1, i + 100))),
            )
        update = time.perf_counter() - start
        emit(
            loop,
            "postgres",
            "baseline_asyncpg_update",
            rows=n,
            batch=100,
            rows_per_s=round(n / update),
        )
        start = time.perf_counter()
        for _ in range(2000):
            await conn.execute("INSERT INTO bench_rows (state, args) VALUES ('x', '{}')")
        single = time.perf_counter() - start
        emit(
            loop,
            "postgres",
            "baseline_asyncpg_single_row_insert",
            rows=2000,
            rows_per_s=round(2000 / single),
        )
    finally:
        await conn.close()


async def sqlite_baseline(path: Path, loop: str, n: int) -> None:
    import aiosqlite

    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute(
            "CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, state TEXT NOT NULL, "
            "args TEXT NOT NULL)"
        )
        start = time.perf_counter()
        for i in range(0, n, ENQUEUE_BATCH):
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(
                "INSERT INTO bench_rows (state, args) VALUES ('available', ?)",
                [(f'{{"n":{j}}}',) for j in range(i, min(n, i + ENQUEUE_BATCH))],
            )
            await db.execute("COMMIT")
        insert = time.perf_counter() - start
        emit(
            loop,
            "sqlite",
            "baseline_aiosqlite_insert",
            rows=n,
            batch=ENQUEUE_BATCH,
            rows_per_s=round(n / insert),
        )
        start = time.perf_counter()
        for i in range(1, n + 1, 100):
            ids = list(range(i, min(n + 1, i + 100)))
            await db.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * len(ids))
            await db.execute(
                f"UPDATE bench_rows SET state = 'completed' WHERE id IN ({marks})", ids
            )
            await db.execute("COMMIT")
        update = time.perf_counter() - start
        emit(
            loop,
            "sqlite",
            "baseline_aiosqlite_update",
            rows=n,
            batch=100,
            rows_per_s=round(n / update),
        )


async def with_postgres_database(server: str, fn: Callable[[str], Awaitable[None]]) -> None:
    import asyncpg

    name = f"fiefdom_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        await fn(f"{server.rsplit('/', 1)[0]}/{name}")
    finally:
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def main(args: argparse.Namespace, loop: str) -> None:
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            await sqlite_baseline(Path(tmp) / "baseline.db", loop, args.jobs)
            await engine_figures(
                f"sqlite:///{tmp}/jobs.db", "sqlite", loop, args.jobs, args.samples
            )
    if args.backend in ("postgres", "all"):

        async def run(url: str) -> None:
            await postgres_baseline(url, loop, args.jobs)
            await engine_figures(url, "postgres", loop, args.jobs, args.samples)

        await with_postgres_database(args.postgres, run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--postgres", default=POSTGRES)
    arguments = parser.parse_args()
    # Log only warnings: the figures are the output.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    loop_name = arguments.loop
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            loop_name = "asyncio"
            print("uvloop is not installed; using asyncio", file=sys.stderr)
        else:
            uvloop.run(main(arguments, loop_name))
    if loop_name == "asyncio":
        asyncio.run(main(arguments, loop_name))
