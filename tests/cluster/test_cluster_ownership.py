"""One owner per key across processes (DESIGN rule 2, "Cluster"): real node processes,
each with its own ActorSystem and JobEngine serving domain ``res`` on one store with
no cluster configuration, never run handlers of one key at the same time, whether
they start together or join one that is mid-drain; a backlogged key holds no worker
slot; a killed owner's keys move to a survivor after its lease. None loses a job.

Each test prints its figures as one ``CLUSTER {json}`` line. Run them with
``.venv/bin/pytest tests/cluster``.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from cluster_helpers import (
    Logs,
    Node,
    Report,
    Resource,
    Run,
    Touch,
    all_jobs,
    check_alive,
    count_ends,
    cross_process_overlaps,
    kill_node,
    now_ns,
    open_starts,
    read_logs,
    reap,
    same_process_overlaps,
    start_nodes,
    state_counts,
    stop_node,
    wait_until,
)

import fiefdom
from fiefdom import JobState

pytestmark = pytest.mark.slow


def describe(overlaps: list[tuple[Run, Run]], limit: int = 5) -> str:
    """The first overlapping pairs, readably."""
    lines = [
        f"  key {a.key}: job {a.job_id} in pid {a.pid} [{a.start_ns}, {a.stop_ns}] and "
        f"job {b.job_id} in pid {b.pid} [{b.start_ns}, {b.stop_ns}]"
        for a, b in overlaps[:limit]
    ]
    return "\n".join(lines)


def workload(total: int, keys: int) -> list[Touch]:
    """``total`` jobs spread evenly over ``keys`` keys in a fixed shuffled order: jobs
    claimed together (neighbouring ids) often share a key, as they would not in a
    round-robin order, where a batch never holds two jobs of one key."""
    names = [f"k{i % keys}" for i in range(total)]
    random.Random(f"{total}/{keys}").shuffle(names)
    return [Touch(key=key, n=n) for n, key in enumerate(names)]


def run_figures(logs: Logs, nodes: list[Node], total: int, keys: int) -> dict[str, object]:
    """The figures every multi-process test prints."""
    by_pid = logs.by_pid()
    return {
        "overlaps": len(cross_process_overlaps(logs.runs)),
        "same_process_overlaps": same_process_overlaps(logs.runs),
        "jobs": total,
        "keys": keys,
        "nodes": len(nodes),
        "jobs_run_per_node": [by_pid[node.pid] for node in nodes],
        # 0 with several nodes: each key stayed on one node, no handover was exercised.
        "keys_run_on_several_nodes": logs.keys_on_several_processes(),
        "cancelled_runs": len(logs.aborted()),
    }


def check_one_owner_and_none_lost(logs: Logs, jobs: list[fiefdom.JobInfo], total: int) -> None:
    """No two processes ran one key at once; every job is completed and its handler
    returned at least once."""
    overlaps = cross_process_overlaps(logs.runs)
    assert not overlaps, (
        f"{len(overlaps)} overlapping runs of one key in different processes:\n"
        + describe(overlaps)
    )
    assert same_process_overlaps(logs.runs) == 0
    assert len(jobs) == total
    assert {job.state for job in jobs} == {JobState.COMPLETED}
    assert sorted(logs.completions()) == sorted(job.id for job in jobs)


def drained(store: fiefdom.Store, nodes: list[Node], total: int) -> Callable[[], Awaitable[bool]]:
    """A condition: every job is completed (failing at once if a node died)."""

    async def condition() -> bool:
        check_alive(nodes)
        return await state_counts(store) == {JobState.COMPLETED: total}

    return condition


@pytest.mark.parametrize("node_count", [2, 3], ids=lambda n: f"{n}-nodes")
@pytest.mark.parametrize(
    ("total", "keys"),
    [pytest.param(90, 3, id="90-jobs-3-keys"), pytest.param(300, 20, id="300-jobs-20-keys")],
)
async def test_nodes_never_run_handlers_of_one_key_at_once(
    store: fiefdom.Store,
    store_url: str,
    tmp_path: Path,
    figures: Report,
    node_count: int,
    total: int,
    keys: int,
) -> None:
    """Unconfigured nodes draining keyed jobs never overlap one key's handlers; each runs once."""
    nodes = await start_nodes(node_count, store_url, tmp_path, lease=10.0)
    try:
        await store.enqueue_many(workload(total, keys))
        await wait_until(drained(store, nodes, total), what=f"{total} jobs to complete")
        for node in nodes:
            await stop_node(node)
    finally:
        await reap(nodes)
    assert [node.process.returncode for node in nodes] == [0] * node_count
    logs = read_logs(node.log for node in nodes)
    figures(**run_figures(logs, nodes, total, keys))
    check_one_owner_and_none_lost(logs, await all_jobs(store), total)
    # Exactly once: no handler returned twice (a cancelled run, then a rerun, is fine).
    assert set(logs.completions().values()) == {1}


@pytest.mark.parametrize("joining", [2], ids=lambda n: f"{n}-join")
async def test_nodes_joining_mid_drain_take_keys_without_overlap(
    store: fiefdom.Store, store_url: str, tmp_path: Path, figures: Report, joining: int
) -> None:
    """Nodes joining one that is mid-drain share its keys with no overlap; each job runs once."""
    # Long enough that the first node is still draining once the others serve.
    total, keys = 960, 12
    nodes: list[Node] = []
    try:
        nodes += await start_nodes(1, store_url, tmp_path, lease=10.0)
        await store.enqueue_many(workload(total, keys))

        def under_way() -> bool:
            check_alive(nodes)
            return count_ends([nodes[0].log]) >= 60

        await wait_until(under_way, what="the first node to run 60 jobs")
        nodes += await start_nodes(joining, store_url, tmp_path, lease=10.0, first=1)
        await wait_until(drained(store, nodes, total), what=f"{total} jobs to complete")
        for node in nodes:
            await stop_node(node)
    finally:
        await reap(nodes)
    assert [node.process.returncode for node in nodes] == [0] * len(nodes)
    logs = read_logs(node.log for node in nodes)
    figures(**run_figures(logs, nodes, total, keys))
    check_one_owner_and_none_lost(logs, await all_jobs(store), total)
    assert set(logs.completions().values()) == {1}


class Step(fiefdom.Job):
    """A job of one key of domain ``res`` that the test releases when it chooses."""

    options = fiefdom.JobOptions(kind="step", domain="res", key="key")
    key: str
    n: int


async def test_a_backlogged_key_holds_no_worker_slot(store: fiefdom.Store, figures: Report) -> None:
    """With two workers and six long jobs of key a queued first, b starts before a's third job."""
    starts: list[str] = []
    gates: dict[int, anyio.Event] = {}
    finished: set[str] = set()

    async def step(job: Step, ctx: fiefdom.JobContext[Any]) -> None:
        starts.append(f"{job.key}{job.n}")
        if job.key == "a":
            # "Long": it runs until the test releases it.
            gates[ctx.id] = gate = anyio.Event()
            await gate.wait()
        finished.add(f"{job.key}{job.n}")

    await store.enqueue_many([Step(key="a", n=n) for n in range(1, 7)])
    await store.enqueue(Step(key="b", n=1))

    def a_job_waits() -> bool:
        return any(not gate.is_set() for gate in gates.values())

    async def engine_busy() -> bool:
        # The engine has taken all it will take for now: both slots hold a job, or
        # b has run. Only then is a's running job released (each in turn).
        counts = await state_counts(store)
        return "b1" in finished or counts.get(JobState.RUNNING, 0) >= 2

    async def all_done() -> bool:
        return await state_counts(store) == {JobState.COMPLETED: 7}

    async with fiefdom.ActorSystem(name="head-of-line") as system:
        res = system.domain("res", Resource, idle_timeout=None)
        engine = fiefdom.JobEngine(
            store,
            queues={"default": 2},
            domains={"res": res},
            lease=30.0,
            poll_interval=0.05,
            retention=None,
        )
        engine.register(Step, step)
        async with engine:
            for _ in range(6):
                await wait_until(a_job_waits, what="a job of key a inside its handler")
                await wait_until(engine_busy, what="both worker slots busy, or b done")
                for gate in gates.values():
                    gate.set()
            await wait_until(all_done, what="the 7 jobs to complete")
    a_starts = [i for i, name in enumerate(starts) if name.startswith("a")]
    figures(start_order=starts, b_started_at=starts.index("b1"), third_a_started_at=a_starts[2])
    assert starts.index("b1") < a_starts[2], f"b waited behind a's backlog: {starts}"


async def test_a_killed_owner_s_keys_move_to_the_survivor(
    store: fiefdom.Store, store_url: str, tmp_path: Path, figures: Report
) -> None:
    """SIGKILL of one of two nodes mid-drain: the survivor takes its keys, no overlap, none lost."""
    total, keys = 480, 12
    nodes = await start_nodes(2, store_url, tmp_path, lease=2.0)
    victim, survivor = nodes
    try:
        await store.enqueue_many(workload(total, keys))

        def mid_drain() -> bool:
            # A quarter done, and the victim inside a handler: the kill cuts one short.
            check_alive(nodes)
            return (
                count_ends(node.log for node in nodes) >= total // 4 and open_starts(victim.log) > 0
            )

        await wait_until(mid_drain, what="a quarter of the jobs run, the victim in a handler")
        kill_ns = now_ns()
        await kill_node(victim)
        dead_ns = now_ns()
        await wait_until(drained(store, [survivor], total), what=f"{total} jobs to complete")
        await stop_node(survivor)
    finally:
        await reap(nodes)
    assert victim.process.returncode == -signal.SIGKILL
    assert survivor.process.returncode == 0
    # A handler the kill cut short ran until the victim was gone.
    logs = read_logs((node.log for node in nodes), died_at={victim.pid: dead_ns})
    jobs = await all_jobs(store)

    # The victim's keys: those whose last start before the kill was in the victim.
    last_start: dict[str, Run] = {}
    for run in sorted(logs.runs, key=lambda r: r.start_ns):
        if run.start_ns < kill_ns:
            last_start[run.key] = run
    victim_keys = {key for key, run in last_start.items() if run.pid == victim.pid}
    taken_over = [
        r.stop_ns
        for r in logs.runs
        if r.pid == survivor.pid and r.completed and r.key in victim_keys and r.stop_ns > kill_ns
    ]
    figures(
        **run_figures(logs, nodes, total, keys),
        cut_short_by_the_kill=len(logs.unclosed()),
        victim_keys=len(victim_keys),
        rescued=sum(1 for job in jobs if job.attempt > 1),
        takeover_s=(min(taken_over) - kill_ns) / 1e9 if taken_over else None,
    )
    check_one_owner_and_none_lost(logs, jobs, total)
    # The survivor returned from each job's handler at most once: a second run is one
    # whose completion the kill lost in the victim.
    survivor_runs = [r.job_id for r in logs.runs if r.pid == survivor.pid and r.completed]
    assert len(survivor_runs) == len(set(survivor_runs))
