"""A process that ingests into a vault until it is killed: puts of random bodies (some
repeated, so deduplicated) to a few resources, and now and then a delete. It appends
``ACK <name> <version> <sha256>`` once a put is acknowledged, ``DELETING <name>
<version>`` before a delete and ``DEL <name> <version>`` once it is acknowledged.

    python vault_ingester.py STORE_URL LOCATION_DIR LOG_FILE SEED
"""

from __future__ import annotations

import asyncio
import random
import sys
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
            if rng.random() < 0.4:
                data = rng.choice(repeated)
            else:
                data = rng.randbytes(rng.randrange(0, 300_000))
            info = await vault.put(name, chunks(data, rng.choice([1000, 65536, 1 << 20])))
            out.write(f"ACK {name} {info.version} {info.sha256}\n")
            out.flush()
    finally:
        await store.close()


if __name__ == "__main__":
    with open(sys.argv[3], "a", encoding="utf-8") as log:
        asyncio.run(main(sys.argv[1], sys.argv[2], log, int(sys.argv[4])))
