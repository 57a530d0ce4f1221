"""The ``Store`` interface both backends implement, its lifecycle, and
``open_store(url)`` which picks the backend from the URL's scheme (loaded lazily,
so an embedded SQLite user never imports asyncpg)."""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from .._errors import (
    ConfigurationError,
    LifecycleError,
    StaleOwner,
    StoreError,
    StoreNotOpen,
)
from .._gc import gc_threshold, raise_threshold
from .._lifecycle import Lifecycle, State, StopMode
from ._jobs import Enqueued, Job, JobInfo, JobState, QueueCount
from ._rows import NewJob, prepare, prepare_many

# At most this many jobs are counted for a listing's total, and changed by one bulk
# retry or prune: each stays one bounded statement, and says when more are left.
COUNT_CAP = 100_000
BULK_LIMIT = 100_000
FINAL_STATES = (JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED)

SCHEMA_VERSION = 15
"""The schema version this code reads and writes."""


StoreState = State
"""A store's lifecycle is the shared one (``fiefdom.State``)."""


class Transaction(abc.ABC):
    """A database transaction (``async with store.transaction() as tx``, or read-only
    ``async with store.read() as tx``).

    SQL uses PostgreSQL's ``$1, $2`` placeholders on both backends, so an
    application's outbox code is written once. Pass ``tx=tx`` to ``enqueue`` to
    make the job part of the transaction: it exists only if the transaction commits.
    """

    store: Store
    read_only: bool = False
    """Whether it came from ``store.read()``: a write in it raises StoreError."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: object) -> None: ...

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]: ...

    async def fetchval(self, sql: str, *args: object) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None


class Notifications(abc.ABC):
    """Callbacks the store calls when jobs may be claimable (``on_jobs(queue)``),
    a running job was asked to cancel (``on_cancel(job_id)``), or a queue was paused
    or resumed (``on_paused(queue, paused)``)."""

    @abc.abstractmethod
    def on_jobs(self, queue: str) -> None: ...

    @abc.abstractmethod
    def on_cancel(self, job_id: int) -> None: ...

    @abc.abstractmethod
    def on_paused(self, queue: str, paused: bool) -> None: ...


class Store(abc.ABC):
    """A database that holds fiefdom's tables. Open it with ``async with
    open_store(url) as store``. The job methods below ``enqueue`` are the
    engine's; applications enqueue, inspect and administer jobs."""

    backend: Literal["sqlite", "postgres"]
    notifies_processes: bool
    """Whether ``listen`` delivers other processes' changes (PostgreSQL's NOTIFY).
    Without it, an engine polls what it must learn (paused queues) on its
    maintenance round."""

    def __init__(self, url: str, *, tune_gc: bool = True) -> None:
        self.url = url
        self._life = Lifecycle(f"store {url}", "use 'async with open_store(url) as store'")
        self._healthy = False
        self._subscribers: list[Notifications] = []
        self._tune_gc = tune_gc
        self._release_gc: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._life.state

    @property
    def healthy(self) -> bool:
        """Whether the last operation reached the database (``/readyz`` uses it)."""
        return self._life.state is State.RUNNING and self._healthy

    def _mark(self, healthy: bool) -> None:
        self._healthy = healthy

    async def open(self, *, migrate: bool = False, check_schema: bool = True) -> None:
        """Connect (and ``migrate`` first if asked); refuses a schema it does not
        know unless ``check_schema`` is False. A store opens once."""
        self._life.begin_start()
        try:
            await self._connect()
        except BaseException:
            self._life.stopped()
            raise
        self._life.started()
        self._healthy = True
        # While open, the collector's youngest threshold is raised as a running
        # actor system raises it (fiefdom._gc): with the interpreter's 700, its young
        # collections took a sixth of a 20,000-job batch enqueue (docs/performance.md,
        # "The garbage collector settings").
        self._release_gc = raise_threshold(gc_threshold() if self._tune_gc else None)
        try:
            if migrate:
                await self.migrate()
            if check_schema:
                await self.check_schema()
        except BaseException:
            await self.close()
            raise

    async def start(self) -> None:
        """``open()`` with its defaults: the lifecycle every component shares."""
        await self.open()

    async def close(self) -> None:
        """Disconnect; a store never opened is marked closed at once."""
        if self._life.begin_stop():
            try:
                await self._disconnect()
            finally:
                release, self._release_gc = self._release_gc, None
                if release is not None:
                    release()
                self._life.stopped()

    async def stop(self, mode: StopMode = "drain") -> None:
        """``close()``: a store has no work of its own to drain (every mode)."""
        await self.close()

    async def __aenter__(self) -> Store:
        if self._life.state is State.NEW:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._life.state is not State.RUNNING:
            try:
                self._life.check_running("use the store")
            except LifecycleError as exc:
                raise StoreNotOpen(str(exc)) from None

    async def check_schema(self) -> None:
        from .._errors import SchemaMismatch

        found = await self.schema_version()
        if found == SCHEMA_VERSION:
            return
        if found < SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the database at {self.url} has schema version {found} and this fiefdom "
                f"needs {SCHEMA_VERSION}: run 'fiefdom migrate --store {self.url}' "
                "(or 'await store.migrate()') before starting workers"
            )
        raise SchemaMismatch(
            f"the database at {self.url} has schema version {found}, newer than the "
            f"{SCHEMA_VERSION} this fiefdom knows: upgrade fiefdom on this machine "
            "(migrations never run backwards)"
        )

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> int:
        """Apply the migrations this code has and the database lacks; returns the
        version now in place. Safe to run from several processes at once."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The version of the schema in the database (0 for an empty one)."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction; commits on a clean exit and rolls back on an exception."""

    @abc.abstractmethod
    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-only transaction, for an application's reads of its own tables:
        ``async with store.read() as tx: rows = await tx.fetch(...)``, with the same
        ``execute``/``fetch``/``fetchval`` as ``transaction()``.

        Its statements see one snapshot of the database, and it takes no write lock,
        so it never waits for a writer (nor makes one wait). A write in it (an
        INSERT, ``enqueue(tx=tx)``) raises StoreError saying so. On SQLite it runs on
        a read-only connection of its own (``query_only``), one such transaction at a
        time per store; on PostgreSQL it is ``BEGIN ISOLATION LEVEL REPEATABLE READ
        READ ONLY`` on a pooled connection."""

    async def ping(self) -> bool:
        """Read the schema version; updates and returns ``healthy``. Read-only: it
        takes no write lock, so a readiness probe never waits behind a writer (nor
        makes one wait)."""
        try:
            await self.schema_version()
        except StoreError:
            return False
        return self.healthy

    # -- notifications ---------------------------------------------------------------

    def _subscribe(self, subscriber: Notifications) -> Callable[[], None]:
        """Deliver wake-ups from this process's own writes to ``subscriber``;
        returns the function that ends the subscription."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def _wake_local(self, queues: Sequence[str]) -> None:
        for sub in list(self._subscribers):
            for q in queues:
                sub.on_jobs(q)

    def _cancel_local(self, job_id: int) -> None:
        for sub in list(self._subscribers):
            sub.on_cancel(job_id)

    def _paused_local(self, queue: str, paused: bool) -> None:
        for sub in list(self._subscribers):
            sub.on_paused(queue, paused)

    # -- enqueueing ------------------------------------------------------------------

    async def enqueue(
        self,
        job: Job,
        *,
        tx: Transaction | None = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        max_attempts: int | None = None,
    ) -> Enqueued:
        """Insert one job (inside ``tx`` when given: it exists only if tx commits)."""
        row = prepare(
            job,
            now=time.time(),
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            max_attempts=max_attempts,
        )
        return (await self._insert_rows([row], tx=tx))[0]

    async def enqueue_many(
        self,
        jobs: Sequence[Job],
        *,
        tx: Transaction | None = None,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        all_or_nothing: bool = False,
    ) -> list[Enqueued]:
        """Insert many jobs in one statement; one result per job, in order.

        An invalid item (bad arguments, a delay out of range) gets a result with
        its ``error`` and is not enqueued; the others are. With
        ``all_or_nothing=True`` one invalid item raises ``ValueError`` naming it
        and nothing is enqueued."""
        rows = prepare_many(
            jobs, now=time.time(), queue=queue, priority=priority, run_at=run_at, delay=delay
        )
        valid = [r for r in rows if isinstance(r, NewJob)]
        if len(valid) == len(rows):  # every item valid: the results as they are
            return await self._insert_rows(valid, tx=tx) if valid else []
        if all_or_nothing:
            index, exc = next((i, r) for i, r in enumerate(rows) if not isinstance(r, NewJob))
            raise ValueError(f"enqueue_many: item {index}: {exc}; nothing was enqueued") from exc
        inserted = iter(await self._insert_rows(valid, tx=tx) if valid else [])
        return [
            next(inserted)
            if isinstance(r, NewJob)
            else Enqueued(id=None, duplicate=False, error=str(r))
            for r in rows
        ]

    async def check_owner(self, tx: Transaction, partition: int, epoch: int) -> None:
        """Raise ``StaleOwner`` unless ``partition`` is still owned under ``epoch``,
        and keep it so until ``tx`` ends: on PostgreSQL the partition's row is locked
        (a takeover passes it over until the commit; the owner's renewals go on), on
        SQLite the transaction holds the database's one write lock from its first
        statement on (keep such transactions short)."""
        self._check_tx(tx, "check_owner(tx, ...)")
        # FOR KEY SHARE: the owner's renewals go on, a takeover (FOR UPDATE) skips the
        # partition. (A SQLite transaction's first statement is its BEGIN IMMEDIATE.)
        lock = " FOR KEY SHARE" if self.backend == "postgres" else ""
        current = await tx.fetchval(
            f"SELECT epoch FROM fiefdom_partitions WHERE partition = $1{lock}", partition
        )
        if current != epoch:
            raise StaleOwner(partition, epoch, current)

    def _check_tx(self, tx: Transaction | None, what: str = "enqueue(tx=...)") -> None:
        if tx is not None and tx.store is not self:
            raise StoreError(
                "enqueue(tx=...) got a transaction of another store: "
                "open the transaction on the store you enqueue into"
            )
        if tx is not None and tx.read_only:
            raise read_only_write(what)

    @staticmethod
    def _match_inserted(
        rows: Sequence[NewJob],
        inserted: Sequence[tuple[int, bytes | None]],
        existing: dict[bytes, int],
    ) -> list[Enqueued]:
        # Ids grow in insertion order, so sorted ids line up with the rows that
        # were inserted; unique rows are matched by key instead.
        if not existing and len(inserted) == len(rows) and all(k is None for _, k in inserted):
            return [Enqueued(id=id_, duplicate=False) for id_ in sorted(i for i, _ in inserted)]
        by_key = {key: id_ for id_, key in inserted if key is not None}
        existing = {**existing, **by_key}  # a later row may duplicate an earlier one
        plain = iter(sorted(id_ for id_, key in inserted if key is None))
        out: list[Enqueued] = []
        for row in rows:
            if row.unique_key is None:
                out.append(Enqueued(id=next(plain), duplicate=False))
            elif row.unique_key in by_key:
                out.append(Enqueued(id=by_key.pop(row.unique_key), duplicate=False))
            else:
                out.append(Enqueued(id=existing.get(row.unique_key), duplicate=True))
        return out

    @abc.abstractmethod
    async def _insert_rows(
        self, rows: Sequence[NewJob], *, tx: Transaction | None = None
    ) -> list[Enqueued]:
        """Insert prepared rows in one statement (per chunk on SQLite)."""

    # -- administration --------------------------------------------------------------

    @abc.abstractmethod
    async def get_job(self, job_id: int) -> JobInfo | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[JobInfo]:
        """Jobs matching the filters (``key``: the job's domain key; ``since``:
        created at or after it), by id, starting after ``after_id`` (paging). With
        ``newest_first`` the ids go down, and ``after_id`` (when not 0) is the last
        id of the page before: the jobs listed are those below it."""

    @abc.abstractmethod
    async def count_listed(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        cap: int = COUNT_CAP,
    ) -> int:
        """How many jobs ``list_jobs`` with these filters has in all pages, counted
        up to ``cap`` (a result equal to ``cap`` means at least that many)."""

    @abc.abstractmethod
    async def count_jobs(self) -> list[QueueCount]:
        """How many jobs each queue has in each state (states with none are left out)."""

    @abc.abstractmethod
    async def retry_job(self, job_id: int) -> bool:
        """Make a discarded, cancelled or completed job available again, with one
        more attempt if it had used them all and its snooze count back at 0. False
        if it is not in such a state.

        A unique job takes its unique key back when its kind counts the available
        state; if a duplicate enqueued since holds the key, the job is left as it
        is and UniqueConflict names that duplicate."""

    @abc.abstractmethod
    async def retry_jobs(
        self,
        *,
        state: JobState,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = BULK_LIMIT,
    ) -> tuple[int, int]:
        """``retry_job`` for the jobs in ``state`` (discarded, cancelled or
        completed) of ``queue`` and ``kind``, oldest first, at most ``limit``, in one
        transaction. Returns how many were retried and how many were skipped
        because a duplicate enqueued since holds their unique key."""

    @abc.abstractmethod
    async def prune_jobs(
        self,
        *,
        older_than: float,
        states: Sequence[JobState] = FINAL_STATES,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = BULK_LIMIT,
    ) -> int:
        """Delete jobs in ``states`` (final ones) that finished more than
        ``older_than`` seconds ago, at most ``limit`` of them, in one statement;
        returns how many were deleted."""

    # -- queue state -----------------------------------------------------------------

    async def pause_queue(self, queue: str) -> None:
        """Pause ``queue`` for every engine on this database (running jobs go on);
        it stays paused across restarts until ``resume_queue``."""
        _check_queue_name(queue)
        await self._set_paused(queue, True)
        self._paused_local(queue, True)

    async def resume_queue(self, queue: str) -> None:
        """Let every engine on this database claim from ``queue`` again."""
        _check_queue_name(queue)
        await self._set_paused(queue, False)
        self._paused_local(queue, False)

    @abc.abstractmethod
    async def _set_paused(self, queue: str, paused: bool) -> None: ...

    @abc.abstractmethod
    async def paused_queues(self) -> set[str]:
        """The queues paused on this database."""

    @abc.abstractmethod
    async def cancel_job(self, job_id: int) -> JobState | None:
        """Cancel a job: a waiting one ends cancelled at once; a running one is asked
        to stop (its engine cancels the handler). Returns its state afterwards, or
        None if there is no such job."""


def read_only_write(what: str, detail: str = "") -> StoreError:
    """The error of a write attempted in ``store.read()`` (``detail``: the database's
    own words)."""
    return StoreError(
        f"{what} cannot run in a read-only transaction (store.read()): "
        "write inside store.transaction() instead" + (f" ({detail})" if detail else "")
    )


def _check_queue_name(queue: str) -> None:
    if not isinstance(queue, str) or not 1 <= len(queue) <= 200:
        raise ConfigurationError(f"queue must be a name of 1-200 characters, got {queue!r}")


def check_bulk(
    *, states: Sequence[JobState], older_than: float | None = None, limit: int | None = None
) -> None:
    """Refuse (ValueError naming it) what a bulk retry or prune cannot take: a state
    that is not final, an age that is negative or not a finite number, a limit
    below 1."""
    for state in states:
        if state not in FINAL_STATES:
            raise ValueError(
                f"state must be one of {', '.join(s.value for s in FINAL_STATES)}, got {state}"
            )
    if older_than is not None and not (math.isfinite(older_than) and older_than >= 0):
        raise ValueError(f"older_than must be a finite number of seconds >= 0, got {older_than}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
