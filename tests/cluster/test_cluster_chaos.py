"""One owner per key across processes under chaos (DESIGN rules 2 and 9, "Cluster";
GUARANTEES 000/1a "across processes" and "stale owner"): three node processes
(``chaos_node.py``) drain 1,000 keyed jobs over 20 keys while a seeded loop SIGKILLs,
SIGTERMs and restarts them, and SIGSTOPs them past their lease and resumes them.

What counts as an overlap: two handlers of one key executing at the same time in
different processes, on the machine's monotonic clock. A handler whose process was
SIGKILLed inside it runs until the process is gone; one whose process was SIGSTOPped
executes nothing while the process is stopped, so its run is cut at the pause, and the
part after the SIGCONT is checked on its own. That resumed part may overlap the run of
the node that took the key over meanwhile: a paused process cannot notice its lease
ending (docs/cluster.md, "A slow disk or a paused process"), and the guarantee is then
that what it writes is refused. So may a run whose process was stopped between its
key's actor's ownership check and the handler's first line: admitted before the pause,
it starts after it (the node logs when the check passed, ``chaos_node.py``). Such
overlaps are reported as a figure, and each must have made no write after the resume:
every write the store accepted of such a run was fenced before its process was stopped.
Any other overlap fails the test. (That the actor checks again after a pause is
``test_ownership_at_start.py``'s.)

A stale write accepted: a row of ``chaos_writes`` whose epoch is missing, older than
the epoch of the key's write committed before it, or older than the partition's epoch
at its own commit (``chaos_node.py`` says how each is read in the writing transaction).

The seed is ``FIEFDOM_CHAOS_SEED`` if set (it replays the same plan of actions), else
a fixed default; the test prints it with its figures as one ``CLUSTER {json}`` line.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio
import pytest
from chaos_node import TABLES
from cluster_helpers import (
    HERE,
    Node,
    Report,
    Run,
    Touch,
    all_jobs,
    check_alive,
    cross_process_overlaps,
    is_stopped,
    kill_node,
    now_ns,
    read_logs,
    reap,
    same_process_overlaps,
    split_at_pauses,
    start_nodes,
    state_counts,
    stop_node,
    wait_until,
)

import fiefdom
from fiefdom import JobState
from fiefdom.storage import leases

CHAOS_NODE = HERE / "chaos_node.py"
TOTAL, KEYS, NODES = 1000, 20, 3
# Short, so that takeovers happen within the test: a paused node loses its keys.
LEASE = 2.0
ACTIONS = 8
DEFAULT_SEED = 20_250_611
# Every wait for an outcome polls under this guard: a hang fails, naming what hung.
DRAIN_GUARD = 150.0
SECOND_NS = 1_000_000_000


def chaos_seed() -> int:
    return int(os.environ.get("FIEFDOM_CHAOS_SEED") or DEFAULT_SEED)


def workload(total: int, keys: int, seed: int) -> list[Touch]:
    """``total`` jobs spread evenly over ``keys`` keys in a shuffled order."""
    names = [f"k{i % keys}" for i in range(total)]
    random.Random(seed).shuffle(names)
    return [Touch(key=key, n=n) for n, key in enumerate(names)]


def describe(pairs: list[tuple[Run, Run]], limit: int = 5) -> str:
    return "\n".join(
        f"  key {a.key}: job {a.job_id} in pid {a.pid} [{a.start_ns}, {a.stop_ns}]"
        f"{' (resumed)' if a.after_pause else ''} and job {b.job_id} in pid {b.pid} "
        f"[{b.start_ns}, {b.stop_ns}]{' (resumed)' if b.after_pause else ''}"
        for a, b in pairs[:limit]
    )


def what_the_nodes_did(
    pairs: list[tuple[Run, Run]], nodes: list[Node], pauses: dict[int, list[tuple[int, int]]]
) -> str:
    """For a failure message: the library's log lines (``chaos_node.log_the_library``)
    of the processes of the first overlap, from 3 s before it to 1 s after, with their
    pauses, all on the shared monotonic clock."""
    if not pairs:
        return ""
    a, b = pairs[0]
    since, until = (
        min(a.start_ns, b.start_ns) - 3 * SECOND_NS,
        max(a.stop_ns, b.stop_ns) + SECOND_NS,
    )
    lines: list[str] = []
    for node in nodes:
        if node.pid not in (a.pid, b.pid) or not node.output.exists():
            continue
        for line in node.output.read_text(errors="replace").splitlines():
            stamp, _, rest = line.partition(" ")
            if stamp.isdigit() and since <= int(stamp) <= until:
                lines.append(f"{stamp} {rest}")
    stops = [
        f"{stop} {pid} SIGSTOP (SIGCONT at {cont})"
        for pid in (a.pid, b.pid)
        for stop, cont in pauses.get(pid, [])
        if stop <= until and cont >= since
    ]
    return "\nwhat those processes did meanwhile:\n" + "\n".join(sorted(lines + stops))


@dataclass
class Chaos:
    """The nodes, and what the chaos loop did to them."""

    store_url: str
    folder: Path
    rng: random.Random
    live: list[Node]  # serving, or paused: the nodes the drain counts on
    every: list[Node] = field(default_factory=list)  # every node started
    actions: list[str] = field(default_factory=list)
    died_at: dict[int, int] = field(default_factory=dict)  # SIGKILLed pid -> ns
    pauses: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # Per pause: partitions the paused node still held (by the store) at its SIGCONT.
    held_at_resume: list[int] = field(default_factory=list)
    terminated: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.every = list(self.live)

    async def restart(self) -> None:
        """Start a node in place of one that is gone, and wait until it serves."""
        (node,) = await start_nodes(
            1, self.store_url, self.folder, lease=LEASE, first=len(self.every), script=CHAOS_NODE
        )
        self.every.append(node)
        self.live.append(node)

    async def act(self, store: fiefdom.Store, what: str) -> None:
        victim = self.rng.choice(self.live)
        self.actions.append(f"{what} node-{victim.index}")
        if what == "kill":
            self.live.remove(victim)
            await kill_node(victim)
            self.died_at[victim.pid] = now_ns()
            await anyio.sleep(self.rng.uniform(0.0, 1.0))  # down a while: part of the workload
            await self.restart()
        elif what == "term":
            self.live.remove(victim)
            await stop_node(victim)
            self.terminated.append(victim)
            await anyio.sleep(self.rng.uniform(0.0, 1.0))
            await self.restart()
        else:
            node_id = victim.log.with_name(victim.log.name + ".ready").read_text()
            victim.process.send_signal(signal.SIGSTOP)
            await wait_until(lambda: is_stopped(victim), what=f"node-{victim.index} to stop")
            stop_ns = now_ns()  # seen stopped: inside the real pause
            # Past the lease (the workload); whether the others took its partitions
            # over meanwhile is read at the resume, and printed.
            await anyio.sleep(LEASE * 1.5 + self.rng.uniform(0.0, 0.5))
            owners = await leases(store).owners()
            self.held_at_resume.append(
                sum(1 for _, owner, _, live in owners if owner == node_id and live)
            )
            cont_ns = now_ns()  # before the SIGCONT: inside the real pause
            victim.process.send_signal(signal.SIGCONT)
            self.pauses.setdefault(victim.pid, []).append((stop_ns, cont_ns))

    async def run(self, store: fiefdom.Store, drained: anyio.Event) -> None:
        """The plan: each kind of action once, the rest drawn, in a drawn order; one
        at a time (two of the three nodes serve throughout), until the jobs are done."""
        plan = ["kill", "term", "pause"]
        plan += [self.rng.choice(("kill", "term", "pause")) for _ in range(ACTIONS - len(plan))]
        self.rng.shuffle(plan)
        for what in plan:
            with anyio.move_on_after(self.rng.uniform(0.3, 1.5)):
                await drained.wait()  # the pause between actions, cut short by the end
            if drained.is_set():
                return
            await self.act(store, what)


class Write(NamedTuple):
    """A row of ``chaos_writes``: a write the store accepted."""

    job: int
    key: str
    pid: int
    attempt: int
    epoch: int | None  # the epoch the handler wrote under
    previous_epoch: int  # the epoch of the key's write committed before it
    partition_epoch: int | None  # the partition's epoch at its commit
    fenced_ns: int  # when it passed its fence (CLOCK_MONOTONIC)

    def stale(self) -> bool:
        return (
            self.epoch is None
            or self.partition_epoch is None
            or self.epoch < self.previous_epoch
            or self.epoch < self.partition_epoch
        )


async def written(store: fiefdom.Store) -> list[Write]:
    async with store.transaction() as tx:
        rows = await tx.fetch(f"SELECT {', '.join(Write._fields)} FROM chaos_writes")
    return [Write(*row) for row in rows]


def log_lines(nodes: list[Node], what: str) -> int:
    return sum(
        1
        for node in nodes
        if node.log.exists()
        for line in node.log.read_text().splitlines()
        if line.startswith(f"{what} ")
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_three_nodes_under_kill_term_and_pause_never_overlap_a_key_or_lose_a_job(
    store: fiefdom.Store, store_url: str, tmp_path: Path, figures: Report
) -> None:
    """Kills, stops, pauses, restarts of 3 nodes: 0 overlaps, 0 jobs lost, 0 stale writes."""
    started = time.monotonic()
    seed = chaos_seed()
    rng = random.Random(seed)
    async with store.transaction() as tx:
        for statement in TABLES:
            await tx.execute(statement)
        for k in range(KEYS):
            await tx.execute(
                "INSERT INTO chaos_keys (key, epoch, writes) VALUES ($1, 0, 0)", f"k{k}"
            )
    first = await start_nodes(NODES, store_url, tmp_path, lease=LEASE, script=CHAOS_NODE)
    chaos = Chaos(store_url, tmp_path, rng, first)
    try:
        await store.enqueue_many(workload(TOTAL, KEYS, seed))
        drained = anyio.Event()

        async def all_completed() -> bool:
            check_alive(chaos.live)
            counts = await state_counts(store)
            gone = {
                s: n for s, n in counts.items() if s in (JobState.DISCARDED, JobState.CANCELLED)
            }
            assert not gone, f"jobs given up: {gone}"
            return counts == {JobState.COMPLETED: TOTAL}

        async with anyio.create_task_group() as group:
            group.start_soon(chaos.run, store, drained)
            await wait_until(all_completed, what=f"{TOTAL} jobs to complete", timeout=DRAIN_GUARD)
            drained.set()
        for node in list(chaos.live):
            await stop_node(node)
    finally:
        for node in chaos.every:
            if node.process.returncode is None:
                node.process.send_signal(signal.SIGCONT)
        await reap(chaos.every)
    wall_s = time.monotonic() - started
    # A SIGTERM drains: those nodes, and the last ones, exit 0.
    assert [n.process.returncode for n in [*chaos.terminated, *chaos.live]] == [0] * (
        len(chaos.terminated) + len(chaos.live)
    )

    logs = read_logs((node.log for node in chaos.every), died_at=chaos.died_at)
    executing = split_at_pauses(logs.runs, chaos.pauses)
    pairs = cross_process_overlaps(executing)
    overlaps = [(a, b) for a, b in pairs if not (a.after_pause or b.after_pause)]
    # Each resumed run overlapping another process's run of its key, once.
    resumed = list({r: None for pair in pairs for r in pair if r.after_pause})
    jobs = await all_jobs(store)
    rows = await written(store)
    stale = [row for row in rows if row.stale()]
    fenced_at: dict[tuple[int, int], list[int]] = {}
    for row in rows:
        fenced_at.setdefault((row.job, row.pid), []).append(row.fenced_ns)
    paused_at = {cont: stop for pauses in chaos.pauses.values() for stop, cont in pauses}
    # A resumed run overlapping the key's new owner that passed its fence after the
    # pause began (the same process may run the job again later: not that run's write).
    wrote_after_resume = [
        run
        for run in resumed
        if any(
            paused_at[run.start_ns] <= fenced <= run.stop_ns
            for fenced in fenced_at.get((run.job_id, run.pid), [])
        )
    ]
    writes_per_job = Counter(row.job for row in rows)
    lost = [job.id for job in jobs if job.state is not JobState.COMPLETED]
    lost += [job.id for job in jobs if job.id not in writes_per_job]
    figures(
        seed=seed,
        lease_s=LEASE,
        actions=chaos.actions,
        actions_taken=len(chaos.actions),
        nodes_started=len(chaos.every),
        jobs=len(jobs),
        keys=KEYS,
        attempts=sum(job.attempt for job in jobs),
        jobs_retried=sum(1 for job in jobs if job.attempt > 1),
        overlaps=len(overlaps),
        same_process_overlaps=same_process_overlaps(logs.runs),
        resumed_runs_overlapping_the_new_owner=len(resumed),
        resumed_runs_writing_after_resume=len(wrote_after_resume),
        resumed_run_max_ms=max(((r.stop_ns - r.start_ns) / 1e6 for r in resumed), default=None),
        partitions_held_at_resume=chaos.held_at_resume,
        lost=len(set(lost)),
        stale_writes_accepted=len(stale),
        stale_writes_refused=log_lines(chaos.every, "refused"),
        failed_runs=log_lines(chaos.every, "failed"),
        cancelled_runs=log_lines(chaos.every, "abort"),
        cut_short_by_a_kill=len(logs.unclosed()),
        jobs_written_twice=sum(1 for n in writes_per_job.values() if n > 1),
        keys_run_on_several_nodes=logs.keys_on_several_processes(),
        wall_s=round(wall_s, 1),
    )
    assert not overlaps, (
        f"{len(overlaps)} overlapping runs of one key in different processes (seed {seed}):\n"
        + describe(overlaps)
        + what_the_nodes_did(overlaps, chaos.every, chaos.pauses)
    )
    assert same_process_overlaps(logs.runs) == 0
    assert not wrote_after_resume, (
        f"a paused owner wrote after resuming while another node ran its key (seed {seed}): "
        f"{wrote_after_resume[:5]}"
    )
    assert not stale, f"writes under a stale epoch accepted (seed {seed}): {stale[:5]}"
    assert len(jobs) == TOTAL
    assert not lost, f"jobs lost (seed {seed}): {sorted(set(lost))[:20]}"
    # The store's completions and the handlers' own: each completed job's handler
    # returned (its write committed) at least once.
    assert set(logs.completions()) == {job.id for job in jobs}


# -- the overlap check can fail -------------------------------------------------------------


def write_log(path: Path, lines: list[tuple[str, str, int, int, int]]) -> Path:
    path.write_text("".join(f"{w} {k} {j} {ns} {pid}\n" for w, k, j, ns, pid in lines))
    return path


def test_an_overlap_of_one_key_across_processes_is_found(tmp_path: Path) -> None:
    """cross_process_overlaps finds two processes running one key at once, and only that."""
    a = write_log(tmp_path / "a.log", [("start", "k", 1, 100, 11), ("end", "k", 1, 200, 11)])
    b = write_log(tmp_path / "b.log", [("start", "k", 2, 150, 22), ("end", "k", 2, 250, 22)])
    c = write_log(tmp_path / "c.log", [("start", "k", 3, 250, 33), ("end", "k", 3, 300, 33)])
    d = write_log(tmp_path / "d.log", [("start", "j", 4, 120, 44), ("end", "j", 4, 180, 44)])
    logs = read_logs([a, b, c, d])
    found = cross_process_overlaps(logs.runs)
    assert [(x.job_id, y.job_id) for x, y in found] == [(1, 2)]


def test_a_killed_process_s_run_lasts_until_its_death(tmp_path: Path) -> None:
    """A run cut short by SIGKILL overlaps a later run of its key begun before the death."""
    a = write_log(tmp_path / "a.log", [("start", "k", 1, 100, 11)])
    b = write_log(tmp_path / "b.log", [("start", "k", 2, 500, 22), ("end", "k", 2, 600, 22)])
    assert cross_process_overlaps(read_logs([a, b], died_at={11: 400}).runs) == []
    found = cross_process_overlaps(read_logs([a, b], died_at={11: 550}).runs)
    assert [(x.job_id, y.job_id) for x, y in found] == [(1, 2)]
    # Not known to be dead: the run never ended, it overlaps whatever came after.
    assert len(cross_process_overlaps(read_logs([a, b]).runs)) == 1


def test_a_paused_process_s_run_overlaps_only_once_it_resumes(tmp_path: Path) -> None:
    """A run spanning a SIGSTOP is cut at the pause; each part's overlaps are found."""
    # Process 11 starts k at 100, is stopped from 150 to 1000 and ends at 1010.
    a = write_log(tmp_path / "a.log", [("start", "k", 1, 100, 11), ("abort", "k", 1, 1010, 11)])
    pauses = {11: [(150, 1000)]}
    # Process 22 ran k while 11 was stopped, and was done before the resume: no overlap
    # (the raw runs, not cut at the pause, would count one).
    b = write_log(tmp_path / "b.log", [("start", "k", 2, 300, 22), ("end", "k", 2, 800, 22)])
    runs = read_logs([a, b]).runs
    assert len(cross_process_overlaps(runs)) == 1
    cut = split_at_pauses(runs, pauses)
    assert sorted((r.start_ns, r.stop_ns, r.after_pause) for r in cut if r.pid == 11) == [
        (100, 150, False),
        (1000, 1010, True),
    ]
    assert cross_process_overlaps(cut) == []
    # Still running k when 11 resumes: the resumed part overlaps it.
    c = write_log(tmp_path / "c.log", [("start", "k", 3, 900, 33), ("end", "k", 3, 1005, 33)])
    found = cross_process_overlaps(split_at_pauses(read_logs([a, c]).runs, pauses))
    assert [(x.job_id, y.job_id, y.after_pause) for x, y in found] == [(3, 1, True)]
    # Killed while stopped: its run ends in the pause, nothing of it runs after.
    e = write_log(tmp_path / "e.log", [("start", "k", 1, 100, 11)])
    cut = split_at_pauses(read_logs([e, c], died_at={11: 500}).runs, pauses)
    assert [(r.start_ns, r.stop_ns) for r in cut if r.pid == 11] == [(100, 150)]
    assert cross_process_overlaps(cut) == []
    # And the part before the pause overlapping another's run is found as well.
    d = write_log(tmp_path / "d.log", [("start", "k", 4, 120, 44), ("end", "k", 4, 130, 44)])
    found = cross_process_overlaps(split_at_pauses(read_logs([a, d]).runs, pauses))
    assert [(x.job_id, y.job_id, y.after_pause) for x, y in found] == [(1, 4, False)]


def test_a_run_admitted_before_a_pause_and_started_after_it_counts_as_resumed(
    tmp_path: Path,
) -> None:
    """A start line whose ownership check (its sixth field) came before a pause of its
    process, the line itself after the SIGCONT, is the resumed part of a run admitted
    before the pause. Checked after the resume, it is an ordinary run: its overlap with
    another process's run of the key fails the test."""
    pauses = {11: [(150, 1000)]}
    other = write_log(tmp_path / "b.log", [("start", "k", 2, 900, 22), ("end", "k", 2, 1100, 22)])
    before = tmp_path / "a.log"
    before.write_text("start k 1 1001 11 140\nabort k 1 1004 11\n")
    [(_, y)] = cross_process_overlaps(split_at_pauses(read_logs([before, other]).runs, pauses))
    assert (y.job_id, y.after_pause, y.start_ns) == (1, True, 1000)
    after = tmp_path / "c.log"
    after.write_text("start k 1 1001 11 1000\nabort k 1 1004 11\n")
    [(_, y)] = cross_process_overlaps(split_at_pauses(read_logs([after, other]).runs, pauses))
    assert (y.job_id, y.after_pause) == (1, False)
    # A line without the field (node.py's) is never moved.
    plain = write_log(
        tmp_path / "d.log", [("start", "k", 1, 1001, 11), ("abort", "k", 1, 1004, 11)]
    )
    [(_, y)] = cross_process_overlaps(split_at_pauses(read_logs([plain, other]).runs, pauses))
    assert (y.job_id, y.after_pause) == (1, False)
