"""Two daemons on one store (both dialects) and one vault folder: the cluster places
the vault's resources like any domain's keys. Uploads of one resource through both
daemons at once are committed in its actor on the daemon that owns it (the other
forwards them), fenced with that daemon's epoch, and numbered 1..50 without a gap or
a duplicate (GUARANTEES 000/1c, 000/1d); when the owner stops, the other takes the
resource over and numbers on."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from daemon_harness import DaemonProcess, write_config

import fiefdom
from fiefdom.cluster import ClusterCounters
from fiefdom.vault import VaultClient

GUARD = 120.0  # a hang guard, never a speed requirement
PUTS = 25  # per daemon


def _daemon(folder: Path, store_url: str, vault: Path) -> DaemonProcess:
    extra = f'[store]\nurl = "{store_url}"\n\n[vault]\npath = "{vault}"\n'
    return DaemonProcess(write_config(folder, extra=extra))


async def _cluster(daemon: DaemonProcess) -> tuple[int, ClusterCounters]:
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        cluster = (await client.status()).cluster
    assert cluster is not None
    return cluster.partitions, cluster.counters


async def _wait_partitions(*expected: tuple[DaemonProcess, int]) -> None:
    deadline = time.monotonic() + GUARD
    while [(await _cluster(d))[0] for d, _ in expected] != [n for _, n in expected]:
        assert time.monotonic() < deadline, "the daemons never settled their partitions"
        await anyio.sleep(0.1)


async def test_uploads_through_two_daemons_commit_on_the_owner_gaplessly(
    store_url: str, tmp_path: Path
) -> None:
    """25 uploads of ``doc.txt`` through each of two daemons at once: versions 1..50,
    each acknowledged once, each holding the bytes its upload sent (read through
    either daemon); exactly one daemon forwarded its commits (25 or more), none
    failed. The owner then stops: the other takes every partition over, and an
    upload through it is version 51."""
    vault = tmp_path / "vault"
    files = []
    for n in range(2 * PUTS):
        path = tmp_path / "files" / f"{n}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"upload {n}\n".encode() * (n + 1))
        files.append(path)
    a = _daemon(tmp_path / "a", store_url, vault).start()
    b = _daemon(tmp_path / "b", store_url, vault)
    try:
        b.start()
        await _wait_partitions((a, 128), (b, 128))
        acknowledged: dict[int, Path] = {}

        async def upload(daemon: DaemonProcess, path: Path) -> None:
            async with VaultClient(daemon.url, token=daemon.token) as client:
                stored = await client.put(path, "doc.txt")
            assert stored.version not in acknowledged
            acknowledged[stored.version] = path

        async with anyio.create_task_group() as tg:
            for n, path in enumerate(files):
                tg.start_soon(upload, a if n % 2 == 0 else b, path)
        assert sorted(acknowledged) == list(range(1, 2 * PUTS + 1))
        for daemon in (a, b):
            async with VaultClient(daemon.url, token=daemon.token) as client:
                for version, path in acknowledged.items():
                    assert await client.read("doc.txt", version) == path.read_bytes()
        counters = {"a": (await _cluster(a))[1], "b": (await _cluster(b))[1]}
        forwarded = sorted(c.forwarded for c in counters.values())
        assert forwarded[0] == 0, counters
        assert forwarded[1] >= PUTS, counters
        assert all(c.forward_failures == 0 for c in counters.values()), counters
        owner, other = (a, b) if counters["b"].forwarded else (b, a)
        owner.stop()
        await _wait_partitions((other, 256))
        async with VaultClient(other.url, token=other.token) as client:
            stored = await client.put(files[0], "doc.txt")
            assert stored.version == 2 * PUTS + 1
            assert await client.read("doc.txt") == files[0].read_bytes()
    finally:
        b.stop()
        a.stop()
