"""Fencing across real processes (DESIGN rules 2 and 9, "Cluster"): an owner paused
past its lease (SIGSTOP) finds, once resumed, that the write it makes under its old
epoch is refused (StaleOwner) and commits nothing, while the node that took its key
over writes under the new epoch; and an owner cut off from its database cancels its
key's handler before its lease can expire, so that the node taking the key over after
it never overlaps it.

The nodes are ``fenced_node.py`` processes; each test prints its figures as one
``CLUSTER {json}`` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from cluster_helpers import (
    Node,
    Report,
    check_alive,
    kill_node,
    now_ns,
    reap,
    stop_node,
    wait_until,
)
from fenced_node import FencedWrite, LongRun

import fiefdom
from fiefdom import JobState
from fiefdom.storage import leases, partition_of

# The chaos suite's private PostgreSQL server (initdb and pg_ctl, run as the postgres
# user when the tests run as root, on a free port, in a folder of its own); its module
# uses the daemon tests' harness.
_TESTS = Path(__file__).resolve().parent.parent
sys.path.append(str(_TESTS / "chaos"))
sys.path.append(str(_TESTS / "daemon"))

from chaos_helpers import PrivatePostgres, running_private_postgres  # noqa: E402

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
WORKER = HERE / "fenced_node.py"
KEY = "doc-1"
SECOND_NS = 1_000_000_000


# -- node processes ---------------------------------------------------------------------


async def start_worker(
    index: int, name: str, url: str, folder: Path, *, lease: float, log_renewals: bool = False
) -> Node:
    """Start ``fenced_node.py`` as node ``name`` (not waiting for it to serve)."""
    log = folder / f"{name}.log"
    output = folder / f"{name}.out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    command = [sys.executable, str(WORKER), url, str(folder), name, "--lease", str(lease)]
    if log_renewals:
        command.append("--log-renewals")
    with output.open("wb") as out:
        process = await anyio.open_process(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return Node(index, process, log, output)


async def serving(node: Node) -> str:
    """Wait until ``node`` serves; its cluster node's id."""

    def ready() -> bool:
        check_alive([node])
        return node.ready()

    await wait_until(ready, what=f"node {node.log.stem} to serve")
    return node.log.with_name(node.log.name + ".ready").read_text()


def events(node: Node, what: str | None = None) -> list[dict[str, Any]]:
    """The node's log lines (whole ones only: it may be writing), or those of one event."""
    if not node.log.exists():
        return []
    lines = node.log.read_text().splitlines(keepends=True)
    found = [json.loads(line) for line in lines if line.endswith("\n")]
    return [e for e in found if what is None or e["event"] == what]


def logged(node: Node, what: str) -> Callable[[], bool]:
    """A condition: the node logged ``what`` (failing at once if it exited)."""

    def condition() -> bool:
        check_alive([node])
        return bool(events(node, what))

    return condition


def stopped(node: Node) -> bool:
    """Whether the process is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{node.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


async def pause_outside_a_write(node: Node, holds_a_lock: Callable[[], Awaitable[bool]]) -> int:
    """SIGSTOP ``node`` at an instant it holds no database lock, and return how many
    pauses that took. A process paused inside one of its write transactions stalls every
    writer of the database (on SQLite, any other node's lease round), which is not the
    case under test: such a pause is undone and tried again."""
    for tries in range(1, 101):
        node.process.send_signal(signal.SIGSTOP)
        await wait_until(lambda: stopped(node), what="the paused node to stop")
        if not await holds_a_lock():
            return tries
        node.process.send_signal(signal.SIGCONT)
        await wait_until(lambda: not stopped(node), what="the node to resume")

        async def lock_free() -> bool:
            return not await holds_a_lock()

        await wait_until(lock_free, what="the node to end its write transaction")
    pytest.fail("the node held a database lock at each of 100 pauses")


def lock_probe(store: fiefdom.Store, store_url: str) -> Callable[[], Awaitable[bool]]:
    """Whether another process holds a lock of the test's database now: on SQLite its
    write lock, on PostgreSQL a row, table, transaction or advisory lock."""
    if store.backend == "sqlite":
        path = store_url.removeprefix("sqlite:///")

        async def sqlite_locked() -> bool:
            with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as db:
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        return True
                    raise
                db.execute("ROLLBACK")
            return False

        return sqlite_locked

    async def postgres_locked() -> bool:
        async with store.transaction() as tx:
            held = await tx.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE a.datname = current_database() AND l.pid <> pg_backend_pid() "
                "AND l.granted AND l.locktype IN ('relation', 'tuple', 'transactionid', "
                "'advisory')"
            )
        return bool(held)

    return postgres_locked


async def owners(store: fiefdom.Store) -> dict[int, tuple[str | None, int, bool]]:
    """Each partition's (owner, epoch, live), from ``fiefdom_partitions``."""
    return {p: (owner, epoch, live) for p, owner, epoch, live in await leases(store).owners()}


# -- a paused owner ---------------------------------------------------------------------------


async def test_a_paused_owner_s_fenced_write_is_refused_after_a_takeover(
    store: fiefdom.Store, store_url: str, tmp_path: Path, figures: Report
) -> None:
    """A paused owner's fenced write after a takeover raises StaleOwner; the new owner's commits."""
    lease = 2.0
    partition = partition_of(KEY)
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE fenced_writes (key text, node text, epoch bigint)")
    nodes: list[Node] = []
    try:
        a = await start_worker(0, "a", store_url, tmp_path, lease=lease)
        nodes.append(a)
        a_id = await serving(a)

        async def a_holds_everything() -> bool:
            found = await owners(store)
            return all(owner == a_id and live for owner, _, live in found.values())

        await wait_until(a_holds_everything, what="node a, alone, to hold every partition")
        job = await store.enqueue(FencedWrite(key=KEY))
        assert job.id is not None
        await wait_until(logged(a, "waiting"), what="a's handler inside its transaction")
        (a_waiting,) = events(a, "waiting")
        a_epoch = a_waiting["epoch"]
        assert (await owners(store))[partition][:2] == (a_id, a_epoch)

        pauses = await pause_outside_a_write(a, lock_probe(store, store_url))
        b = await start_worker(1, "b", store_url, tmp_path, lease=lease)
        nodes.append(b)
        b_id = await serving(b)

        async def b_took_everything_over() -> bool:
            check_alive(nodes)
            found = await owners(store)
            return all(owner == b_id and live for owner, _, live in found.values())

        await wait_until(b_took_everything_over, what="b to take a's partitions over")
        b_epoch = (await owners(store))[partition][1]
        assert b_epoch > a_epoch, "a change of owner moves the epoch on"
        # The job's lease lapsed with a's pause: b rescues it and runs it (its attempt).
        await wait_until(logged(b, "waiting"), what="b's run of the job")
        (b_waiting,) = events(b, "waiting")
        assert (b_waiting["job"], b_waiting["epoch"]) == (job.id, b_epoch)

        (tmp_path / "release").touch()
        a.process.send_signal(signal.SIGCONT)
        await wait_until(logged(a, "refused"), what="a's write to be answered")
        await wait_until(logged(b, "wrote"), what="b's write to commit")

        async def completed() -> bool:
            info = await store.get_job(job.id)
            return info is not None and info.state is JobState.COMPLETED

        await wait_until(completed, what="the job to complete")
        for node in nodes:
            await stop_node(node)
    finally:
        await reap(nodes)
    assert [node.process.returncode for node in nodes] == [0, 0]

    (refused,) = events(a, "refused")
    assert refused["error"] == "StaleOwner", refused
    assert (refused["fenced_epoch"], refused["current_epoch"]) == (a_epoch, b_epoch)
    (wrote,) = events(b, "wrote")
    assert wrote["attempt"] == b_waiting["attempt"] == 2
    async with store.transaction() as tx:
        rows = await tx.fetch("SELECT key, node, epoch FROM fenced_writes ORDER BY epoch")
    stale = [row for row in rows if row[1] == a_id]
    info = await store.get_job(job.id)
    assert info is not None
    figures(
        a_epoch=a_epoch,
        b_epoch=b_epoch,
        stale_writes_accepted=len(stale),
        a_refused_with=refused["error"],
        b_attempt=wrote["attempt"],
        # Whether a's node had also cancelled the handler by the time its shielded
        # write was answered (a race the shield takes out of the test).
        a_handler_cancelled_by_its_node=bool(events(a, "cancelled")),
        pauses_to_stop_a_outside_a_write=pauses,
    )
    assert stale == [], f"a write under a stale epoch committed: {stale}"
    assert rows == [(KEY, b_id, b_epoch)]
    assert (info.state, info.attempt) == (JobState.COMPLETED, 2)


# -- an owner cut off from its database -------------------------------------------------------


private_postgres = pytest.fixture(running_private_postgres, name="private_postgres")


@contextlib.asynccontextmanager
async def cut_off(url: str, role: str) -> AsyncIterator[None]:
    """Cut every process connecting as ``role`` off the database at ``url`` (reached as
    its superuser) while the block runs: the role may no longer log in, and its sessions
    are terminated over and over (one that was logging in as the role changed is caught
    on the next pass). The block starts once none is left."""
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"ALTER ROLE {role} NOLOGIN")
        terminate = (
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1"
        )

        async def none_left() -> bool:
            await admin.fetch(terminate, role)
            count = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role
            )
            return bool(count == 0)

        await wait_until(none_left, what=f"the sessions of {role} to be gone")
        async with anyio.create_task_group() as group:

            async def keep_terminating() -> None:
                while True:
                    await admin.fetch(terminate, role)
                    await anyio.sleep(0.01)

            group.start_soon(keep_terminating)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
    finally:
        await admin.close()


async def test_an_owner_cut_off_from_its_database_cancels_its_handler_before_its_lease_expires(
    private_postgres: PrivatePostgres, tmp_path: Path, figures: Report
) -> None:
    """An owner cut off from its database cancels its handler before its lease ends; b runs it."""
    lease = 3.0
    server = private_postgres
    partition = partition_of(KEY)
    base = f"127.0.0.1:{server.port}/postgres"
    admin = await asyncpg.connect(server.url)
    store = fiefdom.open_store(server.url)
    nodes: list[Node] = []
    try:
        await store.open(migrate=True)
        # One role per node: cutting a's role off leaves the database to everyone else.
        for role in ("node_a", "node_b"):
            await admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        a = await start_worker(
            0, "a", f"postgresql://node_a@{base}", tmp_path, lease=lease, log_renewals=True
        )
        nodes.append(a)
        a_id = await serving(a)
        job = await store.enqueue(LongRun(key=KEY))
        assert job.id is not None
        await wait_until(logged(a, "start"), what="a's handler to start")
        (a_start,) = events(a, "start")

        def renewed_since_the_start() -> bool:
            check_alive([a])
            return any(e["mono_ns"] > a_start["mono_ns"] for e in events(a, "renewed"))

        # Cut mid-lease: a has renewed its leases while its handler runs.
        await wait_until(renewed_since_the_start, what="a to renew its leases")
        cut_ns = now_ns()
        async with cut_off(server.url, "node_a"):
            # What the database holds for a now that it can renew nothing: when its
            # leases expire (the database's clock, the machine's realtime clock).
            a_expiry_real = await admin.fetchval(
                "SELECT extract(epoch FROM min(lease_expires_at))::float8 "
                "FROM fiefdom_partitions WHERE owner = $1",
                a_id,
            )
            b = await start_worker(1, "b", f"postgresql://node_b@{base}", tmp_path, lease=lease)
            nodes.append(b)
            await serving(b)
            await wait_until(logged(a, "cancelled"), what="a to cancel its handler")
            await wait_until(logged(b, "start"), what="b to run the job")
            (tmp_path / "release").touch()
            await wait_until(logged(b, "end"), what="b's handler to return")

            async def completed() -> bool:
                info = await store.get_job(job.id)
                return info is not None and info.state is JobState.COMPLETED

            await wait_until(completed, what="the job to complete")
        # a is left cut off: nothing of it is under test any more.
        await kill_node(a)
        await stop_node(b)
    finally:
        await reap(nodes)
        await store.close()
        await admin.close()
    assert b.process.returncode == 0

    (a_cancelled,) = events(a, "cancelled")
    assert not events(a, "end"), "a's handler ran to its end: it was never cancelled"
    renewals = [e["mono_ns"] for e in events(a, "renewed") if e["mono_ns"] < a_cancelled["mono_ns"]]
    assert renewals, "a logged no successful lease round"
    # The leases a took in its last successful round last at least `lease` from its start.
    expiry_ns = max(renewals) + int(lease * SECOND_NS)
    (b_start,) = events(b, "start")
    figures(
        cut="ALTER ROLE NOLOGIN + pg_terminate_backend of its sessions in a loop",
        lease_s=lease,
        a_epoch=a_start["epoch"],
        b_epoch=b_start["epoch"],
        cut_to_cancel_s=(a_cancelled["mono_ns"] - cut_ns) / SECOND_NS,
        cancel_before_lease_end_s=(expiry_ns - a_cancelled["mono_ns"]) / SECOND_NS,
        cancel_before_database_expiry_s=a_expiry_real - a_cancelled["real_ns"] / SECOND_NS,
        b_start_after_a_cancel_s=(b_start["mono_ns"] - a_cancelled["mono_ns"]) / SECOND_NS,
        b_attempt=b_start["attempt"],
        # Whether a's own log says its node stopped the work of its partitions.
        a_node_fenced_itself="cannot renew partition leases" in a.output.read_text(),
    )
    # The order of events on the machine's monotonic clock: a ran, the cut came, a
    # cancelled its handler before the lease it last renewed could expire, and only
    # then did b start the key's next run, under a newer epoch.
    assert a_start["mono_ns"] < cut_ns < a_cancelled["mono_ns"] < expiry_ns
    assert a_cancelled["mono_ns"] < b_start["mono_ns"]
    # And by the database's own clock: before a's leases expired there.
    assert a_cancelled["real_ns"] / SECOND_NS < a_expiry_real
    assert (a_start["partition"], b_start["partition"]) == (partition, partition)
    assert b_start["epoch"] > a_start["epoch"]
    assert (b_start["job"], b_start["attempt"]) == (job.id, 2)
