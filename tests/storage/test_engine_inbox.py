"""The hand-over of claimed jobs from a queue's fetcher to its workers (``Inbox``):
in order, each to one worker, and never lost or left waiting when a worker is
cancelled around its wake-up (the case ``asyncio.Queue`` also covers)."""

from __future__ import annotations

import asyncio

from fiefdom.jobs._core import Held, Inbox


def _held(n: int) -> Held:
    # Held only travels through the inbox here: any object stands for one.
    return n  # type: ignore[return-value]


async def test_items_reach_waiting_workers_in_order_one_each() -> None:
    inbox = Inbox()
    got: list[object] = []

    async def worker() -> None:
        got.append(await inbox.get())

    workers = [asyncio.create_task(worker()) for _ in range(3)]
    await asyncio.sleep(0)  # one turn: each task runs to its wait
    assert len(inbox._waiters) == 3
    for n in range(3):
        inbox.put_nowait(_held(n))
    await asyncio.gather(*workers)
    assert got == [0, 1, 2]
    assert inbox.empty()
    inbox.put_nowait(None)
    assert not inbox.empty()
    assert await inbox.get() is None


async def test_a_worker_cancelled_after_its_wake_up_passes_the_item_on() -> None:
    """The first waiter is woken for an item and cancelled before it runs: the item
    stays in the inbox and the second waiter takes it, rather than both waiting
    forever with an item queued."""
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # one turn: both wait, first in line
    assert len(inbox._waiters) == 2
    inbox.put_nowait(_held(7))  # wakes first
    first.cancel()  # before first has run again
    assert await asyncio.wait_for(second, timeout=5) == 7
    assert first.cancelled()
    assert inbox.empty()


async def test_a_worker_cancelled_while_waiting_takes_nothing() -> None:
    inbox = Inbox()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert len(inbox._waiters) == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert not inbox._waiters  # its wake-up is gone with it
    inbox.put_nowait(_held(1))  # no one waits: it stays for the next worker
    assert not inbox.empty()
    assert await inbox.get() == 1
