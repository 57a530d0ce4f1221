"""The storage entry points the daemon uses, in one place (so that the daemon and
the command line open the store the same way)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..storage import SCHEMA_VERSION, Store, open_store
from ._config import StoreSection

__all__ = ["SCHEMA_VERSION", "Store", "open_configured_store", "open_store"]


def open_configured_store(url: str, settings: StoreSection) -> Store:
    """The store at ``url`` (not yet open), with ``[store]``'s pool settings when it
    is PostgreSQL."""
    if urlsplit(url).scheme in ("postgresql", "postgres"):
        from ..storage._postgres import PostgresStore

        return PostgresStore(
            url,
            pool_size=settings.pool_max_size,
            pool_min_size=settings.pool_min_size,
            statement_timeout=settings.statement_timeout,
        )
    return open_store(url)
