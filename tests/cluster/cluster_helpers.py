"""What the cluster tests and their node processes share: the keyed job kind and its
trivial actor, the node processes' run logs and how to read them (handler intervals,
overlaps of one key across processes), and polling helpers.

A node writes one line per handler start and end (``start|end|abort <key> <job_id>
<CLOCK_MONOTONIC ns> <pid>``): CLOCK_MONOTONIC is one clock for every process of the
machine, so intervals written by different processes compare directly.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import fiefdom

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "node.py"
# Fails a wait that should have ended long before: a hang guard, not a timing claim.
HANG_GUARD = 45.0
# figures(**values): prints one JSON line of a test's figures (the conftest fixture).
Report = Callable[..., None]


class Resource(fiefdom.Actor[Any]):
    """The trivial owner of one key of domain ``res``: jobs of its key run inside it."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Any) -> None:
        return None


class Touch(fiefdom.Job):
    """A job of one key of domain ``res``: its handler logs its start and end."""

    options = fiefdom.JobOptions(kind="touch", domain="res", key="key", max_attempts=5)
    key: str
    n: int


def now_ns() -> int:
    """The machine-wide monotonic clock every log line is stamped with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# -- reading the logs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One handler run: from its ``start`` line to its ``end``/``abort`` line, or to
    ``stop_ns`` when the process died inside it (``closed`` is then False)."""

    key: str
    job_id: int
    pid: int
    start_ns: int
    stop_ns: int
    completed: bool  # ended with an ``end`` line (the handler returned)
    closed: bool  # had an ``end`` or ``abort`` line
    # The part of a run that a paused (SIGSTOP) process went on with once resumed
    # (split_at_pauses): it starts at the SIGCONT.
    after_pause: bool = False
    # When the process last found the key's partition its own before the run's start
    # line (a node that notes it, chaos_node.py), else None.
    confirmed_ns: int | None = None


@dataclass
class Logs:
    """Every handler run found in the nodes' logs."""

    runs: list[Run] = field(default_factory=list)

    def by_pid(self) -> Counter[int]:
        """Completed handler runs per process."""
        return Counter(r.pid for r in self.runs if r.completed)

    def completions(self) -> Counter[int]:
        """Completed handler runs per job id."""
        return Counter(r.job_id for r in self.runs if r.completed)

    def unclosed(self) -> list[Run]:
        """Runs a killed process was inside of."""
        return [r for r in self.runs if not r.closed]

    def aborted(self) -> list[Run]:
        """Runs whose handler was cancelled (an ``abort`` line)."""
        return [r for r in self.runs if r.closed and not r.completed]

    def keys_on_several_processes(self) -> int:
        """Keys whose jobs ran in more than one process: ownership moved during the run."""
        pids: dict[str, set[int]] = {}
        for run in self.runs:
            pids.setdefault(run.key, set()).add(run.pid)
        return sum(1 for found in pids.values() if len(found) > 1)


def read_logs(paths: Iterable[Path], *, died_at: dict[int, int] | None = None) -> Logs:
    """Parse the node logs into runs. A start without an end in a process named in
    ``died_at`` (pid to monotonic ns) lasts until then: the process was killed inside
    that handler. Elsewhere it lasts forever (a handler that never returned)."""
    died_at = died_at or {}
    logs = Logs()
    for path in paths:
        if not path.exists():
            continue
        open_runs: dict[tuple[int, int], tuple[str, int]] = {}
        for line in path.read_text().splitlines():
            what, key, job_text, stamp, pid_text, *confirmed = line.split()
            ident = (int(pid_text), int(job_text))
            if what == "start":
                open_runs[ident] = (key, int(stamp), int(confirmed[0]) if confirmed else None)
                continue
            begun = open_runs.pop(ident)
            logs.runs.append(
                Run(
                    key,
                    ident[1],
                    ident[0],
                    begun[1],
                    int(stamp),
                    what == "end",
                    closed=True,
                    confirmed_ns=begun[2],
                )
            )
        for (pid, job_id), (key, start, confirmed_ns) in open_runs.items():
            stop = died_at.get(pid, sys.maxsize)
            logs.runs.append(
                Run(
                    key,
                    job_id,
                    pid,
                    start,
                    max(stop, start),
                    False,
                    closed=False,
                    confirmed_ns=confirmed_ns,
                )
            )
    return logs


def count_ends(paths: Iterable[Path]) -> int:
    """How many handler runs have returned so far, over every log (read while the
    nodes write: a last line may be partial, so only whole lines count)."""
    total = 0
    for path in paths:
        if path.exists():
            total += sum(
                1
                for line in path.read_text().splitlines(keepends=True)
                if line.startswith("end ") and line.endswith("\n")
            )
    return total


def open_starts(path: Path) -> int:
    """How many handlers the log's process is inside right now."""
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    started = sum(1 for line in lines if line.startswith("start "))
    return started - (len(lines) - started)


def cross_process_overlaps(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of the same key, in different processes, whose intervals overlap."""
    found: list[tuple[Run, Run]] = []
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    for key_runs in by_key.values():
        key_runs.sort(key=lambda r: r.start_ns)
        for i, first in enumerate(key_runs):
            for later in key_runs[i + 1 :]:
                if later.start_ns >= first.stop_ns:
                    break
                if later.pid != first.pid:
                    found.append((first, later))
    return found


def split_at_pauses(runs: Iterable[Run], pauses: dict[int, list[tuple[int, int]]]) -> list[Run]:
    """The runs as the intervals their processes were executing: a process stopped
    (SIGSTOP) from ``stop_ns`` to ``cont_ns`` (``pauses``: pid to such pairs, monotonic
    ns) runs nothing meanwhile, so a run spanning a pause is cut in two, the part
    after it marked ``after_pause``. A pause should be given as the instant the process
    was seen stopped and the instant just before SIGCONT: inside the real one, so that
    the executing intervals are never shorter than they were.

    A run whose ownership was confirmed before a pause and that started after it
    (``confirmed_ns``: the stop came between the key's actor's check and the handler's
    first line) is the resumed part of a run admitted before the pause: it is marked
    ``after_pause``, from that pause's SIGCONT."""
    found: list[Run] = []
    for run in runs:
        rest: Run | None = run
        confirmed = run.confirmed_ns
        if confirmed is not None:
            admitted_before = [
                (stop_ns, cont_ns)
                for stop_ns, cont_ns in pauses.get(run.pid, [])
                if confirmed < stop_ns and cont_ns <= run.start_ns
            ]
            if admitted_before:
                cont_ns = max(admitted_before)[1]
                rest = dataclasses.replace(run, start_ns=cont_ns, after_pause=True)
        for stop_ns, cont_ns in sorted(pauses.get(run.pid, [])):
            if rest is None or not rest.start_ns < stop_ns < rest.stop_ns:
                continue
            found.append(dataclasses.replace(rest, stop_ns=stop_ns, completed=False, closed=True))
            # Nothing ran after the pause if the run's process died during it.
            after = dataclasses.replace(rest, start_ns=cont_ns, after_pause=True)
            rest = after if cont_ns < rest.stop_ns else None
        if rest is not None:
            found.append(rest)
    return found


def same_process_overlaps(runs: Sequence[Run]) -> int:
    """Overlapping runs of one key inside one process (the actor's own exclusion)."""
    count = 0
    by_owner: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        by_owner.setdefault((run.key, run.pid), []).append(run)
    for owner_runs in by_owner.values():
        owner_runs.sort(key=lambda r: r.start_ns)
        count += sum(1 for a, b in itertools.pairwise(owner_runs) if b.start_ns < a.stop_ns)
    return count


# -- the store ------------------------------------------------------------------------------


async def all_jobs(store: fiefdom.Store) -> list[fiefdom.JobInfo]:
    """Every job in the store, page by page."""
    jobs: list[fiefdom.JobInfo] = []
    while True:
        page = await store.list_jobs(after_id=jobs[-1].id if jobs else 0, limit=500)
        if not page:
            return jobs
        jobs.extend(page)


async def state_counts(store: fiefdom.Store) -> dict[fiefdom.JobState, int]:
    """How many jobs are in each state, over every queue."""
    counts: Counter[fiefdom.JobState] = Counter()
    for row in await store.count_jobs():
        counts[row.state] += row.count
    return dict(counts)


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    what: str,
    timeout: float = HANG_GUARD,
) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await anyio.sleep(0.02)


# -- node processes -------------------------------------------------------------------------


@dataclass
class Node:
    """One node process (``node.py``) and the files it writes."""

    index: int
    process: anyio.abc.Process
    log: Path
    output: Path  # its stdout and stderr (the library logs there)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self) -> bool:
        """The node serves (its engine runs, SIGTERM stops it gracefully)."""
        return self.log.with_name(self.log.name + ".ready").exists()

    def failure(self) -> str | None:
        """Why the node is gone, if it exited on its own."""
        code = self.process.returncode
        if code is None:
            return None
        return f"node {self.index} exited with {code}:\n{self.output.read_text()[-4000:]}"


async def start_node(
    index: int, store_url: str, folder: Path, *, lease: float, script: Path = NODE_SCRIPT
) -> Node:
    """Start ``node.py`` (or ``script``, taking the same arguments) serving domain
    ``res`` on the store, logging to ``folder``."""
    log = folder / f"node-{index}.log"
    output = folder / f"node-{index}.out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    with output.open("wb") as out:
        process = await anyio.open_process(
            [sys.executable, str(script), store_url, str(log), "--lease", str(lease)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Node(index, process, log, output)


async def start_nodes(
    count: int,
    store_url: str,
    folder: Path,
    *,
    lease: float,
    first: int = 0,
    script: Path = NODE_SCRIPT,
) -> list[Node]:
    """Start ``count`` nodes (numbered from ``first``) and wait until each serves; if
    one exits, fail with its output (and reap the others)."""
    nodes: list[Node] = []
    try:
        for index in range(first, first + count):
            nodes.append(await start_node(index, store_url, folder, lease=lease, script=script))

        def all_ready() -> bool:
            check_alive(nodes)
            return all(node.ready() for node in nodes)

        await wait_until(all_ready, what=f"{count} nodes to serve")
    except BaseException:
        await reap(nodes)
        raise
    return nodes


def is_stopped(node: Node) -> bool:
    """Whether the node's process is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{node.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def check_alive(nodes: Iterable[Node]) -> None:
    """Fail at once, with its output, if a node exited on its own."""
    for node in nodes:
        if (problem := node.failure()) is not None:
            pytest.fail(problem)


async def stop_node(node: Node) -> None:
    """SIGTERM (a graceful stop: the node drains and exits 0); SIGKILL if it hangs."""
    if node.process.returncode is None:
        node.process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(HANG_GUARD) as scope:
            await node.process.wait()
        if scope.cancelled_caught:
            node.process.kill()
            await node.process.wait()
            pytest.fail(f"node {node.index} did not stop within {HANG_GUARD:g}s of SIGTERM")
    await node.process.aclose()


async def kill_node(node: Node) -> None:
    """SIGKILL, and reap it."""
    node.process.send_signal(signal.SIGKILL)
    await node.process.wait()
    await node.process.aclose()


async def reap(nodes: Iterable[Node]) -> None:
    """Leave no child behind, whatever happened: what still runs is killed."""
    for node in nodes:
        if node.process.returncode is None:
            node.process.kill()
        with anyio.CancelScope(shield=True):
            await node.process.wait()
            await node.process.aclose()
