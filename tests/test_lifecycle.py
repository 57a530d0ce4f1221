"""One lifecycle for every long-lived component (DESIGN rule 4): a table of components
by misuses. ``stop()`` before ``start()`` returns at once; ``start()`` twice, or after a
stop, raises ``LifecycleError``; using a component before its start or after its stop
raises ``LifecycleError``; each message says how to fix it; ``async with`` starts and
stops it; ``stop("cancel")`` cancels the work it is doing now.

To add a component: write a factory (an async context manager yielding a ``Subject``:
the component, how its messages name it, one ordinary call that needs it running,
and optionally work that only a cancel ends) and add one ``Component`` line to
``COMPONENTS``. The factory cleans up after itself (``stop("cancel")``), whatever the
test did."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

import fiefdom
from fiefdom import LifecycleError, State
from fiefdom.daemon import Daemon, load_config, read_token_file, token_table
from fiefdom.daemon._services import StoreService
from fiefdom.protocol import ControlServer, LogEvent
from fiefdom.storage import open_store

sys.path.insert(0, str(Path(__file__).parent / "daemon"))

from daemon_harness import APP_DIR, write_config

sys.path.insert(0, str(APP_DIR))

import lifecycle_app

# A hang guard, not a timing assertion: far above what any of these stops takes, far
# below the hour-long deadlines that only a cancel cuts short, and below the per-test
# timeout so that a hang fails with this line.
HANG_GUARD = 30.0
HOUR = 3600.0


@contextmanager
def hang_guard() -> Iterator[None]:
    """Fail if the block has not returned within HANG_GUARD seconds (also when what
    overran was shielded from cancellation, which anyio.fail_after would not report)."""
    with anyio.move_on_after(HANG_GUARD) as scope:
        yield
    assert not scope.cancel_called, f"did not return within {HANG_GUARD}s"


# -- what a row needs ------------------------------------------------------------------


@dataclass
class Subject:
    """A component built for one test, and what the table needs to exercise it."""

    component: Any  # has state, start(), stop(mode), async with
    what: str  # how its misuse messages name it
    usage: str  # how its messages say to run it
    action: str = ""  # what ``use`` attempts, as its message names it
    use: Callable[[], Awaitable[object]] | None = None
    # Starts work that only a cancel ends (in ``tg``), returns once it runs; returns
    # a wait that ends once that work has been seen cancelled.
    busy: Callable[[TaskGroup], Awaitable[Callable[[], Awaitable[object]]]] | None = None


class Context:
    """What a factory may use: a folder of its own and the real databases."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.request = request
        self.tmp_path = tmp_path

    def store_url(self, dialect: str) -> str:
        if dialect == "postgresql":
            return str(self.request.getfixturevalue("postgres_server"))
        return f"sqlite:///{self.tmp_path / 'store.db'}"

    def daemon_config(self, dialect: str = "sqlite", control: str = "") -> Any:
        """A daemon's configuration: lifecycle_app hosted, the store on ``dialect``,
        ``control`` added to its [control] section."""
        url = self.store_url(dialect)
        extra = f'[store]\nurl = "{url}"\n'
        if dialect == "postgresql":
            # The run's database is every such test's store: their daemons share one
            # vault folder, as daemons on one store must.
            factory: pytest.TempPathFactory = self.request.getfixturevalue("tmp_path_factory")
            base = factory.getbasetemp()
            extra += f'\n[vault]\npath = "{base / "lifecycle-vault"}"\n'
        path = write_config(
            self.tmp_path / "daemon", modules=("lifecycle_app",), extra=extra, control=control
        )
        return load_config(path, environ={})


Factory = Callable[[Context], AbstractAsyncContextManager[Subject]]


@dataclass(frozen=True)
class Component:
    """One row group of the table: a name (the ids), a factory, and which checks apply."""

    name: str
    build: Factory
    has_use: bool = True
    has_busy: bool = True
    fixtures: tuple[str, ...] = ()  # set up before the test's event loop runs
    marks: tuple[pytest.MarkDecorator, ...] = ()


POSTGRES: dict[str, Any] = {"fixtures": ("postgres_server",), "marks": (pytest.mark.postgres,)}


# -- factories -------------------------------------------------------------------------


class Blocker(fiefdom.Actor[lifecycle_app.Block]):
    """Blocks in its handler until cancelled; sets ``cancelled`` then."""

    def __init__(self, entered: anyio.Event, cancelled: anyio.Event) -> None:
        self.entered = entered
        self.cancelled = cancelled

    async def receive(self, msg: lifecycle_app.Block) -> None:
        self.entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise


class Idle(fiefdom.Actor[lifecycle_app.Block]):
    async def receive(self, msg: lifecycle_app.Block) -> None:
        return None


@asynccontextmanager
async def actor_system(ctx: Context) -> AsyncIterator[Subject]:
    system = fiefdom.ActorSystem(name="lifecycle")

    async def use() -> object:
        return await system.spawn(Idle, name="idle")

    async def busy(tg: TaskGroup) -> Callable[[], Awaitable[object]]:
        # A spawned actor and a domain's actor, each in a handler that never returns,
        # with hour-long shutdown deadlines: a drain would wait an hour.
        entered = [anyio.Event(), anyio.Event()]
        cancelled = [anyio.Event(), anyio.Event()]
        ref = await system.spawn(
            lambda: Blocker(entered[0], cancelled[0]), name="blocker", shutdown=HOUR
        )
        domain = system.domain(
            "blockers", lambda key: Blocker(entered[1], cancelled[1]), shutdown=HOUR
        )
        await ref.tell(lifecycle_app.Block())
        await domain.tell("k", lifecycle_app.Block())
        for event in entered:
            await event.wait()

        async def ended() -> None:
            for event in cancelled:
                await event.wait()

        return ended

    try:
        yield Subject(
            system,
            what="actor system 'lifecycle'",
            usage="use 'async with ActorSystem() as system'",
            action="spawn",
            use=use,
            busy=busy,
        )
    finally:
        await system.stop("cancel")


@asynccontextmanager
async def running_daemon(ctx: Context) -> AsyncIterator[Daemon]:
    """A daemon (SQLite) hosting lifecycle_app, for components that need one up."""
    daemon = Daemon(ctx.daemon_config())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop("cancel")


@asynccontextmanager
async def control_server(ctx: Context) -> AsyncIterator[Subject]:
    # Peers get an hour to answer the close of a drain: only a cancel ends it sooner.
    config = ctx.daemon_config(control=f"shutdown_timeout = {HOUR}")
    # The host is a daemon that is not started: the server needs only its names.
    host = Daemon(config)
    server = ControlServer(host, config.control, token_table(config), host.metrics)
    peers: list[asyncio.StreamWriter] = []

    async def use() -> object:
        return server.port

    async def busy(tg: TaskGroup) -> Callable[[], Awaitable[object]]:
        # A subscriber that stops reading, with far more events published to it than
        # the sockets' buffers hold: its pump waits forever to send them, and a drain
        # lets every pump finish (within shutdown_timeout, an hour here).
        token = read_token_file(config.admin_token_path)
        peers.append(await _silent_subscriber(server.port, token))
        text = "x" * (1 << 20)
        for _ in range(100):
            host.hub.publish(LogEvent(level="info", logger="lifecycle", event=text, at=0.0))
        await anyio.wait_all_tasks_blocked()
        assert server.connections == 1

        async def ended() -> None:
            assert server.connections == 0

        return ended

    try:
        yield Subject(
            server,
            what="control server of 'test-daemon'",
            usage="use 'async with ControlServer(host, settings, tokens) as server'",
            action="read the port",
            use=use,
            busy=busy,
        )
    finally:
        await server.stop("cancel")
        for peer in peers:
            peer.close()
            await peer.wait_closed()


async def _silent_subscriber(port: int, token: str) -> asyncio.StreamWriter:
    """A websocket peer subscribed to the "logs" topic that then reads nothing more (a
    raw socket: an aiohttp client would keep reading into its own buffers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    payload = json.dumps({"type": "subscribe", "id": 1, "topics": ["logs"]}).encode()
    mask = os.urandom(4)
    # One masked text frame (a client's frames are masked; this one is under 126 bytes).
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask)
    writer.write(bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload)))
    first, second = await reader.readexactly(2)
    assert first == 0x81  # a text frame (unmasked: from the server)
    assert second < 126  # short enough for its length to fit in this byte
    assert json.loads(await reader.readexactly(second))["type"] == "subscribed"
    return writer


@asynccontextmanager
async def client(ctx: Context) -> AsyncIterator[Subject]:
    async with running_daemon(ctx) as daemon:
        assert daemon.server is not None
        token = read_token_file(daemon.config.admin_token_path)
        # An hour-long reply timeout: a drain would wait that long for a reply.
        the_client = fiefdom.connect(
            f"http://127.0.0.1:{daemon.server.port}", token=token, timeout=HOUR
        )

        async def use() -> object:
            return await the_client.status()

        async def busy(tg: TaskGroup) -> Callable[[], Awaitable[object]]:
            failed = anyio.Event()

            async def call() -> None:
                with pytest.raises(fiefdom.ControlConnectionError, match="the client was stopped"):
                    await the_client.call("blocker", lifecycle_app.Block(), timeout=None)
                failed.set()

            probe = lifecycle_app.PROBE
            tg.start_soon(call)
            await probe.entered.wait()
            return failed.wait

        try:
            yield Subject(
                the_client,
                what=f"client of {the_client.url}",
                usage="use 'async with fiefdom.connect(url, token=...) as client'",
                action="send a request",
                use=use,
                busy=busy,
            )
        finally:
            await the_client.stop("cancel")


def daemon(dialect: str) -> Factory:
    @asynccontextmanager
    async def build(ctx: Context) -> AsyncIterator[Subject]:
        the_daemon = Daemon(ctx.daemon_config(dialect))

        async def use() -> object:
            await the_daemon.drain(timeout=HANG_GUARD)
            return None

        async def busy(tg: TaskGroup) -> Callable[[], Awaitable[object]]:
            probe = lifecycle_app.PROBE
            await the_daemon.system.root.ref("blocker").tell(lifecycle_app.Block())
            await probe.entered.wait()
            return probe.cancelled.wait

        try:
            yield Subject(
                the_daemon,
                what="daemon 'test-daemon'",
                usage="use 'async with Daemon(config) as daemon' or 'await run()'",
                action="drain",
                use=use,
                busy=busy,
            )
        finally:
            await the_daemon.stop("cancel")

    return build


def store_service(dialect: str) -> Factory:
    @asynccontextmanager
    async def build(ctx: Context) -> AsyncIterator[Subject]:
        url = ctx.store_url(dialect)
        service = StoreService(open_store(url), migrate=True, url_for_logs=url)
        try:
            yield Subject(
                service,
                what=f"store service of {url}",
                usage=(
                    "run it as a supervised service, or use 'async with StoreService(store, ...)'"
                ),
            )
        finally:
            await service.stop("cancel")

    return build


def store(dialect: str) -> Factory:
    @asynccontextmanager
    async def build(ctx: Context) -> AsyncIterator[Subject]:
        url = ctx.store_url(dialect)
        migrator = open_store(url)
        await migrator.open(migrate=True)
        await migrator.close()
        the_store = open_store(url)

        async def use() -> object:
            return await the_store.count_jobs()

        try:
            yield Subject(
                the_store,
                what=f"store {the_store.url}",
                usage="use 'async with open_store(url) as store'",
                action="use the store",
                use=use,
            )
        finally:
            await the_store.stop("cancel")

    return build


class Hang(fiefdom.Job):
    options = fiefdom.JobOptions(kind="lifecycle.hang", max_attempts=1)
    n: int


def job_engine(dialect: str) -> Factory:
    @asynccontextmanager
    async def build(ctx: Context) -> AsyncIterator[Subject]:
        the_store = open_store(ctx.store_url(dialect))
        await the_store.open(migrate=True)
        engine = fiefdom.JobEngine(
            the_store, name="lifecycle", drain_timeout=HOUR, poll_interval=0.05, retention=None
        )
        entered, cancelled = anyio.Event(), anyio.Event()

        async def hang(job: Hang, ctx: fiefdom.JobContext[Any]) -> None:
            entered.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise

        engine.register(Hang, hang)

        async def busy(tg: TaskGroup) -> Callable[[], Awaitable[object]]:
            # A handler that never returns, with an hour to drain: only a cancel ends it.
            await the_store.enqueue(Hang(n=1))
            await entered.wait()
            return cancelled.wait

        try:
            yield Subject(
                engine,
                what=f"job engine {engine.worker}",
                usage="use 'async with JobEngine(store) as engine'",
                busy=busy,
            )
        finally:
            await engine.stop("cancel")
            await the_store.close()

    return build


def maintenance(service: str) -> Factory:
    """One of the engine's maintenance services, run on its own."""

    @asynccontextmanager
    async def build(ctx: Context) -> AsyncIterator[Subject]:
        from fiefdom.jobs import (
            _core,
            _finisher,
            _lease_keeper,
            _promoter,
            _queue_watcher,
            _rescuer,
        )

        classes = {
            "finisher": _finisher.Finisher,
            "lease-keeper": _lease_keeper.LeaseKeeper,
            "promoter": _promoter.Promoter,
            "queue-watcher": _queue_watcher.QueueWatcher,
            "rescuer": _rescuer.Rescuer,
        }
        the_store = open_store(ctx.store_url("sqlite"))
        await the_store.open(migrate=True)
        timing = _core.Timing(
            lease=30, heartbeat=10, poll=0.05, rescue_every=0.05, batch=10, drain_timeout=1
        )
        core = _core.Core(the_store, name="lifecycle", queues={}, domains={}, timing=timing)
        the_service = classes[service](core)
        try:
            yield Subject(
                the_service,
                what=f"the {the_service.name} of job engine {core.worker}",
                usage=(
                    "its JobEngine starts it, or use "
                    f"'async with {type(the_service).__name__}(...)'"
                ),
            )
        finally:
            await the_service.stop("cancel")
            await the_store.close()

    return build


COMPONENTS = [
    Component("actor-system", actor_system),
    Component("control-server", control_server),
    Component("client", client),
    Component("daemon-sqlite", daemon("sqlite")),
    Component("daemon-postgresql", daemon("postgresql"), **POSTGRES),
    Component("store-service-sqlite", store_service("sqlite"), has_use=False, has_busy=False),
    Component(
        "store-service-postgresql",
        store_service("postgresql"),
        has_use=False,
        has_busy=False,
        **POSTGRES,
    ),
    Component("store-sqlite", store("sqlite"), has_busy=False),
    Component("store-postgresql", store("postgresql"), has_busy=False, **POSTGRES),
    Component("job-engine-sqlite", job_engine("sqlite"), has_use=False),
    Component("job-engine-postgresql", job_engine("postgresql"), has_use=False, **POSTGRES),
    *(
        Component(f"engine-{name}", maintenance(name), has_use=False, has_busy=False)
        for name in ("finisher", "lease-keeper", "promoter", "queue-watcher", "rescuer")
    ),
]

# -- the misuses -----------------------------------------------------------------------


async def stop_before_start(s: Subject) -> None:
    """stop() on a component never started returns at once and leaves it stopped."""
    with hang_guard():
        await s.component.stop()
        await s.component.stop("cancel")
    assert s.component.state is State.STOPPED


async def start_twice(s: Subject) -> None:
    """A second start() raises, saying start() is called once; the component runs on."""
    await s.component.start()
    with pytest.raises(LifecycleError) as info:
        await s.component.start()
    assert str(info.value) == (
        f"{s.what} is already running: start() is called once "
        f"({s.usage}, which starts and stops it)"
    )
    assert s.component.state is State.RUNNING
    await s.component.stop()
    assert s.component.state is State.STOPPED


async def start_after_stop(s: Subject) -> None:
    """start() after a stop raises, saying to create a new one."""
    await s.component.start()
    await s.component.stop()
    with pytest.raises(LifecycleError) as info:
        await s.component.start()
    assert str(info.value) == (
        f"{s.what} is stopped; a component runs once: create a new one instead of "
        "starting this one again"
    )
    assert s.component.state is State.STOPPED


async def use_before_start(s: Subject) -> None:
    """Using a component before start() raises, saying how to start it."""
    assert s.use is not None
    with pytest.raises(LifecycleError) as info:
        await s.use()
    assert str(info.value) == (
        f"cannot {s.action}: {s.what} is not started ({s.usage}, or call 'await start()' first)"
    )
    assert s.component.state is State.NEW


async def use_after_stop(s: Subject) -> None:
    """Using a component after its stop raises, saying to create a new one."""
    assert s.use is not None
    await s.component.start()
    await s.use()
    await s.component.stop()
    with pytest.raises(LifecycleError) as info:
        await s.use()
    assert str(info.value) == (
        f"cannot {s.action}: {s.what} is stopped; a stopped component does not come back: "
        "create a new one"
    )


async def async_with(s: Subject) -> None:
    """async with starts the component (usable inside) and stops it on leaving."""
    async with s.component as entered:
        assert entered is s.component
        assert s.component.state is State.RUNNING
        if s.use is not None:
            await s.use()
    assert s.component.state is State.STOPPED


async def stop_cancel(s: Subject) -> None:
    """stop("cancel") cancels work that nothing else would end (hour-long deadlines)."""
    assert s.busy is not None
    await s.component.start()
    async with anyio.create_task_group() as tg:
        ended = await s.busy(tg)
        with hang_guard():
            await s.component.stop("cancel")
            await ended()
    assert s.component.state is State.STOPPED


MISUSES = [
    stop_before_start,
    start_twice,
    start_after_stop,
    use_before_start,
    use_after_stop,
    async_with,
    stop_cancel,
]
NEEDS_USE = {use_before_start, use_after_stop}
NEEDS_BUSY = {stop_cancel}

ROWS = [
    pytest.param(
        component,
        misuse,
        id=f"{component.name}-{misuse.__name__.replace('_', '-')}",
        marks=component.marks,
    )
    for component in COMPONENTS
    for misuse in MISUSES
    if (component.has_use or misuse not in NEEDS_USE)
    and (component.has_busy or misuse not in NEEDS_BUSY)
]


@pytest.fixture
def context(request: pytest.FixtureRequest, tmp_path: Path) -> Context:
    """The row's context, with the fixtures its component needs set up (a synchronous
    fixture: the PostgreSQL one runs an event loop of its own)."""
    component: Component = request.node.callspec.params["component"]
    for name in component.fixtures:
        request.getfixturevalue(name)
    return Context(request, tmp_path)


@pytest.mark.parametrize(("component", "misuse"), ROWS)
async def test_lifecycle(
    component: Component, misuse: Callable[[Subject], Awaitable[None]], context: Context
) -> None:
    """Each component behaves as its row's misuse says (see the misuse's docstring)."""
    async with component.build(context) as subject:
        await misuse(subject)
