"""A process that ingests into a vault until it is killed: puts of random bodies (some
repeated, so deduplicated; one in ten longer than the ingest's batch) to a few
resources, and now and then a delete. It appends
``ACK <name> <version> <sha256>`` once a put is acknowledged, ``DELETING <name>
<version>`` before a delete and ``DEL <name> <version>`` once it is acknowledged.

    python vault_ingester.py STORE_URL LOCATION_DIR LOG_FILE

starts a fork server: it imports everything once, then for each seed read from
stdin forks an ingester (a real process of its own, started in milliseconds rather
than the interpreter's start-up), prints its pid, waits for it to die and prints its
exit code (``-9`` after a SIGKILL). That lets a test kill hundreds of ingesters.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from fiefdom.storage import open_store
from fiefdom.vault import Location, NotFound, Vault


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def main(url: str, directory: str, out: TextIO, seed: int) -> None:
    rng = random.Random(seed)
    repeated = [rng.randbytes(rng.randrange(1, 200_000)) for _ in range(3)]
    store = open_store(url)
    await store.open()
    try:
        vault = Vault(store, Location("main", Path(directory)))
        while True:
            name = f"res-{rng.randrange(4)}"
            if rng.random() < 0.2:
                try:
                    latest = await vault.info(name)
                except NotFound:
                    continue
                out.write(f"DELETING {name} {latest.version}\n")
                out.flush()
                await vault.delete(name, latest.version)
                out.write(f"DEL {name} {latest.version}\n")
                out.flush()
                continue
            draw = rng.random()
            if draw < 0.4:
                data = rng.choice(repeated)
            elif draw < 0.5:
                # Longer than a batch: hashed and written by threads of its own, the
                # whole blocks through O_DIRECT where the filesystem takes it.
                data = rng.randbytes(rng.randrange(5 << 20, 9 << 20))
            else:
                data = rng.randbytes(rng.randrange(0, 300_000))
            info = await vault.put(name, chunks(data, rng.choice([1000, 65536, 1 << 20])))
            out.write(f"ACK {name} {info.version} {info.sha256}\n")
            out.flush()
    finally:
        await store.close()


def ingest(url: str, directory: str, log_path: str, seed: int) -> None:
    """The forked child: ingest until killed; never returns into the fork server."""
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            asyncio.run(main(url, directory, log, seed))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def serve(url: str, directory: str, log_path: str) -> None:
    for line in sys.stdin:
        seed = int(line)
        pid = os.fork()
        if pid == 0:
            ingest(url, directory, log_path, seed)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"{os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3])
