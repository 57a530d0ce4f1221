"""Helpers of the vault's tests: bodies streamed in chunks, waiting on a condition
under a hang guard, and a location that refuses writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from fiefdom.vault._identity import MARKER

# How long a condition may take before the test calls it a hang: the tests assert that
# progress happens, never how fast.
HANG_GUARD = 30.0


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    """``data`` in chunks of ``size`` bytes, as a network body arrives."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    what: str,
    timeout: float = HANG_GUARD,
    poll: float = 0.01,
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(poll)


def files_under(path: Path) -> list[Path]:
    """Every regular file below ``path`` but a location's marker file (the folder's
    identity, written when a vault first uses it)."""
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != MARKER)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make ``directory`` refuse new entries: chmod 0555, and for root (whom modes do
    not stop) the immutable attribute as well. Undone on exit."""
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(mode)
