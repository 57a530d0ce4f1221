"""Two daemons on one store (DESIGN "Cluster", forwarding): each owns half of the
keys of the exposed domain ``accounts``, and a client of either reaches every key.
Deposits told through one daemon and balances asked through the other agree, as if
one process held them all; the first daemon's status counts what it forwarded."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from daemon_harness import DaemonProcess, write_config
from hosted_app import Balance, Deposit

import fiefdom

GUARD = 60.0  # a hang guard, never a speed requirement


def _daemon(folder: Path, store: Path) -> DaemonProcess:
    # Daemons on one store share its vault's folder (one refuses a folder of its own).
    vault = store.parent / "vault"
    extra = (
        f'[store]\nurl = "sqlite:///{store}"\n\n[cluster]\nlisten = "127.0.0.1:0"\n\n'
        f'[vault]\npath = "{vault}"'
    )
    return DaemonProcess(write_config(folder, extra=extra))


async def _partitions(daemon: DaemonProcess) -> int:
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        cluster = (await client.status()).cluster
        assert cluster is not None
        return cluster.partitions


async def test_a_client_of_either_daemon_reaches_every_key(tmp_path: Path) -> None:
    """40 keys: deposits through the first daemon, balances through the second, all
    equal; neither refused a key the other owns."""
    store = tmp_path / "shared.db"
    with _daemon(tmp_path / "a", store) as a, _daemon(tmp_path / "b", store) as b:
        deadline = time.monotonic() + GUARD
        while not (await _partitions(a) == 128 and await _partitions(b) == 128):
            assert time.monotonic() < deadline, "the daemons never split the partitions"
            await anyio.sleep(0.1)
        keys = [f"acct-{i}" for i in range(40)]
        async with fiefdom.connect(a.url, token=a.token) as via_a:
            for n, key in enumerate(keys):
                await via_a.call("accounts", Deposit(amount=n + 1), key=key)
        async with fiefdom.connect(b.url, token=b.token) as via_b:
            balances = [await via_b.call("accounts", Balance(), key=key) for key in keys]
        assert balances == [n + 1 for n in range(len(keys))]
        async with fiefdom.connect(a.url, token=a.token) as via_a:
            cluster = (await via_a.status()).cluster
        assert cluster is not None
        assert 0 < cluster.counters.forwarded < len(keys)
        assert cluster.counters.forward_failures == 0
