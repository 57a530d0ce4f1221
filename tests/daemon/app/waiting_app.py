"""A user module whose setup hook waits until a file named ``go`` appears in the data
folder: a test can hold a daemon in its start (the data folder locked, no
control.json yet) for as long as it needs."""

from __future__ import annotations

from typing import Any

import anyio


async def setup(daemon: Any) -> None:
    go = anyio.Path(daemon.data_dir / "go")
    # Polling a condition the test controls (no event crosses processes).
    while not await go.exists():  # noqa: ASYNC110
        await anyio.sleep(0.02)
