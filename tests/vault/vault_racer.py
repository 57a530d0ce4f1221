"""One of the processes of the two-process vault test: it opens the store and the
shared location, says it is ready, waits for the go, then puts at once ``versions``
new versions of one shared resource and ``copies`` uploads of the same bytes to
resources of its own, and prints what it was acknowledged as JSON.

    python vault_racer.py STORE_URL LOCATION_DIR READY_FILE GO_FILE TAG VERSIONS COPIES
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fiefdom.storage import open_store
from fiefdom.vault import Location, Vault

SHARED = "shared"
SAME = b"the same bytes, uploaded by both processes at once\n" * 2000
HANG_GUARD = 60.0


async def chunks(data: bytes, size: int = 16384) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


def wait_for_go(ready: Path, go: Path, tag: str) -> None:
    """Say this process is ready, then block until the go file exists (nothing else
    runs in this process meanwhile)."""
    ready.write_text(tag)
    deadline = time.monotonic() + HANG_GUARD
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{tag}: no go within {HANG_GUARD}s")
        time.sleep(0.002)


async def main(
    url: str, directory: str, ready: Path, go: Path, tag: str, versions: int, copies: int
) -> None:
    store = open_store(url)
    await store.open()
    try:
        vault = Vault(store, Location("main", Path(directory)))
        wait_for_go(ready, go, tag)

        async def version(i: int) -> dict[str, object]:
            body = f"{tag} version {i}\n".encode() * (i + 1)
            info = await vault.put(SHARED, chunks(body, 64))
            return {"resource": info.resource, "version": info.version, "sha256": info.sha256}

        async def copy(i: int) -> dict[str, object]:
            info = await vault.put(f"same-{tag}-{i:02}", chunks(SAME))
            return {"resource": info.resource, "version": info.version, "sha256": info.sha256}

        results = await asyncio.gather(
            *(version(i) for i in range(versions)), *(copy(i) for i in range(copies))
        )
        sys.stdout.write(json.dumps(results) + "\n")
    finally:
        await store.close()


if __name__ == "__main__":
    url, directory, ready, go, tag, versions, copies = sys.argv[1:8]
    asyncio.run(main(url, directory, Path(ready), Path(go), tag, int(versions), int(copies)))
