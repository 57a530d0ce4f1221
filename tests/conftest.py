"""Test-wide rules and fixtures.

- No test may leave anything behind: an asyncio task, a file descriptor (socket, SQLite
  file), a child process or a PostgreSQL connection (the guard below; proven to fire by
  tests/test_suite_guards.py).
- ``--loop=asyncio|uvloop`` picks the event loop of the whole run.
- ``--slow=all|half`` runs every ``slow`` test (the default) or half of them, chosen by a
  stable hash of their ids (``slow_split.in_slow_half``): CI's second pass, on uvloop, takes half,
  so that the two passes it runs at once on two cores stay within its time; every slow
  test still runs in the first pass.
- PostgreSQL is real (the machine's service; a missing one fails under CI and skips loudly
  elsewhere). ``store_url``, ``backend`` and ``store`` run a test on every dialect, or on the
  one named by ``@pytest.mark.dialect(...)``: the other dialect's case is never generated.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from leak_guard import PostgresWatch, Snapshot, wait_for_release
from slow_split import in_slow_half

if TYPE_CHECKING:
    from fiefdom.storage import Store

pytest_plugins = ["pytester"]

POSTGRES_URL = os.environ.get(
    "FIEFDOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DIALECTS = ("sqlite", "postgres")
# How long a released resource may take to go away (a server backend exits a moment after
# its client hung up, an exited child is reaped by a watcher thread); polled, so a clean test
# does not wait for it.
LEAK_GRACE = float(os.environ.get("FIEFDOM_TEST_LEAK_GRACE", "5"))
_POSTGRES_WATCH = pytest.StashKey[PostgresWatch]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop for every test: asyncio's default or uvloop (the fast extra)",
    )
    parser.addoption(
        "--slow",
        choices=("all", "half"),
        default="all",
        help="run every test marked slow, or the half of them in_slow_half picks",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("slow") == "all":
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        slow_elsewhere = item.get_closest_marker("slow") and not in_slow_half(item.nodeid)
        (left_out if slow_elsewhere else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("loop") == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise pytest.UsageError(
                "--loop=uvloop needs uvloop: pip install -e '.[test,fast]'"
            ) from exc
        # Through the policy, so that pytest-asyncio's runners, asyncio.run() and
        # new_event_loop() in synchronous tests all get uvloop.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        # libuv opens a pipe with the first loop of the process and keeps it for the
        # process's life: open it now, not inside the first test that makes a loop.
        asyncio.new_event_loop().close()


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.getoption("loop") == "uvloop":
        asyncio.set_event_loop_policy(None)


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: {config.getoption('loop')}; slow tests: {config.getoption('slow')}"


# -- the guard ---------------------------------------------------------------------------


def _runner_name(request: pytest.FixtureRequest) -> str | None:
    """The name of the fixture holding the asyncio.Runner whose loop runs this test
    (pytest-asyncio adds it to the test's fixtures before setting them up), or None for a
    synchronous test."""
    names = [n for n in request.fixturenames if n.endswith("_scoped_runner")]
    return names[0] if names else None


@pytest.fixture(autouse=True)
def _gc_thresholds_restored() -> Iterator[None]:
    """Each test starts with the garbage collector's thresholds the one before it
    started with: mypy, which the typing tests run in the test process, raises them
    for good, and the thresholds are what a running ActorSystem changes
    (tests/supervisors/test_system_gc.py, tests/daemon/test_daemon_gc.py)."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.fixture
def interpreter_gc_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter's collector thresholds (700, 10, 10) and no FIEFDOM_GC, for a
    test of what a system or a store changes (``_gc_thresholds_restored`` puts the
    thresholds back after it)."""
    monkeypatch.delenv("FIEFDOM_GC", raising=False)
    gc.set_threshold(700, 10, 10)


@pytest.fixture(autouse=True)
def _no_leaked_resources(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a file descriptor (a socket, a SQLite file...), a child
    process or a PostgreSQL connection open once its fixtures and its event loop are closed.

    It is set up before the test's other function fixtures and torn down after them, the
    test's own runner included: what the loop owns (its selector, uvloop's /dev/null for
    spawning) is closed with it, and whatever is still open is the test's."""
    if request.node.get_closest_marker("postgres") is not None:
        # A session fixture set up mid-test would look like the test's own resources.
        request.getfixturevalue("postgres_server")
    runner = _runner_name(request)
    if runner is not None and runner != "_function_scoped_runner":
        # A loop that outlives the test is set up first, so its resources are not the test's.
        request.getfixturevalue(runner)
    postgres = request.config.stash.get(_POSTGRES_WATCH, None)
    before = Snapshot.take(postgres)
    yield
    left = wait_for_release(
        before, postgres, grace=LEAK_GRACE, poll=lambda: time.sleep(0.01), clock=time.monotonic
    )
    if not left.empty():
        report = left.report(postgres.database if postgres is not None else None)
        pytest.fail("test left resources behind:\n" + "\n".join(report), pytrace=False)


def _name(task: asyncio.Task[object]) -> str:
    return f"{task.get_name()} ({task.get_coro()!r})"


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest, _no_leaked_resources: None) -> Iterator[None]:
    """Fail the test if it leaves an asyncio task running (GUARANTEES 004/4) once its
    fixtures are done.

    It asks for the test's runner itself, so it is torn down before the runner closes the
    loop: it sees the test's loop (asyncio's or uvloop's) with whatever still runs on it."""
    name = _runner_name(request)
    if name is None:
        yield
        return
    runner = request.getfixturevalue(name)
    assert isinstance(runner, asyncio.Runner)
    loop = runner.get_loop()
    before = asyncio.all_tasks(loop)
    yield
    leaked = [t for t in asyncio.all_tasks(loop) if t not in before]
    if leaked:
        for task in leaked:
            task.cancel()
        runner.run(asyncio.wait(leaked))
        names = "\n".join(f"  {_name(t)}" for t in leaked)
        pytest.fail(f"test left {len(leaked)} task(s) running:\n{names}", pytrace=False)


# -- PostgreSQL --------------------------------------------------------------------------


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
def postgres_server(request: pytest.FixtureRequest) -> Iterator[str]:
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
    watch = PostgresWatch(POSTGRES_URL, name)
    request.config.stash[_POSTGRES_WATCH] = watch
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        del request.config.stash[_POSTGRES_WATCH]
        watch.close()
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- stores on every dialect -------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("dialect")
    if "store_url" not in metafunc.fixturenames:
        if marker is not None:
            pytest.fail(
                f"{metafunc.definition.nodeid}: @pytest.mark.dialect only applies to a test"
                " that uses store_url, backend or store",
                pytrace=False,
            )
        return
    dialects = DIALECTS if marker is None else marker.args
    if marker is not None and (len(dialects) != 1 or dialects[0] not in DIALECTS or marker.kwargs):
        pytest.fail(
            f"{metafunc.definition.nodeid}: use @pytest.mark.dialect(name) with one name"
            f" of {', '.join(DIALECTS)}, not {marker}",
            pytrace=False,
        )
    metafunc.parametrize(
        "store_url",
        [
            pytest.param(d, id=d, marks=[pytest.mark.postgres] if d == "postgres" else [])
            for d in dialects
        ],
        indirect=True,
    )


@pytest.fixture
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
    """The dialect of store_url: "sqlite" or "postgres"."""
    return "sqlite" if store_url.startswith("sqlite") else "postgres"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store."""
    from fiefdom.storage import open_store

    s = open_store(store_url)
    await s.open(migrate=True)
    try:
        yield s
    finally:
        await s.close()
