"""A step that must run to its end whatever happens to the task waiting for it.

Some steps cannot be taken back once begun: a statement handed to SQLite's thread, a
process forked by its start. Cancelling the await on such a step leaves it running
anyway, and its caller gone without knowing how it ended (a transaction maybe open, a
child nobody reaps). ``to_the_end`` runs the step in a task of its own that no
cancellation reaches: a cancelled caller goes on waiting for it, deals with what it
did, and only then raises the cancellation. An anyio cancel scope keeps calling for
the cancellation meanwhile; every call is caught until the step has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def to_the_end(
    step: Awaitable[T],
) -> tuple[asyncio.Future[T], asyncio.CancelledError | None]:
    """Await ``step`` to its end, shielded. Returns it ended (its result or its error
    for the caller to read) and the cancellation its caller got meanwhile (None if
    none), which the caller raises once it has dealt with what the step did."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    return task, cancelled
