"""The claim loop of one queue: claims at most ``concurrency - in_flight`` jobs at a
time (a job is in flight from its claim until its outcome has committed) and hands
them to the queue's workers."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel

from ..storage import JobState, Lease, Outcome, StoreError
from ._core import Core, Held, Runner


async def fetch(core: Core, runner: Runner) -> None:
    failures = 0
    timing = core.timing
    try:
        while not core.stop_requested.is_set():
            free = runner.concurrency - runner.in_flight
            if runner.paused or free <= 0 or not core.queue_state_known:
                runner.wake.clear()
                await runner.wake.wait()
                continue
            runner.wake.clear()
            limit = min(free, timing.batch)
            began = time.perf_counter()
            try:
                jobs = await core.queries.claim(
                    runner.name,
                    limit,
                    worker=core.worker,
                    lease=timing.lease,
                    partitions=core.claimable(),
                )
            except StoreError as exc:
                failures += 1
                core.claim_failures += 1
                await core.backoff("claim", exc, failures)
                continue
            core.claim_times.observe(time.perf_counter() - began)
            failures = 0
            core.claim_failures = 0
            core.claimed += len(jobs)
            # Paused while the claim was in flight: give the jobs back unrun, so
            # that no job of a queue starts once the engine knows it is paused.
            given_back = runner.paused
            keys: set[tuple[str | None, str]] = set()
            for job in jobs:
                held = Held(job, runner)
                stale = core.held.get(job.id)
                if stale is not None:
                    # Claimed again while an earlier run of it is still here: that
                    # run's lease lapsed and the job was rescued elsewhere. It is
                    # stale: cancelled before this run starts.
                    core.cancel(stale, "lease")
                core.held[job.id] = held
                runner.in_flight += 1
                lease = Lease(job.id, job.lease_token)
                if given_back:
                    held.cancel_reason = "pause"
                    core.submit(held, Outcome(lease=lease, state=JobState.AVAILABLE, refund=True))
                    continue
                if job.key is not None:
                    if (job.domain, job.key) in keys or (
                        job.partition is not None
                        and core.ownership is not None
                        and not core.ownership.owns(job.partition)
                    ):
                        # A second job of a key claimed in the same batch would wait
                        # for the first in a worker slot; a key whose partition was
                        # lost meanwhile is not ours to run. Back unrun, at once.
                        held.given_back = "given back unrun: its key is busy or owned elsewhere"
                        core.submit(
                            held,
                            Outcome(lease=lease, state=JobState.AVAILABLE, delay=0.0, refund=True),
                        )
                        continue
                    keys.add((job.domain, job.key))
                runner.inbox.put_nowait(held)
                if core.subscribers:
                    core.emit(job, JobState.RUNNING, None)
            if jobs:
                # The workers start the jobs handed to them before this loop sets up
                # its next claim: without this turn of the event loop, a claim woken
                # meanwhile (a notification that arrived during this one) was set up
                # first, and a job's handler started 0.3-0.4 ms later after its claim
                # (measured on a 2-core machine; docs/performance.md).
                await anyio.lowlevel.checkpoint()
            if len(jobs) < limit:
                with anyio.move_on_after(timing.poll):
                    await runner.wake.wait()
    finally:
        # One sentinel per worker: they exit once the jobs ahead of it are handled.
        for _ in range(runner.concurrency):
            runner.inbox.put_nowait(None)
