"""kill -9 during ingest and delete, on both dialects (GUARANTEES 001/1, 001/2, 001/5): a
process putting and deleting in a loop is killed with SIGKILL at seeded random instants,
100 times (each a process forked from a server that imported everything once).
After fsck: no version without its file, no blob file without its row, no temp
file, and every acknowledged put reads back its bytes (unless a delete of it was
started). ``FIEFDOM_VAULT_SEED=<seed>`` replays a run; the seed is in every failure."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.streams.text
import pytest
from vault_helpers import files_under, wait_until

from fiefdom.storage import Store
from fiefdom.vault import Location, Vault

HERE = Path(__file__).resolve().parent
TRIALS = 100


async def _lines(stream: anyio.streams.text.TextReceiveStream) -> AsyncIterator[str]:
    """The lines of ``stream`` as they come."""
    pending = ""
    async for text in stream:
        pending += text
        while "\n" in pending:
            line, pending = pending.split("\n", 1)
            yield line


def read_log(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split() for line in lines if line]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_during_ingest_loses_no_acknowledged_put_and_leaves_no_debris(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """100 SIGKILLs at random instants of a put/delete loop; then every acknowledged put
    is there with its bytes, and fsck finds no version without its file and leaves no
    file without its row and no temp file."""
    seed = int(os.environ.get("FIEFDOM_VAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    location = Location("main", tmp_path / "location")
    log = tmp_path / "ingest.log"
    log.touch()
    command = [
        sys.executable,
        str(HERE / "vault_ingester.py"),
        store_url,
        str(location.path),
        str(log),
    ]
    with (tmp_path / "ingesters.err").open("wb") as errors:
        server = await anyio.open_process(command, stderr=errors)
    async with server:
        assert server.stdin is not None
        assert server.stdout is not None
        replies = anyio.streams.text.TextReceiveStream(server.stdout)
        lines = _lines(replies)
        for trial in range(TRIALS):
            before = len(read_log(log))
            wanted = before + rng.randint(1, 4)
            await server.stdin.send(f"{rng.randrange(2**32)}\n".encode())
            pid = int(await anext(lines))
            try:

                async def progressed(target: int = wanted, pid: int = pid) -> bool:
                    try:
                        os.kill(pid, 0)  # the fork server reaps an ingester that exits
                    except ProcessLookupError:
                        raise AssertionError(f"an ingester exited (seed {seed})") from None
                    return len(read_log(log)) >= target

                await wait_until(progressed, what=f"trial {trial} making progress (seed {seed})")
                # A random instant after that: inside a put, a commit or a delete.
                await anyio.sleep(rng.uniform(0.0, 0.05))
            finally:
                os.kill(pid, signal.SIGKILL)
            assert int(await anext(lines)) == -signal.SIGKILL, f"trial {trial} (seed {seed})"
        await server.stdin.aclose()
        assert await server.wait() == 0

    vault = Vault(store, location, grace=0.0)
    report = await vault.fsck()
    assert report.missing == [], f"seed {seed}"
    assert report.foreign == [], f"seed {seed}"
    assert files_under(location.tmp) == [], f"seed {seed}"
    stats = await vault.stats()
    assert stats.pending_sweeps == 0, f"seed {seed}"
    assert stats.blobs == len(files_under(location.blobs)), f"seed {seed}"

    entries = read_log(log)
    deleting = {(e[1], int(e[2])) for e in entries if e[0] == "DELETING"}
    acknowledged = [(e[1], int(e[2]), e[3]) for e in entries if e[0] == "ACK"]
    assert len(acknowledged) >= TRIALS
    lost = []
    for name, version, sha256 in acknowledged:
        if (name, version) in deleting:
            continue
        async with await vault.open(name, version) as download:
            data = await download.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            lost.append((name, version))
    assert lost == [], f"seed {seed}"
    for name in {e[0] for e in acknowledged}:
        numbers = [v.version for v in await vault.versions(name)]
        assert numbers == sorted(set(numbers)), f"seed {seed}"
