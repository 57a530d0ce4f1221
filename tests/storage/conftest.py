"""The storage suite runs on every backend through one parametrised fixture:
``store_url`` is a fresh SQLite file or a fresh PostgreSQL schema per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fiefdom.storage import Store, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty database: a SQLite file in tmp_path, or a new schema in the
    run's PostgreSQL database (selected through search_path)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fiefdom.db'}"
    server: str = request.getfixturevalue("postgres_server")
    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        import asyncpg

        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{server}?search_path={schema}"


@pytest.fixture
def backend(store_url: str) -> str:
    return "sqlite" if store_url.startswith("sqlite") else "postgres"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store."""
    s = open_store(store_url)
    await s.open(migrate=True)
    try:
        yield s
    finally:
        await s.close()
