"""``open_store(url)`` picks the dialect from the URL's scheme (loaded lazily, so an
embedded SQLite user never imports asyncpg); ``engine_queries(store)`` gives the
job engine its port into that store."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from .._errors import StoreError
from ._queries import EngineQueries, Leases
from ._store import Store


def open_store(
    url: str,
    *,
    synchronous: Literal["off", "normal", "full", "extra"] = "full",
    pool_size: int = 10,
    tune_gc: bool = True,
) -> Store:
    """A store for ``url``: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``postgresql://user@host:port/db``. Use it as ``async with open_store(url) as
    store`` (or ``await store.open(migrate=True)`` to migrate on the way).

    ``synchronous`` is SQLite's setting in WAL mode: ``full`` (the default) makes
    every commit durable at a power loss; ``normal`` may lose the last commits then
    (never corrupts). ``pool_size`` is the number of PostgreSQL connections
    the store opens at most (one of them for enqueues outside a transaction; the job
    engine's notifications take one more).

    While the store is open, Python's garbage collector runs its young collections
    after 10,000 net allocations instead of 700, as while an ``ActorSystem`` runs
    (``fiefdom._gc``): with the interpreter's threshold they took a sixth of a large
    batch enqueue. ``tune_gc=False``, or ``FIEFDOM_GC=default`` in the environment,
    leaves the collector alone."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore

        return SQLiteStore(url, synchronous=synchronous, tune_gc=tune_gc)
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, tune_gc=tune_gc)
    raise StoreError(
        f"unsupported store URL {url!r}: use sqlite:///path/to/file.db "
        "or postgresql://user@host:port/database"
    )


def engine_queries(store: Store) -> EngineQueries:
    """The engine-side queries of ``store`` (only ``fiefdom.jobs`` calls this)."""
    if store.backend == "sqlite":
        from ._sqlite import SQLiteStore
        from ._sqlite_queries import SQLiteQueries

        assert isinstance(store, SQLiteStore)
        return SQLiteQueries(store)
    from ._postgres import PostgresStore
    from ._postgres_queries import PostgresQueries

    assert isinstance(store, PostgresStore)
    return PostgresQueries(store)


def leases(store: Store) -> Leases:
    """The cluster's lease statements on ``store`` (only ``fiefdom.cluster`` calls this)."""
    if store.backend == "sqlite":
        from ._sqlite import SQLiteStore
        from ._sqlite_leases import SQLiteLeases

        assert isinstance(store, SQLiteStore)
        return SQLiteLeases(store)
    from ._postgres import PostgresStore
    from ._postgres_leases import PostgresLeases

    assert isinstance(store, PostgresStore)
    return PostgresLeases(store)
