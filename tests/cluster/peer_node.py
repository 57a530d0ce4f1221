"""A peer node of the forwarding tests: its own ActorSystem and JobEngine serving
domain ``acct`` (peer_app) on a shared store, with no cluster configuration.
``LOG_PATH.ready`` appears once it serves; SIGTERM stops it.

Usage: python peer_node.py STORE_URL LOG_PATH [--lease SECONDS] (the lease is peer_app's)
"""

from __future__ import annotations

import os
import signal
import sys

import anyio
from peer_app import make_engine

import fiefdom


async def main(url: str, log_path: str) -> None:
    async with (
        fiefdom.open_store(url) as store,
        fiefdom.ActorSystem(name=f"peer-{os.getpid()}") as system,
    ):
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with make_engine(store, system, f"peer-{os.getpid()}"):
                await anyio.Path(f"{log_path}.ready").touch()
                async for _ in signals:
                    break


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
