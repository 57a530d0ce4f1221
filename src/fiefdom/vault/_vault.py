"""``Vault``: resources with gapless versions over content-addressed blobs in
storage locations, on a store of either dialect.

Ingest: the bytes stream into a temp file (hashed, size-checked, fsynced), the temp
file is hard-linked to its blob path (directory fsynced), then one transaction
takes the resource's next number, inserts-or-gets the blob and adds the version.
That transaction runs inside the resource's actor when the vault has an actor
system, and is fenced with the partition's epoch when it has a cluster ownership.
Acknowledged means committed.

Delete marks rows and enqueues the sweep job in the same transaction; the sweep
removes a blob's file once it has been unreferenced for the grace period, inside a
transaction that holds the blob's row (see ``_sweep_blob`` for why that makes a
concurrent re-upload of the same bytes safe)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import msgspec

from .._errors import (
    BlobMissing,
    ConfigurationError,
    FiefdomError,
    LocationUnavailable,
    NotFound,
    OwnerUnavailable,
    QuotaExceeded,
    VaultError,
)
from .._log import get_logger
from ..actors import Actor, Domain, Request
from ..jobs import JobContext, JobEngine, Snooze
from ..storage import Job, JobOptions, Store, Transaction, partition_of
from ..supervisors import ActorSystem
from . import _disk
from ._disk import Download
from ._fsck import fsck
from ._identity import attach
from ._model import (
    FsckReport,
    Location,
    PutResult,
    ResourceInfo,
    ResourcePage,
    VaultStats,
    VersionInfo,
    error_status,
)
from ._names import validate_name
from ._sql import statements

log = get_logger("fiefdom.vault")

VAULT_DOMAIN = "fiefdom.vault"
"""The name of the vault's domain of per-resource actors (pass it to a ``JobEngine``
as ``domains={VAULT_DOMAIN: vault.domain}`` to have the cluster place it)."""

DEFAULT_GRACE = 3600.0
MAX_METADATA_BYTES = 65536
MAX_PAGE = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SweepBlobs(Job):
    """Remove the files of blobs that no version references any more, once they have
    been unreferenced for the vault's grace period (enqueued by every delete, in
    the delete's transaction). A blob referenced again meanwhile is kept."""

    options = JobOptions(kind="fiefdom.vault.sweep", queue="fiefdom", max_attempts=20)
    blobs: list[int]


class _Commit(Request[VersionInfo]):
    """Commit a version whose blob is published. It may run on another process (the
    resource's owner in a cluster), which shares the location's folder but perhaps
    not its path: ``temp`` is the upload's temp file's name in the location's
    ``tmp/``."""

    name: str
    location: str
    sha256: str
    size: int
    temp: str
    metadata: str | None = None


class _Delete(Request[bool]):
    name: str
    version: int | None = None


class _Resource(Actor[_Commit | _Delete]):
    """A resource's owner: its commits and deletes run here, one at a time."""

    def __init__(self, vault: Vault, name: str) -> None:
        self.vault = vault
        self.name = name

    async def receive(self, msg: _Commit | _Delete) -> object:
        if isinstance(msg, _Commit):
            return await self.vault._commit(msg)
        return await self.vault._delete(msg.name, msg.version)


def _temp_path(loc: Location, msg: _Commit) -> Path:
    name = msg.temp
    if "/" in name or "\\" in name or not name.endswith(_disk.TEMP_SUFFIX):
        raise VaultError(f"a commit named the temp file {name!r}, which is not one")
    return loc.tmp / name


class Fencing(Protocol):
    """What the vault needs of a cluster ownership to fence its commits (a ``Node``
    has it): the epoch under which this process owns ``partition``, or None."""

    def epoch(self, partition: int) -> int | None: ...


class Vault:
    """Resources, versions and blobs on ``store``, with their bytes in ``locations``
    (the first is where uploads go unless ``put(location=...)`` says otherwise).

    ``system``: run each resource's commits and deletes in its actor (a domain
    named ``VAULT_DOMAIN``). ``ownership`` (a cluster node): fence every commit and
    delete with the epoch under which this node owns the resource's partition
    (``StaleOwner`` if it moved on, ``OwnerUnavailable`` if the node does not own
    it). Without either, per-resource order still holds through the database: the
    resource's row is locked by the statement that takes its next number.

    ``grace`` (seconds): how long an unreferenced blob, a temp file or a blob file
    without a row is kept before it is removed (longer than any upload may pause).
    ``max_size`` caps every upload (a location's own cap and ``put``'s apply too)."""

    def __init__(
        self,
        store: Store,
        locations: Location | Sequence[Location],
        *,
        system: ActorSystem | None = None,
        ownership: Fencing | None = None,
        grace: float = DEFAULT_GRACE,
        max_size: int | None = None,
        commit_timeout: float = 60.0,
    ) -> None:
        locs = [locations] if isinstance(locations, Location) else list(locations)
        if not locs:
            raise ConfigurationError("Vault needs at least one storage Location")
        by_name: dict[str, Location] = {}
        for loc in locs:
            if not isinstance(loc, Location):
                raise ConfigurationError(f"Vault locations are Location objects, got {loc!r}")
            if loc.name in by_name:
                raise ConfigurationError(f"two storage locations are named {loc.name!r}")
            by_name[loc.name] = loc
        if not (math.isfinite(grace) and grace >= 0):
            raise ConfigurationError(f"grace must be finite seconds >= 0, got {grace}")
        if max_size is not None and max_size < 0:
            raise ConfigurationError(f"max_size must be >= 0, got {max_size}")
        if not commit_timeout > 0:
            raise ConfigurationError(f"commit_timeout must be positive, got {commit_timeout}")
        self.store = store
        self.locations: Mapping[str, Location] = by_name
        self.default_location = locs[0]
        self.grace = grace
        self.max_size = max_size
        self.commit_timeout = commit_timeout
        self._ownership = ownership
        self._sql = statements(store.backend)
        self._attached: set[str] = set()
        self._attaching = anyio.Lock()
        self.domain: Domain[str, _Commit | _Delete] | None = None
        if system is not None:
            self.domain = system.domain(VAULT_DOMAIN, lambda name: _Resource(self, name))

    def register(self, engine: JobEngine) -> None:
        """Run this vault's sweep jobs (``SweepBlobs``, queue ``fiefdom``) on ``engine``."""
        engine.register(SweepBlobs, self._sweep_job)

    # -- ingest ----------------------------------------------------------------------

    async def put(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        expected_sha256: str | None = None,
        max_size: int | None = None,
        location: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> VersionInfo:
        """Store the bytes of ``chunks`` as the next version of resource ``name``
        (created on its first version); returns the version once committed.

        Memory stays bounded whatever the size. ``expected_sha256`` (hex): refuse
        other bytes (``ChecksumMismatch``); ``max_size``: refuse more bytes
        (``TooLarge``, raised as soon as the limit is passed); ``metadata``
        replaces the resource's metadata. Any error means nothing was committed and
        no temp file is left."""
        return await self._put(
            name,
            chunks,
            expected_sha256=expected_sha256,
            max_size=max_size,
            location=location,
            metadata=metadata,
            in_actor=False,
        )

    async def _put(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        expected_sha256: str | None,
        max_size: int | None,
        location: str | None,
        metadata: Mapping[str, str] | None,
        in_actor: bool,
    ) -> VersionInfo:
        """``put``; ``in_actor``: the caller runs in the resource's actor already (a
        transform), so the commit runs here instead of as an ask to that actor,
        which would wait on its own sender for ever."""
        name = validate_name(name)
        loc = self._location(location)
        expected = _check_sha256(expected_sha256)
        meta = _encode_metadata(metadata)
        limits = [m for m in (max_size, loc.max_size, self.max_size) if m is not None]
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        await self._use(loc)
        temp = await _disk.receive(
            loc, chunks, max_size=min(limits) if limits else None, expected_sha256=expected
        )
        try:
            if loc.quota is not None:
                # Refused before its file is published: a blob file without a row
                # (kept until fsck's grace period) is left only by uploads that
                # raced for the last room, refused by the exact check at commit.
                async with self.store.read() as tx:
                    await self._check_quota(tx, loc, loc.quota, temp.sha256, temp.size)
            await anyio.to_thread.run_sync(_disk.publish, loc, temp.sha256, temp.path)
            commit = _Commit(
                name=name,
                location=loc.name,
                sha256=temp.sha256,
                size=temp.size,
                temp=temp.path.name,
                metadata=meta,
            )
            if self.domain is not None and not in_actor:
                return await self.domain.ask(name, commit, timeout=self.commit_timeout)
            return await self._commit(commit)
        finally:
            # The temp file is the upload's own until its row has committed (or not):
            # a sweep that removed the blob file meanwhile is repaired from it.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(temp.discard)

    async def put_many(
        self,
        items: Iterable[tuple[str, bytes | AsyncIterable[bytes]]],
        *,
        concurrency: int = 4,
        location: str | None = None,
        max_size: int | None = None,
    ) -> list[PutResult]:
        """Store each ``(name, bytes or chunks)`` item as the next version of its
        resource, up to ``concurrency`` at a time, each committed on its own: one
        result per item, in order, with the version it became or the error that kept
        it out (``code`` and message, as ``put`` would have raised it;
        ``source_failed`` when the item's own chunks raised). An item's error never
        holds back another item; items of one name get consecutive
        versions in the order they finish."""
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        batch = list(items)
        results: list[PutResult | None] = [None] * len(batch)
        limiter = anyio.CapacityLimiter(concurrency)

        async def one(index: int, name: str, data: bytes | AsyncIterable[bytes]) -> None:
            async with limiter:
                chunks = _slices(data) if isinstance(data, bytes) else _source(data)
                try:
                    info = await self.put(name, chunks, location=location, max_size=max_size)
                except _SourceFailed as exc:
                    error = f"reading the item failed: {exc.__cause__!r}"
                    results[index] = PutResult(name=str(name), code="source_failed", error=error)
                except (FiefdomError, ValueError, TypeError) as exc:
                    # TypeError: the item's chunks are not bytes (``put`` says which).
                    status = (400, "invalid_request") if isinstance(exc, TypeError) else None
                    status = status or error_status(exc)
                    code = "unavailable" if status is None else status[1]
                    error = str(exc) or type(exc).__name__
                    results[index] = PutResult(name=str(name), code=code, error=error)
                else:
                    results[index] = PutResult(name=info.resource, version=info)

        async with anyio.create_task_group() as tg:
            for index, (name, data) in enumerate(batch):
                tg.start_soon(one, index, name, data)
        return [r for r in results if r is not None]

    async def _commit(self, msg: _Commit) -> VersionInfo:
        sql = self._sql
        loc = self._location(msg.location)
        now = round(time.time(), 6)  # what PostgreSQL's timestamptz keeps
        async with self.store.transaction() as tx:
            await self._fence(tx, msg.name)
            if loc.quota is not None:
                await self._check_quota(tx, loc, loc.quota, msg.sha256, msg.size)
            rows = await tx.fetch(sql.upsert_resource, msg.name, msg.metadata, now)
            resource, number = rows[0]
            rows = await tx.fetch(sql.upsert_blob, loc.name, msg.sha256, msg.size, now)
            blob, size = rows[0]
            if size != msg.size:
                raise VaultError(
                    f"blob {msg.sha256} in location {loc.name!r} is recorded with {size} "
                    f"bytes, but {msg.size} bytes with that hash were received: the "
                    "database and the location disagree; run fsck"
                )
            # The blob's row is ours until commit: a sweep cannot remove its file now,
            # and one that did before is undone by linking our temp file again. The
            # file is there from here on: versions found damaged (by fsck) are healed.
            await anyio.to_thread.run_sync(_disk.publish, loc, msg.sha256, _temp_path(loc, msg))
            await tx.execute(sql.heal_damaged, blob)
            await tx.execute(sql.insert_version, resource, number, blob, msg.size, now)
        return VersionInfo(
            resource=msg.name,
            version=int(number),
            sha256=msg.sha256,
            size=msg.size,
            location=loc.name,
            created_at=now,
        )

    async def _check_quota(
        self, tx: Transaction, loc: Location, quota: int, sha256: str, size: int
    ) -> None:
        """Refuse a new blob that would take ``loc`` past ``quota`` (a blob already
        there costs nothing more)."""
        sql = self._sql
        if sql.lock_quota and not tx.read_only:
            await tx.execute(sql.lock_quota, loc.name)
        if await tx.fetchval(sql.blob_known, loc.name, sha256) is not None:
            return
        used = int(await tx.fetchval(sql.location_usage, loc.name))
        if used + size > quota:
            raise QuotaExceeded(loc.name, quota, used, size)

    async def _fence(self, tx: Transaction, name: str) -> None:
        if self._ownership is None:
            return
        partition = partition_of(name)
        epoch = self._ownership.epoch(partition)
        if epoch is None:
            raise OwnerUnavailable(
                f"{VAULT_DOMAIN}/{name}", f"this node does not own partition {partition}"
            )
        await self.store.check_owner(tx, partition, epoch)

    # -- reading ---------------------------------------------------------------------

    async def info(self, name: str, version: int | None = None) -> VersionInfo:
        """Version ``version`` of ``name`` (the latest when None); ``NotFound`` if
        there is no such resource or version (or it was deleted)."""
        name = validate_name(name)
        async with self.store.transaction() as tx:
            if version is None:
                rows = await tx.fetch(self._sql.latest, name)
            else:
                if not isinstance(version, int) or not 1 <= version < 2**63:
                    raise NotFound(f"version must be a number from 1, got {version!r}")
                rows = await tx.fetch(self._sql.version, name, version)
        if not rows:
            what = "has no versions" if version is None else f"has no version {version}"
            raise NotFound(f"resource {name!r} {what}")
        return _version(rows[0])

    async def open(
        self,
        name: str,
        version: int | None = None,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> Download:
        """The bytes of version ``version`` of ``name`` (the latest when None), from
        ``offset`` for ``length`` bytes (to the end when None): a ``Download``
        (``download.info`` is the version; iterate it for the bytes, in chunks).
        ``BadRange`` for a range outside the version, ``BlobMissing`` when its file
        is gone. Close a download not read to its end (``async with``)."""
        info = await self.info(name, version)
        loc = self.locations.get(info.location)
        if loc is None:
            raise LocationUnavailable(
                f"version {info.version} of {name!r} is in storage location "
                f"{info.location!r}, which this vault is not configured with"
            )
        await self._use(loc)
        try:
            return await Download.open(loc, info, offset, length)
        except FileNotFoundError as exc:
            raise BlobMissing(
                f"the file of version {info.version} of {name!r} ({info.sha256}) is missing "
                f"from storage location {loc.name!r}; run fsck"
            ) from exc
        except OSError as exc:
            raise _disk.unavailable(loc, "read", loc.blob_path(info.sha256), exc) from exc

    async def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name`` that is not deleted, oldest first (``NotFound``
        when the resource does not exist or was deleted)."""
        name = validate_name(name)
        async with self.store.transaction() as tx:
            rows = await tx.fetch(self._sql.versions, name)
            if not rows and await tx.fetchval(self._sql.resource_id, name) is None:
                raise NotFound(f"no resource named {name!r}")
        return [_version(r) for r in rows]

    async def list(self, limit: int = 100, after: str | None = None) -> ResourcePage:
        """Live resources by name, at most ``limit`` (1-1000), after the name
        ``after`` (the previous page's ``next``)."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1-{MAX_PAGE}, got {limit!r}")
        if after is not None and not isinstance(after, str):
            raise ValueError(f"after is the cursor of a page (a str), got {after!r}")
        cursor = "" if after is None else after
        async with self.store.transaction() as tx:
            rows = await tx.fetch(self._sql.resources, cursor, limit + 1)
        page = [
            ResourceInfo(
                name=r[0],
                versions=int(r[1]),
                latest=None if r[2] is None else int(r[2]),
                size=None if r[3] is None else int(r[3]),
                created_at=float(r[4]),
                metadata=msgspec.json.decode(r[5], type=dict[str, str]),
            )
            for r in rows[:limit]
        ]
        return ResourcePage(resources=page, next=page[-1].name if len(rows) > limit else None)

    async def stats(self) -> VaultStats:
        """Counts of resources, versions, blobs, bytes and pending sweeps."""
        async with self.store.read() as tx:
            row = (await tx.fetch(self._sql.stats))[0]
        return VaultStats(
            resources=int(row[0]),
            versions=int(row[1]),
            blobs=int(row[2]),
            bytes=int(row[3]),
            pending_sweeps=int(row[4]),
        )

    # -- delete and sweep ------------------------------------------------------------

    async def delete(self, name: str, version: int | None = None) -> None:
        """Delete version ``version`` of ``name``, or the whole resource when None
        (its versions go with it; a later ``put`` starts it again, numbering on).
        Returns once committed; the files go later, by the sweep job enqueued in the
        same transaction. ``NotFound`` if there is nothing to delete."""
        name = validate_name(name)
        if version is not None and (not isinstance(version, int) or not 1 <= version < 2**63):
            raise NotFound(f"version must be a number from 1, got {version!r}")
        if self.domain is not None:
            found = await self.domain.ask(
                name, _Delete(name=name, version=version), timeout=self.commit_timeout
            )
        else:
            found = await self._delete(name, version)
        if not found:
            what = "" if version is None else f" has no version {version} and"
            raise NotFound(f"resource {name!r}{what} was not found (nothing was deleted)")

    async def _delete(self, name: str, version: int | None) -> bool:
        sql = self._sql
        now = time.time()
        async with self.store.transaction() as tx:
            await self._fence(tx, name)
            resource = await tx.fetchval(sql.lock_resource, name)
            if resource is None:
                return False
            marked: list[int] = []
            if version is not None:
                rows = await tx.fetch(sql.delete_version, resource, version, now)
                if not rows:
                    return False
                blob = rows[0][0]
                if (await tx.fetch(sql.release_blob, blob, now))[0][0] == 0:
                    marked.append(int(blob))
            else:
                if sql.lock_resource_blobs:
                    await tx.execute(sql.lock_resource_blobs, resource)
                rows = await tx.fetch(sql.release_resource_blobs, resource, now)
                marked = sorted(int(r[0]) for r in rows if r[1] == 0)
                await tx.execute(sql.delete_resource_versions, resource, now)
                await tx.execute(sql.delete_resource, resource, now)
            if marked:
                await self.store.enqueue(SweepBlobs(blobs=marked), tx=tx, delay=self.grace)
        return True

    async def _sweep_job(self, job: SweepBlobs, ctx: JobContext[Any]) -> None:
        await self.attach()  # never inside a blob's transaction: it uses the store
        wait = 0.0
        for blob in job.blobs:
            _, left = await self._sweep_blob(blob)
            wait = max(wait, left)
        if wait > 0:
            raise Snooze(wait)

    async def _sweep_blob(self, blob: int) -> tuple[bool, float]:
        """Remove blob ``blob`` (row and file) if no version references it and it was
        marked at least ``grace`` seconds ago. Returns whether it was removed, and
        the seconds left until it is due (0 when it is not waiting).

        The file is removed inside the transaction that holds the blob's row (locked
        on PostgreSQL, under the write lock on SQLite). An upload of the same bytes
        takes that row in its own transaction and then makes sure the file exists
        (linking its temp file again if not) before it commits: whichever comes
        first, a committed version always has its file. If this transaction fails
        after the file is gone, the row stays marked and a retry finishes it."""
        sql = self._sql
        now = time.time()
        async with self.store.transaction() as tx:
            rows = await tx.fetch(sql.lock_blob, blob)
            if not rows:
                return False, 0.0
            location, sha256, refs, marked_at = rows[0]
            if refs > 0 or marked_at is None:
                return False, 0.0  # referenced again since it was marked
            due = float(marked_at) + self.grace
            if due > now:
                return False, due - now
            loc = self.locations.get(location)
            if loc is None:
                # Another process's location (a daemon with a further location this
                # one lacks): left marked, for its sweep_due to remove.
                log.debug("sweep left to a vault with its location", blob=sha256, location=location)
                return False, 0.0
            await tx.execute(sql.purge_versions, blob)
            await tx.execute(sql.purge_blob, blob)
            await anyio.to_thread.run_sync(_disk.remove, loc, loc.blob_path(sha256))
        return True, 0.0

    async def sweep_due(self, *, limit: int = 1000) -> int:
        """Sweep now the blobs (at most ``limit``) whose grace period has passed, as
        their sweep jobs will; returns how many were removed."""
        await self.attach()
        names = list(self.locations)
        arg: object = (
            names if self.store.backend == "postgres" else msgspec.json.encode(names).decode()
        )
        async with self.store.transaction() as tx:
            rows = await tx.fetch(self._sql.due_sweeps, time.time() - self.grace, limit, arg)
        swept = 0
        for (blob,) in rows:
            removed, _ = await self._sweep_blob(int(blob))
            swept += removed
        return swept

    # -- fsck ------------------------------------------------------------------------

    async def fsck(self, *, repair: bool = False) -> FsckReport:
        """Reconcile the locations with the database: remove temp files older than
        the grace period; report blobs whose file is missing and the versions that
        point at them (``repair``: mark those versions damaged; a new upload of the
        same bytes heals them); remove blob files without a row once older than the
        grace period (through the sweep, so that a concurrent upload keeps its
        file); sweep blobs whose grace period has passed. Safe to run while the
        vault is in use, from any process."""
        await self.attach()
        return await fsck(self, repair=repair)

    async def attach(self) -> None:
        """Check now that each location's folder is the one the store knows under its
        name, recording the ones it does not know yet (their folders made if
        missing): ``LocationMismatch`` names a folder that is not. Every operation
        does this for the locations it touches the first time; a daemon does it at
        start, so that a wrong folder fails the start."""
        for loc in self.locations.values():
            await self._use(loc)

    # -- helpers ---------------------------------------------------------------------

    async def _use(self, loc: Location) -> None:
        """Prepare and attach ``loc`` once (see ``attach``)."""
        if loc.name in self._attached:
            return
        async with self._attaching:
            if loc.name in self._attached:
                return
            await anyio.to_thread.run_sync(_disk.prepare, loc)
            await attach(self.store, loc)
            self._attached.add(loc.name)

    def _location(self, name: str | None) -> Location:
        if name is None:
            return self.default_location
        loc = self.locations.get(name)
        if loc is None:
            raise ConfigurationError(
                f"no storage location named {name!r}; this vault has "
                + ", ".join(repr(n) for n in self.locations)
            )
        return loc


def _version(row: tuple[Any, ...]) -> VersionInfo:
    return VersionInfo(
        resource=row[0],
        version=int(row[1]),
        sha256=row[2],
        size=int(row[3]),
        location=row[4],
        created_at=float(row[5]),
        state=row[6],
    )


class _SourceFailed(Exception):
    """An item's own chunks raised (its ``__cause__``): that item's failure."""


async def _source(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        raise _SourceFailed() from exc


async def _slices(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise ValueError(f"expected_sha256 must be 64 hex digits, got {value!r}")
    return value.lower()


def _encode_metadata(metadata: Mapping[str, str] | None) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("metadata must map str to str")
    try:
        text = msgspec.json.encode(dict(metadata)).decode()
    except (msgspec.EncodeError, UnicodeEncodeError) as exc:
        raise ValueError(f"metadata cannot be stored: {exc}") from exc
    if "\\u0000" in text:
        raise ValueError("metadata must not contain NUL characters")
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is over {MAX_METADATA_BYTES} bytes of JSON")
    return text
