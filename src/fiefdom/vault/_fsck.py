"""``fsck``: reconcile a vault's storage locations with its database, safely while
the vault is in use (every removal goes through the sweep's locked transaction)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import anyio.to_thread
import msgspec

from ..storage import Store
from . import _disk
from ._model import FsckReport, Location, MissingBlob
from ._sql import Statements

_PAGE = 500


class _Vault(Protocol):
    store: Store
    locations: Mapping[str, Location]
    grace: float
    _sql: Statements

    async def _sweep_blob(self, blob: int) -> tuple[bool, float]: ...

    async def sweep_due(self, *, limit: int = 1000) -> int: ...


def _clean_temp(location: Location, cutoff: float) -> tuple[int, int]:
    removed = kept = 0
    try:
        entries = list(os.scandir(location.tmp))
    except FileNotFoundError:
        return 0, 0
    except OSError as exc:
        raise _disk.unavailable(location, "list", location.tmp, exc) from exc
    for entry in entries:
        try:
            young = entry.stat(follow_symlinks=False).st_mtime > cutoff
        except FileNotFoundError:
            continue  # an upload finished meanwhile
        if young:
            kept += 1
            continue
        done = _disk.remove_if_unlocked(location, Path(entry.path))
        if done is None:
            kept += 1  # an upload going on holds it
        elif done:
            removed += 1
    return removed, kept


def _blob_dirs(location: Location, foreign: list[str]) -> list[tuple[str, list[str]]]:
    """Each ``blobs/ab/cd`` directory and the blob-named files in it; anything else
    found is added to ``foreign`` (relative to the location)."""
    found: list[tuple[str, list[str]]] = []

    def listing(path: Path) -> list[os.DirEntry[str]]:
        try:
            return sorted(os.scandir(path), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _disk.unavailable(location, "list", path, exc) from exc

    def is_prefix(entry: os.DirEntry[str]) -> bool:
        return (
            len(entry.name) == 2
            and all(c in "0123456789abcdef" for c in entry.name)
            and entry.is_dir(follow_symlinks=False)
        )

    root = location.blobs
    for first in listing(root):
        if not is_prefix(first):
            foreign.append(str(Path(first.path).relative_to(location.path)))
            continue
        for second in listing(Path(first.path)):
            if not is_prefix(second):
                foreign.append(str(Path(second.path).relative_to(location.path)))
                continue
            names: list[str] = []
            prefix = first.name + second.name
            for entry in listing(Path(second.path)):
                if (
                    _disk.is_blob_name(entry.name)
                    and entry.name.startswith(prefix)
                    and entry.is_file(follow_symlinks=False)
                ):
                    names.append(entry.name)
                else:
                    foreign.append(str(Path(entry.path).relative_to(location.path)))
            if names:
                found.append((second.path, names))
    return found


def _ages(directory: str, names: list[str]) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for name in names:
        try:
            st = os.stat(os.path.join(directory, name), follow_symlinks=False)
        except FileNotFoundError:
            continue
        out[name] = (st.st_mtime, st.st_size)
    return out


def _missing(paths: list[tuple[int, Path]]) -> list[int]:
    return [blob for blob, path in paths if not path.exists()]


async def fsck(vault: _Vault, *, repair: bool) -> FsckReport:
    """See ``Vault.fsck``."""
    sql = vault._sql
    store = vault.store
    pg = store.backend == "postgres"
    now = time.time()
    cutoff = now - vault.grace
    temp_removed = temp_kept = 0
    for loc in vault.locations.values():
        removed, kept = await anyio.to_thread.run_sync(_clean_temp, loc, cutoff)
        temp_removed += removed
        temp_kept += kept

    swept = 0
    while True:
        n = await vault.sweep_due(limit=_PAGE)
        swept += n
        if n == 0:
            break

    # Blob rows whose file is missing, and the versions pointing at them.
    checked = damaged = 0
    missing: list[MissingBlob] = []
    after = 0
    while True:
        async with store.transaction() as tx:
            rows = await tx.fetch(sql.blob_page, after, _PAGE)
        if not rows:
            break
        after = int(rows[-1][0])
        paths = [
            (int(r[0]), vault.locations[r[1]].blob_path(r[2]))
            for r in rows
            if r[1] in vault.locations
        ]
        checked += len(paths)
        gone = set(await anyio.to_thread.run_sync(_missing, paths))
        for blob, location, sha256 in rows:
            if blob not in gone:
                continue
            loc = vault.locations[location]
            async with store.transaction() as tx:
                # Held until the end (locked, or under SQLite's write lock): an upload
                # of the same bytes that restores the file cannot interleave.
                if not await tx.fetch(sql.lock_blob, blob):
                    continue
                path = loc.blob_path(sha256)
                if await anyio.to_thread.run_sync(path.exists):
                    continue
                versions = await tx.fetch(sql.blob_versions, blob)
                if repair:
                    damaged += len(await tx.fetch(sql.mark_damaged, blob))
            missing.append(
                MissingBlob(
                    location=location,
                    sha256=sha256,
                    versions=[(str(n), int(v)) for n, v in versions],
                )
            )

    # Blob files without a row: adopted as rows marked at the file's age, then swept.
    orphans_removed = orphans_kept = 0
    foreign: list[str] = []
    for loc in vault.locations.values():
        dirs = await anyio.to_thread.run_sync(_blob_dirs, loc, foreign)
        for directory, names in dirs:
            async with store.transaction() as tx:
                arg: object = names if pg else msgspec.json.encode(names).decode()
                known = {r[0] for r in await tx.fetch(sql.known_blobs, loc.name, arg)}
            unknown = [n for n in names if n not in known]
            if not unknown:
                continue
            ages = await anyio.to_thread.run_sync(_ages, directory, unknown)
            for sha256, (mtime, size) in ages.items():
                if mtime > cutoff:
                    orphans_kept += 1
                    continue
                async with store.transaction() as tx:
                    rows = await tx.fetch(sql.adopt_orphan, loc.name, sha256, size, now, mtime)
                if rows and (await vault._sweep_blob(int(rows[0][0])))[0]:
                    orphans_removed += 1
    return FsckReport(
        blobs_checked=checked,
        missing=missing,
        damaged=damaged,
        orphans_removed=orphans_removed,
        orphans_kept=orphans_kept,
        temp_removed=temp_removed,
        temp_kept=temp_kept,
        swept=swept,
        foreign=foreign,
    )
