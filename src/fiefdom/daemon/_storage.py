"""The storage entry points the daemon uses, in one place (so that the daemon and
the command line open the store the same way)."""

from __future__ import annotations

from ..storage import SCHEMA_VERSION, Store, open_store

__all__ = ["SCHEMA_VERSION", "Store", "open_store"]
