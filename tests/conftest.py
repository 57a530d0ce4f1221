"""Test-wide rules: no asyncio task may outlive its test, and PostgreSQL is real
(the machine's service; a missing one fails under CI and skips loudly elsewhere)."""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

POSTGRES_URL = os.environ.get(
    "FIEFDOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        if func is not None and inspect.iscoroutinefunction(func):
            item.add_marker(pytest.mark.usefixtures("_no_leaked_tasks"))


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if it leaves an asyncio task running (GUARANTEES 004/4)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [
        t for t in asyncio.all_tasks() if t is not current and t not in before and not t.done()
    ]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        names = ", ".join(sorted(t.get_name() for t in leaked))
        pytest.fail(f"test left {len(leaked)} task(s) running: {names}")


def _postgres_reachable() -> str | None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, dropped at the end of the run."""
    problem = _postgres_reachable()
    if problem is not None:
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable ({problem})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI requires it")
        pytest.skip(message + "; set FIEFDOM_TEST_POSTGRES to run these tests")
    import asyncpg

    name = f"fiefdom_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
