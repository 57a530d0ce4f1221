"""Disconnect storms against a real daemon, on both dialects: hundreds of websocket
clients send ``status``, ``jobs.list``, ``jobs.get`` and ``jobs.enqueue`` and vanish
mid-request (a FIN or a RST, after whole frames or in the middle of one, before or
after a first reply). Afterwards every connection is released, ``/readyz`` answers 200,
the store takes an enqueue, a claim and a finish from another process, and a job
enqueued over the wire completes (GUARANTEES 001/9 found by attack)."""

from __future__ import annotations

import collections
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from chaos_helpers import (
    HANG_GUARD,
    RawWebSocket,
    control,
    daemon_config,
    http_get,
    logged_errors,
    wait_until,
)
from daemon_harness import DaemonProcess
from raw_websocket import ws_frame as encode_frame

from fiefdom.storage import Job, JobOptions, JobState, Lease, engine_queries, open_store

CLIENTS = 600
AT_ONCE = 100
CUTS = ("after_sending", "mid_frame", "after_a_reply", "at_a_random_instant")


class Probe(Job):
    """A job on a queue the daemon does not serve: this test claims it itself."""

    options = JobOptions(kind="chaos.probe", queue="chaos-probe")
    n: int


@pytest.fixture
def daemon(store_url: str, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app on the test's store."""
    proc = DaemonProcess(daemon_config(tmp_path / "daemon", store_url))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def storm_frame(rng: random.Random, n: int) -> dict[str, object]:
    match rng.randrange(4):
        case 0:
            return {"type": "status", "id": n}
        case 1:
            return {"type": "jobs.list", "id": n, "limit": rng.choice([1, 100, 10_000])}
        case 2:
            return {"type": "jobs.get", "id": n, "job_id": rng.randint(1, 500)}
        case _:
            return {"type": "jobs.enqueue", "id": n, "kind": "nap", "args": {"seconds": 0.0}}


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_disconnect_storm_leaves_the_daemon_and_its_store_usable(
    daemon: DaemonProcess, store_url: str, backend: str, figures: Any, seed: int
) -> None:
    """600 clients vanish mid-request: the daemon and its store stay fully usable (001/9)."""
    rng = random.Random(seed)
    cuts: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    sent = 0
    limiter = anyio.Semaphore(AT_ONCE)

    async def client(i: int) -> None:
        nonlocal sent
        crng = random.Random(rng.getrandbits(64))
        async with limiter:
            try:
                ws = await RawWebSocket.connect(daemon.url, daemon.token)
            except (ConnectionError, OSError) as exc:
                refused[type(exc).__name__] += 1
                return
            cut = crng.choice(CUTS)
            cuts[cut] += 1
            try:
                for k in range(crng.randint(1, 16)):
                    ws.send(storm_frame(crng, k))
                    sent += 1
                if cut == "mid_frame":
                    data = encode_frame(json.dumps(storm_frame(crng, 99)).encode())
                    ws.send_bytes(data[: crng.randrange(1, len(data))])
                await ws.writer.drain()
                if cut == "after_a_reply":
                    with anyio.fail_after(HANG_GUARD):
                        await ws.read_frame()
                elif cut == "at_a_random_instant":
                    await anyio.sleep(crng.uniform(0.0, 0.05))
            except (ConnectionError, OSError) as exc:
                refused[f"during: {type(exc).__name__}"] += 1
            finally:
                ws.vanish(reset=crng.random() < 0.5)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(CLIENTS):
            tg.start_soon(client, i)
    storm_s = time.monotonic() - started

    async with control(daemon.url, daemon.token) as ctl:

        async def only_this_connection() -> bool:
            reply = await ctl.request("status")
            assert reply["type"] == "status.reply", reply
            return bool(reply["connections"] == 1)

        released_s = await wait_until(
            only_this_connection, what="the daemon to release the storm's connections"
        )
        ready = await http_get(daemon.url + "/readyz", daemon.token)
        assert ready[0] == 200, ready

        # The store, from another process: an enqueue, a claim and a finish.
        async with open_store(store_url) as store:
            enqueued = await store.enqueue(Probe(n=1))
            queries = engine_queries(store)
            claimed = await queries.claim("chaos-probe", 10, worker="chaos", lease=30)
            assert [c.id for c in claimed] == [enqueued.id]
            await queries.complete(Lease(claimed[0].id, claimed[0].lease_token))
            probe = await store.get_job(claimed[0].id)
            assert probe is not None
            assert probe.state is JobState.COMPLETED

        # And the daemon's own engine still claims and finishes.
        after = time.monotonic()
        reply = await ctl.request("jobs.enqueue", kind="nap", args={"seconds": 0.0})
        assert reply["type"] == "enqueue.reply", reply
        job_id = reply["enqueued"]["id"]

        async def completed() -> bool:
            got = await ctl.request("jobs.get", job_id=job_id)
            return bool(got["job"]["state"] == "completed")

        await wait_until(completed, what="the job enqueued after the storm to complete")
        job_after_s = time.monotonic() - after

        async def storm_jobs_done() -> bool:
            got = await ctl.request("queues.list")
            counts = {q["name"]: q["counts"] for q in got["queues"]}
            waiting = {s: n for s, n in counts.get("default", {}).items() if s != "completed"}
            return not waiting

        await wait_until(storm_jobs_done, what="every job the storm enqueued to complete")
        listed = await ctl.request("queues.list")
        storm_jobs = {q["name"]: q["counts"] for q in listed["queues"]}["default"]["completed"] - 1

    errors = logged_errors(daemon)
    figures(
        dialect=backend,
        seed=seed,
        clients=CLIENTS,
        at_once=AT_ONCE,
        frames_sent=sent,
        cuts=dict(cuts),
        refused=dict(refused),
        storm_s=round(storm_s, 2),
        connections_released_s=round(released_s, 3),
        storm_jobs_committed=storm_jobs,
        job_after_storm_completed_s=round(job_after_s, 3),
        daemon_errors_logged=len(errors),
    )
    assert not errors, "\n".join(errors[:20])
