"""A storage location's identity, on both dialects with real folders: a second folder
configured under a name the store already gave to another one is refused before it
is read or written (so that ``fsck --repair`` cannot mark the first folder's versions
damaged from it), while any number of vaults, attaching one folder at once, agree on
one identity."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from vault_helpers import chunks, files_under

from fiefdom.storage import Store
from fiefdom.vault import Location, LocationMismatch, LocationUnavailable, NotFound, Vault
from fiefdom.vault._identity import MARKER


async def _put(vault: Vault, name: str, data: bytes) -> int:
    return (await vault.put(name, chunks(data))).version


async def test_a_second_folder_under_a_known_name_is_refused_and_repairs_nothing(
    store: Store, tmp_path: Path
) -> None:
    """Vault A writes a version into folder ``a`` as location ``main``; vault B names
    folder ``b`` ``main`` too. B's put, read, fsck --repair and sweep all refuse with
    ``LocationMismatch`` naming A's folder; A's version stays live and readable, and
    nothing at all was written into ``b`` but its (empty) folders."""
    vault_a = Vault(store, Location("main", tmp_path / "a"))
    await _put(vault_a, "doc.txt", b"first")
    vault_b = Vault(store, Location("main", tmp_path / "b"))
    with pytest.raises(LocationMismatch) as info:
        await vault_b.put("other.txt", chunks(b"second"))
    message = str(info.value)
    assert str((tmp_path / "a").resolve()) in message
    assert str(tmp_path / "b") in message
    assert isinstance(info.value, LocationUnavailable)  # callers of the old error see it
    with pytest.raises(LocationMismatch):
        await vault_b.fsck(repair=True)
    with pytest.raises(LocationMismatch):
        await vault_b.open("doc.txt")
    with pytest.raises(LocationMismatch):
        await vault_b.sweep_due()
    assert files_under(tmp_path / "b") == []
    assert [v.state for v in await vault_a.versions("doc.txt")] == ["live"]
    async with await vault_a.open("doc.txt") as download:
        assert b"".join([piece async for piece in download]) == b"first"
    assert (await vault_a.fsck(repair=True)).clean
    with pytest.raises(NotFound):
        await vault_b.info("other.txt")  # B's put committed nothing


async def test_vaults_attaching_one_new_folder_at_once_agree_on_one_identity(
    store: Store, tmp_path: Path
) -> None:
    """Eight vaults attach one fresh folder at the same time (each creating the marker
    if none is there yet, in threads of their own): one marker, one identity in the
    store, and every vault then writes and reads the others' versions."""
    folder = tmp_path / "shared"
    vaults = [Vault(store, Location("main", folder)) for _ in range(8)]
    async with anyio.create_task_group() as tg:
        for vault in vaults:
            tg.start_soon(vault.attach)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["name"] == "main"
    async with store.read() as tx:
        rows = await tx.fetch("SELECT name, id FROM fiefdom_vault_locations")
    assert rows == [("main", marker["id"])]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    for n, vault in enumerate(vaults):
        assert await _put(vault, "shared.txt", f"v{n}".encode()) == n + 1
    async with await vaults[0].open("shared.txt", 8) as download:
        assert b"".join([piece async for piece in download]) == b"v7"


async def test_a_folder_marked_for_another_location_is_refused(
    store: Store, tmp_path: Path
) -> None:
    """A folder first used as location ``media`` and then configured as ``main``: its
    marker names ``media``, so the vault refuses it, saying which name to use."""
    folder = tmp_path / "folder"
    await Vault(store, Location("media", folder)).attach()
    with pytest.raises(LocationMismatch, match="configure it under that name"):
        await Vault(store, Location("main", folder)).attach()


async def test_a_folder_without_a_marker_is_not_taken_for_a_known_location(
    store: Store, tmp_path: Path
) -> None:
    """The store knows location ``main`` (folder ``a``, marked); a folder without a
    marker, even one holding the same blob files (copied without the marker), is
    refused: only the marker says which folder is the location."""
    vault_a = Vault(store, Location("main", tmp_path / "a"))
    await _put(vault_a, "doc.txt", b"first")
    copy = tmp_path / "copy"
    for path in files_under(tmp_path / "a"):
        target = copy / path.relative_to(tmp_path / "a")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with pytest.raises(LocationMismatch, match=f"has no {MARKER}"):
        await Vault(store, Location("main", copy)).attach()
    assert not (copy / MARKER).exists()


async def test_blobs_recorded_before_markers_are_adopted_by_their_folder_only(
    store: Store, tmp_path: Path
) -> None:
    """A location recorded before locations had markers (its record and marker
    removed, as a store migrated from that time has them): an empty folder under its
    name is refused, since the store records blobs in it; the folder holding them is
    adopted (marked and recorded) and its version reads back."""
    old = tmp_path / "old"
    await _put(Vault(store, Location("main", old)), "doc.txt", b"kept")
    (old / MARKER).unlink()
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM fiefdom_vault_locations")
    with pytest.raises(LocationMismatch, match="holds none of them"):
        await Vault(store, Location("main", tmp_path / "empty")).attach()
    assert not (tmp_path / "empty" / MARKER).exists()
    adopted = Vault(store, Location("main", old))
    async with await adopted.open("doc.txt") as download:
        assert b"".join([piece async for piece in download]) == b"kept"
    assert (old / MARKER).exists()
    with pytest.raises(LocationMismatch):
        await Vault(store, Location("main", tmp_path / "empty")).attach()


async def test_a_damaged_marker_is_refused_with_its_path(store: Store, tmp_path: Path) -> None:
    """A marker file that is not one (truncated, overwritten) is refused, naming the
    file, rather than replaced: replacing it could give the folder a new identity."""
    folder = tmp_path / "folder"
    await Vault(store, Location("main", folder)).attach()
    (folder / MARKER).write_text("{not json")
    with pytest.raises(LocationMismatch, match="is not a location marker"):
        await Vault(store, Location("main", folder)).attach()
