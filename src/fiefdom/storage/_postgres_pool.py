"""PostgreSQL's connection pool: the pooled connection that skips asyncpg's session
reset, acquires counted into ``PoolStatistics``, transactions on a pooled connection,
and asyncpg's errors as ``StoreError``. ``PostgresStore`` is built on ``PostgresPool``."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._durations import Durations, StoreTimes
from .._errors import StoreError, StoreUnavailable
from .._log import get_logger
from ._store import Store, Transaction, read_only_write

log = get_logger("fiefdom.storage.postgres")

if TYPE_CHECKING:
    Conn: TypeAlias = PoolConnectionProxy[Any]
PING_EVERY = 5.0

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InterfaceError,
    # Raised when a connection the server dropped is used mid-protocol.
    asyncpg.exceptions.InternalClientError,
)


DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *_CONNECTION_ERRORS)

CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *DRIVER_ERRORS)


async def close_gracefully(
    closeable: asyncpg.Pool[Any] | asyncpg.Connection[Any], within: float
) -> None:
    """Close a pool or a connection, shielded from cancellation: one that does not
    close within ``within`` seconds, or fails to, is terminated."""
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(within):
                await closeable.close()
        except CLOSE_ERRORS:
            closeable.terminate()


def wrap(exc: BaseException, url: str) -> StoreError:
    if isinstance(exc, _CONNECTION_ERRORS):
        return StoreUnavailable(f"PostgreSQL at {url} is unavailable: {exc!r}")
    return StoreError(f"PostgreSQL: {exc}")


def _safe_url(url: str) -> str:
    """The URL without its password (it ends up in logs and errors)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _PooledConnection(asyncpg.Connection):
    """A pooled connection that skips asyncpg's session reset on release (advisory
    unlock, CLOSE ALL, UNLISTEN, RESET ALL: a round trip on every release) unless an
    application's transaction ran on it. The store's own statements leave no session
    state: no SET, no session advisory lock, no cursor, no LISTEN (notifications have
    a connection of their own). An open transaction is rolled back on release either
    way (asyncpg always does that)."""

    _fiefdom_reset = False

    def needs_reset(self) -> None:
        self._fiefdom_reset = True

    def get_reset_query(self) -> str:
        if self._fiefdom_reset:
            self._fiefdom_reset = False
            return str(super().get_reset_query())
        return ""


class PostgresTransaction(Transaction):
    def __init__(self, store: PostgresPool, conn: Conn, *, read_only: bool = False) -> None:
        self.store = store
        self.conn = conn
        self.read_only = read_only

    async def execute(self, sql: str, *args: object) -> None:
        try:
            await self.conn.execute(sql, *args)
        except DRIVER_ERRORS as exc:
            raise self._error(exc, sql) from exc

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in await self.conn.fetch(sql, *args)]
        except DRIVER_ERRORS as exc:
            raise self._error(exc, sql) from exc

    def _error(self, exc: BaseException, sql: str) -> StoreError:
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            words = sql.split(maxsplit=1)
            statement = words[0].upper() if words else "the statement"
            return read_only_write(statement, f"PostgreSQL: {exc}")
        return wrap(exc, self.store.url)


# Upper bounds (seconds) of the acquire-time histogram's buckets.
ACQUIRE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A PostgreSQL store's connection pool: its size, the connections in use, the
    callers waiting for one, and how long getting one took (``acquire_times``, over
    ``ACQUIRE_BUCKETS``)."""

    max_size: int
    size: int
    in_use: int
    waiting: int
    acquire_times: StoreTimes

    @property
    def acquires(self) -> int:
        return self.acquire_times.count


class PostgresPool(Store):
    """A store on an asyncpg pool (``PostgresStore``): opening and closing the pool,
    getting a connection from it, one operation or one transaction on that connection,
    every driver error raised as ``StoreError`` (``StoreUnavailable`` when the database
    cannot be reached)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        pool_min_size: int = 1,
        statement_timeout: float | None = None,
        tune_gc: bool = True,
    ) -> None:
        super().__init__(_safe_url(url), tune_gc=tune_gc)
        if pool_size < 2:
            raise StoreError(f"pool_size must be at least 2, got {pool_size}")
        if not 0 <= pool_min_size <= pool_size:
            raise StoreError(
                f"pool_min_size must be 0 to pool_size ({pool_size}), got {pool_min_size}"
            )
        if statement_timeout is not None and not statement_timeout > 0:
            raise StoreError(f"statement_timeout must be positive seconds, got {statement_timeout}")
        self._dsn = url
        self._pool_size = pool_size
        self._pool_min_size = pool_min_size
        self._statement_timeout = statement_timeout
        self._pool: asyncpg.Pool[Any] | None = None
        self._settings: dict[str, str] = {}
        # The lane: a connection of the store's own, outside the pool, for one
        # operation at a time that runs no transaction of its own (an enqueue):
        # the pool's acquire and release take about as much of the client's CPU as
        # the INSERT (a single enqueue about 110 us with them, 60 us without). A
        # caller that finds it busy takes the pool. It is one of pool_size: the
        # pool opens at most pool_size - 1, so that the store never holds more
        # connections than it was given.
        self._lane: asyncpg.Connection[Any] | None = None
        self._lane_busy = False
        self._waiting = 0  # callers waiting for a pooled connection
        self._acquire_times = Durations(ACQUIRE_BUCKETS)

    def pool_statistics(self) -> PoolStatistics:
        """The connection pool now (what ``/metrics`` exposes)."""
        pool = self._pool
        size = 0 if pool is None else pool.get_size()
        idle = 0 if pool is None else pool.get_idle_size()
        in_use = max(0, size - idle)
        lane = self._lane
        if lane is not None and not lane.is_closed():  # counted as one of pool_size
            size += 1
            in_use += self._lane_busy
        return PoolStatistics(
            max_size=self._pool_size,
            size=size,
            in_use=in_use,
            waiting=self._waiting,
            acquire_times=self._acquire_times.snapshot(),
        )

    # -- lifecycle -------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            settings = self._settings
            if self._statement_timeout is not None:
                # In milliseconds: PostgreSQL cancels a statement running longer.
                settings["statement_timeout"] = str(max(1, round(self._statement_timeout * 1000)))
            self._pool = await asyncpg.create_pool(
                self._dsn,
                # The lane is the last of pool_size (pool_size is at least 2).
                min_size=min(self._pool_min_size, self._pool_size - 1),
                max_size=self._pool_size - 1,
                connection_class=_PooledConnection,
                server_settings=settings or None,
            )
        except DRIVER_ERRORS as exc:
            raise wrap(exc, self.url) from exc

    async def _disconnect(self) -> None:
        if self._lane is not None:
            if self._lane_busy:  # a statement in flight: it fails as the store closes
                self._lane.terminate()
            await self._retire_lane(self._lane)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await close_gracefully(pool, 10)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Conn]:
        self._check_open()
        assert self._pool is not None
        began = time.monotonic()
        self._waiting += 1
        try:
            conn = await self._pool.acquire()
        except DRIVER_ERRORS as exc:
            self._mark(False)
            raise wrap(exc, self.url) from exc
        finally:
            self._waiting -= 1
        self._acquire_times.observe(time.monotonic() - began)
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._pool.release(conn)
                except DRIVER_ERRORS:
                    # Resetting a connection the server dropped fails; the pool has
                    # already discarded it and opens a new one when needed.
                    self._mark(False)
                    log.warning("a broken connection was dropped from the pool", url=self.url)

    async def _run(self, fn: Callable[[Conn], Any]) -> Any:
        """Run one operation on a pooled connection, wrapping driver errors."""
        async with self._acquire() as conn:
            try:
                result = await fn(conn)
            except DRIVER_ERRORS as exc:
                if isinstance(exc, _CONNECTION_ERRORS):
                    self._mark(False)
                raise wrap(exc, self.url) from exc
        self._mark(True)
        return result

    async def _run_lane(self, fn: Callable[[Conn], Any]) -> Any:
        """``_run`` on the lane when it is free; ``fn`` must leave no transaction
        open. After an error the server reported (the connection then waits for its
        next statement) the lane stays; after any other failure (a cancelled
        statement, a lost connection, a COPY cut short) it is closed as the pool
        closes a broken connection (a cancelled statement is cancelled on the
        server first), and the next call opens another."""
        if self._lane_busy:
            return await self._run(fn)
        self._check_open()
        self._lane_busy = True
        try:
            lane = self._lane
            if lane is None or lane.is_closed():
                try:
                    lane = self._lane = await asyncpg.connect(
                        self._dsn, server_settings=self._settings or None
                    )
                except DRIVER_ERRORS:
                    lane = None  # the pool's connection says what is wrong
                if lane is not None and self._pool is None:  # closed meanwhile
                    lane.terminate()
                    lane = self._lane = None
            if lane is None:
                return await self._run(fn)
            try:
                result = await fn(cast("Conn", lane))
            except BaseException as exc:
                kept = isinstance(exc, asyncpg.PostgresError) and not isinstance(
                    exc, _CONNECTION_ERRORS
                )
                if not kept or lane.is_in_transaction():
                    await self._retire_lane(lane)
                if isinstance(exc, DRIVER_ERRORS):
                    if isinstance(exc, _CONNECTION_ERRORS):
                        self._mark(False)
                    raise wrap(exc, self.url) from exc
                raise
            if lane.is_in_transaction():  # fn broke its contract: not reused
                await self._retire_lane(lane)
        finally:
            self._lane_busy = False
        self._mark(True)
        return result

    async def _retire_lane(self, lane: asyncpg.Connection[Any]) -> None:
        if self._lane is lane:
            self._lane = None
        await close_gracefully(lane, 10)

    @asynccontextmanager
    async def _tx(
        self, *, application: bool = False, read_only: bool = False
    ) -> AsyncIterator[PostgresTransaction]:
        async with self._acquire() as conn:
            if application:
                # Its statements are the application's (a SET, say): reset the session
                # when the connection goes back to the pool.
                # (The pool's proxy forwards to its _PooledConnection.)
                cast(_PooledConnection, conn).needs_reset()
            if read_only:
                # One snapshot for all its statements, as SQLite's WAL reads have
                # (a read-only transaction never fails to serialize).
                transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            else:
                transaction = conn.transaction()
            # Entered and left as a context manager, not with start() and commit():
            # a BEGIN cancelled in flight then leaves a transaction the pool's reset
            # rolls back quietly, instead of one it reports as an error of the loop.
            try:
                await transaction.__aenter__()
            except DRIVER_ERRORS as exc:
                self._mark(False)
                raise wrap(exc, self.url) from exc
            tx = PostgresTransaction(self, conn, read_only=read_only)
            try:
                yield tx
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    try:
                        await transaction.__aexit__(type(exc), exc, exc.__traceback__)
                    except _CONNECTION_ERRORS as lost:
                        # The connection is gone, and the transaction with it: the
                        # server rolled it back. The error being raised says why.
                        log.debug(
                            "rollback skipped: connection lost",
                            url=self.url,
                            error=str(lost) or type(lost).__name__,
                        )
                    except DRIVER_ERRORS as failed:
                        log.warning(
                            "rollback failed",
                            url=self.url,
                            error=str(failed) or type(failed).__name__,
                        )
                raise
            else:
                # Shielded: once we start the COMMIT we wait for its answer.
                with anyio.CancelScope(shield=True):
                    try:
                        await transaction.__aexit__(None, None, None)
                    except DRIVER_ERRORS as exc:
                        self._mark(not isinstance(exc, _CONNECTION_ERRORS))
                        raise wrap(exc, self.url) from exc
        self._mark(True)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._tx(application=True)

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        return self._tx(application=True, read_only=True)
