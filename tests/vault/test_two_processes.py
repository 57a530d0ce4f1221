"""Two real processes ingesting into one store (a shared SQLite file, or one PostgreSQL
database) and one shared location directory at the same instant: the versions of one
resource are gapless and unique across both (GUARANTEES 000/1c, 000/1d), and identical
bytes uploaded by both are one blob (001/3, 001/6, 001/16)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest
from vault_helpers import files_under, wait_until

from fiefdom.storage import Store
from fiefdom.vault import Location, Vault

HERE = Path(__file__).resolve().parent
VERSIONS = 25  # per process: 50 in all
COPIES = 10  # per process: 20 uploads of the same bytes


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_two_processes_get_gapless_unique_versions_and_share_one_blob(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """Two processes each put 25 versions of one resource and 10 copies of the same
    bytes at once: the resource has exactly versions 1..50, each acknowledged to one
    process only, with the bytes that process sent; the 20 copies are one blob (one row,
    one file); no temp file is left."""
    directory = tmp_path / "location"
    go = tmp_path / "go"
    children: list[tuple[anyio.abc.Process, Path]] = []
    try:
        for tag in ("a", "b"):
            ready = tmp_path / f"ready-{tag}"
            command = [
                sys.executable,
                str(HERE / "vault_racer.py"),
                store_url,
                str(directory),
                str(ready),
                str(go),
                tag,
                str(VERSIONS),
                str(COPIES),
            ]
            out = tmp_path / f"racer-{tag}.json"
            with out.open("wb") as stdout, (tmp_path / f"racer-{tag}.err").open("wb") as err:
                child = await anyio.open_process(command, stdout=stdout, stderr=err)
            children.append((child, ready))

        async def both_ready() -> bool:
            for child, ready in children:
                assert child.returncode is None, (tmp_path / "racer-a.err").read_text()
                if not ready.exists():
                    return False
            return True

        await wait_until(both_ready, what="both processes to open the store", timeout=60)
        go.touch()
        with anyio.fail_after(120):
            for child, _ in children:
                await child.wait()
    finally:
        for child, _ in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await child.aclose()
    for tag, (child, _) in zip("ab", children, strict=True):
        assert child.returncode == 0, (tmp_path / f"racer-{tag}.err").read_text()

    acknowledged = {
        tag: json.loads((tmp_path / f"racer-{tag}.json").read_text()) for tag in ("a", "b")
    }
    shared = {
        tag: [r for r in results if r["resource"] == "shared"]
        for tag, results in acknowledged.items()
    }
    numbers = sorted(r["version"] for results in shared.values() for r in results)
    assert numbers == list(range(1, 2 * VERSIONS + 1))
    # Each process got distinct numbers of its own: the two sets interleave or not, but
    # every acknowledged version holds the bytes of the process that was told it.
    vault = Vault(store, Location("main", directory))
    for tag, results in shared.items():
        assert len(results) == VERSIONS
        for r in results:
            async with await vault.open("shared", r["version"]) as download:
                data = await download.read()
            assert hashlib.sha256(data).hexdigest() == r["sha256"]
            assert data.startswith(f"{tag} version ".encode())

    copies = [r for results in acknowledged.values() for r in results if r["resource"] != "shared"]
    assert len(copies) == 2 * COPIES
    assert len({r["sha256"] for r in copies}) == 1
    assert {r["version"] for r in copies} == {1}
    stats = await vault.stats()
    assert (stats.resources, stats.versions) == (1 + 2 * COPIES, 2 * VERSIONS + 2 * COPIES)
    distinct = {r["sha256"] for results in shared.values() for r in results}
    assert stats.blobs == len(distinct) + 1
    assert len(files_under(directory / "blobs")) == stats.blobs
    assert files_under(directory / "tmp") == []
    report = await vault.fsck()
    assert report.clean
