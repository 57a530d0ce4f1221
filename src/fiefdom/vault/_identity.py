"""A storage location's identity: the marker file at the root of its folder and the
store's record of it.

The database records each blob by its location's *name*; the folder holding the
files is configuration, one per process. Two processes on one store that give one
name to two different folders (two daemons, each with the default ``vault`` under
its own data folder) would each find the other's blobs missing: every read of them
fails, and ``fsck --repair`` marks the other's versions damaged. So the first vault
to use a folder writes a marker naming the location and a random id into it, the
store records that id for the name, and a vault refuses, with one line naming both
folders, a folder whose marker disagrees with the store.

The marker is created exclusively (written aside, fsynced, then hard-linked into
place, which fails if another process got there first), so that two processes
sharing one folder agree on one id however they race."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid

import anyio.to_thread
import msgspec

from .._errors import LocationMismatch
from ..storage import Store
from ._disk import fsync_dir, unavailable
from ._model import Location

MARKER = "fiefdom-location.json"
_KNOWN = "SELECT id, first_path FROM fiefdom_vault_locations WHERE name = $1"


class Marker(msgspec.Struct, frozen=True):
    """What the marker file holds."""

    name: str
    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Found:
    marker: Marker | None  # the folder's marker, if it has one
    has_blobs: bool  # whether the folder holds any blob file (when it has no marker)


def _mismatch(location: Location, message: str) -> LocationMismatch:
    error = LocationMismatch(message)
    error.location = location.name
    return error


def _read_marker(location: Location) -> Marker | None:
    path = location.path / MARKER
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unavailable(location, "read", path, exc) from exc
    try:
        return msgspec.json.decode(data, type=Marker)
    except msgspec.DecodeError as exc:
        raise _mismatch(
            location,
            f"storage location {location.name!r}: {path} is not a location marker "
            f"({exc}); move it away if the folder is the location's",
        ) from None


def _look(location: Location) -> _Found:
    marker = _read_marker(location)
    if marker is not None:
        return _Found(marker, True)
    try:
        has_blobs = any(True for _ in location.blobs.rglob("*") if _.is_file())
    except OSError as exc:
        raise unavailable(location, "list", location.blobs, exc) from exc
    return _Found(None, has_blobs)


def _create_marker(location: Location) -> Marker:
    """Write a new marker, unless another process wrote one first: returns the one
    in place either way."""
    path = location.path / MARKER
    mine = Marker(location.name, uuid.uuid4().hex)
    aside = location.path / f".{MARKER}.{mine.id}"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, msgspec.json.encode(mine) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(aside)
        fsync_dir(location.path)
    except OSError as exc:
        raise unavailable(location, "write", path, exc) from exc
    found = _read_marker(location)
    assert found is not None
    return found


def _where(location: Location) -> str:
    return f"{socket.gethostname()}:{location.path.resolve()}"


async def attach(store: Store, location: Location) -> None:
    """Make sure ``location``'s folder is the one ``store`` knows under its name
    (recording it if the store knows none): ``LocationMismatch`` if not."""
    # The store first, then the folder: a process that recorded the location wrote
    # its marker before, so a record read here has its marker in place by now.
    async with store.read() as tx:
        rows = await tx.fetch(_KNOWN, location.name)
    found = await anyio.to_thread.run_sync(_look, location)
    if found.marker is not None and found.marker.name != location.name:
        raise _mismatch(
            location,
            f"storage location {location.name!r}: the folder {location.path} is the "
            f"location {found.marker.name!r} (its {MARKER} says so); configure it "
            "under that name",
        )
    if not rows:
        blobs = 0
        if found.marker is None and not found.has_blobs:
            async with store.read() as tx:
                blobs = int(
                    await tx.fetchval(
                        "SELECT count(*) FROM fiefdom_blobs WHERE location = $1", location.name
                    )
                )
        if blobs:
            # Blobs recorded before locations had markers, and a folder without any:
            # not theirs.
            raise _mismatch(
                location,
                f"storage location {location.name!r}: this store records {blobs} "
                f"blob(s) in it, and the folder {location.path} holds none of them; "
                "point this location at the folder that does",
            )
        marker = found.marker
        if marker is None:
            marker = await anyio.to_thread.run_sync(_create_marker, location)
        async with store.transaction() as tx:
            await tx.execute(
                "INSERT INTO fiefdom_vault_locations (name, id, first_path, attached_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                location.name,
                marker.id,
                _where(location),
                time.time(),
            )
            rows = await tx.fetch(_KNOWN, location.name)
        found = _Found(marker, True)
    known_id, first_path = rows[0]
    if found.marker is None or found.marker.id != known_id:
        what = (
            f"has no {MARKER}"
            if found.marker is None
            else f"is another location (id {found.marker.id})"
        )
        raise _mismatch(
            location,
            f"storage location {location.name!r} of this store is the folder first "
            f"attached at {first_path} (id {known_id}); {location.path} {what}. "
            "Processes on one store share each location's folder: point this one at "
            "that folder, or give it a name of its own",
        )
