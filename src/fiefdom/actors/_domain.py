"""``Domain``: at most one live actor per key (a resource id), activated on its
first message and passivated when idle or when the cap on live actors needs room.

A message for a key whose actor is passivating goes to a new activation that
starts only after the old one has stopped, so there are never two activations
of one key. Live actors (holding a slot: starting, running or stopping) never
exceed ``max_active``; an activation past the cap waits for the least recently
used idle actor to be passivated, or for any actor to stop.

``max_active`` is bounded by default (``DEFAULT_MAX_ACTIVE``): a domain fed ids from
outside (a request per user, per file) must not grow without limit. ``None`` is
still accepted, as an explicit choice, for a domain whose keys are known to be few."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar, cast

import anyio

from .._errors import ActorStopped, MailboxFull, OwnerUnavailable
from .._lifecycle import StopMode
from .._log import get_logger
from .._throttle import exc_fields
from ._actor import Actor
from ._cell import (
    DEFAULT_ASK_TIMEOUT,
    DEFAULT_CANCEL_GRACE,
    DEFAULT_CAPACITY,
    ActorStatistics,
    Cell,
    StartFailed,
)
from ._domain_ports import KEYS_LISTED as KEYS_LISTED
from ._domain_ports import DomainStatistics as DomainStatistics
from ._domain_ports import Forwarder as Forwarder
from ._domain_ports import Placement as Placement
from ._domain_ports import _first_keys
from ._events import ActorCrashed, ActorRestarted, EventBus
from ._mailbox import MailboxClosed
from ._message import Request
from ._ref import ActorRef

K = TypeVar("K", bound=Hashable)


M = TypeVar("M")
R = TypeVar("R")

log = get_logger("fiefdom.domain")

DEFAULT_MAX_ACTIVE = 100_000
"""Live actors a domain keeps by default; past it, the least recently used idle one
is passivated to make room. Pass ``max_active=None`` for no cap at all."""


class _KeyCell(Cell[M]):
    """A domain's cell: each incarnation is made by the domain's factory from the key.
    (Calling the factory with the key here saves a partial object per live actor.)"""

    __slots__ = ()

    def make_instance(self) -> Actor[M]:
        # (A quoted type: cast's first argument is evaluated, and a subscripted
        # Callable is built anew at each call.)
        return cast("Callable[[object], Actor[M]]", self.factory)(self.key)


class Domain(Generic[K, M]):
    """One actor per key. Create it with ``system.domain(name, ActorClass, ...)``;
    ``ActorClass(key)`` builds the actor of a key. At most ``max_active`` actors are
    live at once (``DEFAULT_MAX_ACTIVE`` unless given; ``None``: no cap)."""

    def __init__(
        self,
        path: str,
        factory: Callable[[K], Actor[M]],
        *,
        idle_timeout: float | None = 60.0,
        max_active: int | None = DEFAULT_MAX_ACTIVE,
        mailbox_capacity: int = DEFAULT_CAPACITY,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        events: EventBus | None = None,
    ) -> None:
        if max_active is not None and max_active < 1:
            raise ValueError(f"max_active must be at least 1 or None, got {max_active}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive or None, got {idle_timeout}")
        self.path = path
        self._factory = factory
        self._idle_timeout = idle_timeout
        self._max_active = max_active
        self._capacity = mailbox_capacity
        self._cancel_grace = cancel_grace
        self._events = events
        self._cells: dict[K, Cell[M]] = {}
        # Least recently used first. An OrderedDict, not a dict: a dict that is
        # deleted from at the front makes next(iter()) skip every dead slot before
        # the first live one, which is quadratic under activation churn.
        self._idle: OrderedDict[K, Cell[M]] = OrderedDict()
        self._idle_appeared = asyncio.Event()
        self._live = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._evicting: set[Cell[M]] = set()
        self._pending = 0  # activations created that do not hold a slot yet
        self._room: deque[asyncio.Future[None]] = deque()  # senders waiting for room
        # Each activation runs in a task of its own, made with the loop (not through a
        # task group: its bookkeeping per task is most of an activation, and the
        # garbage collector scans what it leaves on every live actor). The domain does
        # a task group's work itself: serve waits for every task, a failed one stops
        # the others and its error is raised, a cancellation reaches every actor.
        self._loop: asyncio.AbstractEventLoop | None = None  # while serve hosts actors
        self._tasks: dict[asyncio.Task[None], Cell[M]] = {}
        self._tasks_done: asyncio.Future[None] | None = None
        self._task_done_hook = self._task_done  # one bound method shared by every task
        self._context = contextvars.Context()  # empty: the done callback reads no variable
        self._failures: list[BaseException] = []
        self._doomed = False  # cancelled: no actor starts, restarts or waits for a slot
        self._backlog: list[Cell[M]] = []
        self._closed: str | None = None
        self._stop_requested = asyncio.Event()
        self._cancelling = False  # the stop requested cancels handlers instead of draining
        self._scope: anyio.CancelScope | None = None
        self.stopped = asyncio.Event()
        self._activations = 0
        self._passivations = 0
        self._crashes = 0
        self._on_idle_hook = self._on_idle
        # A pause belongs to the key, not to one activation: a paused key that is
        # passivated comes back paused. Keys paused on their own while the domain is
        # not, and keys resumed on their own while it is.
        self._paused = False
        self._paused_keys: set[K] = set()
        self._resumed_keys: set[K] = set()
        # Who says which keys this process may activate (the cluster's nodes); none:
        # every key is local, as in a process alone.
        self._placements: list[Placement] = []
        # Asked by each placed cell before each message: one function for all.
        self._is_local_hook: Callable[[Any], bool] | None = None
        self._forwarder: Forwarder | None = None

    # -- placement ---------------------------------------------------------------

    def add_placement(self, placement: Placement) -> Callable[[], None]:
        """Activate only keys that ``placement`` (or another one added) says are local;
        returns the function that removes it. A ``JobEngine`` adds its cluster node."""
        self._placements.append(placement)
        self._placed_changed()

        def remove() -> None:
            if placement in self._placements:
                self._placements.remove(placement)
                self._placed_changed()

        return remove

    def _placed_changed(self) -> None:
        """What each cell asks before each message, for the placements now: nothing
        without one, the one's own ``is_local`` (the usual case: a message's check is
        then a single call), or ``is_local`` asking each."""
        placements = self._placements
        hook: Callable[[Any], bool] | None
        if not placements:
            hook = None
        elif len(placements) == 1:
            hook = placements[0].is_local
        else:
            hook = self.is_local
        self._is_local_hook = hook
        for cell in self._cells.values():
            cell.place(hook)

    def set_forwarder(self, forwarder: Forwarder | None) -> None:
        """Send messages for keys owned elsewhere through ``forwarder`` (a cluster
        node), instead of failing them with ``OwnerUnavailable``."""
        self._forwarder = forwarder

    def is_local(self, key: K) -> bool:
        """Whether this process may run ``key``'s actor now."""
        return not self._placements or any(p.is_local(key) for p in self._placements)

    def fence(self, lost: Callable[[K], bool], *, cancel: bool = True) -> int:
        """Stop every live activation whose key ``lost`` says this process no longer
        owns: at once, cancelling its running handler, or (``cancel=False``) after
        its current message; returns how many. Queued messages fail ActorStopped."""
        stopped = 0
        for key, cell in list(self._cells.items()):
            if not cell.mailbox.closed and lost(key):
                cell.request_stop("cancel" if cancel else "exit")
                stopped += 1
        return stopped

    # -- sending -----------------------------------------------------------------

    async def tell(self, key: K, msg: M) -> None:
        """Send to ``key``'s actor (activating it); waits while its mailbox is full.
        A key owned by another node of the cluster is sent to that node."""
        try:
            cell = self._deliverable_cell(key) if self._has_room() else await self._cell_for(key)
        except OwnerUnavailable:
            if self._forwarder is None:
                raise
            await self._forwarder.forward_tell(key, msg)
            return
        if cell.mailbox.put_nowait(msg):
            return
        while True:
            try:
                await cell.mailbox.put(msg)
                return
            except MailboxClosed:
                # Passivated while we waited for space: the key's next activation takes it.
                if self._closed is not None:
                    raise
                cell = await self._cell_for(key)

    def tell_nowait(self, key: K, msg: M) -> None:
        """Send to ``key``'s actor; raises MailboxFull when its mailbox is full, or when
        the key needs an activation and max_active activations are already waiting."""
        if not self._has_room() and not self.is_active(key):
            assert self._max_active is not None
            raise MailboxFull(f"{self.path}/{key}", self._max_active)
        self._deliverable_cell(key).tell_nowait(msg)

    async def ask(
        self, key: K, msg: Request[R], *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> R:
        """Ask ``key``'s actor (activating it) and wait for the reply. A key owned by
        another node of the cluster is asked there, with the same deadline."""
        try:
            cell = self._deliverable_cell(key) if self._has_room() else await self._cell_for(key)
        except OwnerUnavailable:
            if self._forwarder is None:
                raise
            return cast(R, await self._forwarder.forward_ask(key, msg, timeout))
        try:
            return cast(R, await cell.ask(msg, timeout))
        except MailboxClosed:
            # Passivated while the ask waited for space: the key's next activation
            # takes it, within what is left of the deadline.
            if self._closed is not None:
                raise
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else deadline - loop.time()
            try:
                return cast(R, await (await self._cell_for(key)).ask(msg, left))
            except MailboxClosed:
                if self._closed is not None:
                    raise

    async def call(
        self,
        key: K,
        fn: Callable[[Any], Awaitable[R]],
        *,
        timeout: float | None = DEFAULT_ASK_TIMEOUT,
        name: str | None = None,
    ) -> R:
        """Run ``fn(actor)`` inside ``key``'s actor (activating it), serialised with
        every other message for that key; cancellable exactly like an ask."""
        return await KeyRef(self, key).call(fn, timeout=timeout, name=name)

    def ref(self, key: K) -> ActorRef[M]:
        """A ref that routes every message to ``key``'s current activation."""
        return KeyRef(self, key)

    async def passivate(self, key: K) -> None:
        """Stop ``key``'s actor once its mailbox is empty, and wait until it has stopped."""
        cell = self._cells.get(key)
        if cell is not None:
            self._passivate(cell)
            await cell.stopped.wait()

    def pause(self) -> None:
        """Pause every key: live activations finish their current message and take no
        next one; new activations start paused. Undone by ``resume()``; a passivation
        or the domain's stop still drains them."""
        self._paused = True
        self._paused_keys.clear()
        self._resumed_keys.clear()
        for cell in self._cells.values():
            cell.pause()

    def resume(self) -> None:
        """Resume every key (also the ones paused on their own)."""
        self._paused = False
        self._paused_keys.clear()
        self._resumed_keys.clear()
        for cell in self._cells.values():
            cell.resume()

    def pause_key(self, key: K) -> None:
        """Pause one key: its live activation and the next ones (``ref(key).pause()``)."""
        if self._paused:
            self._resumed_keys.discard(key)
        else:
            self._paused_keys.add(key)
        cell = self._cells.get(key)
        if cell is not None:
            cell.pause()

    def resume_key(self, key: K) -> None:
        """Resume one key, also within a paused domain (``ref(key).resume()``)."""
        if self._paused:
            self._resumed_keys.add(key)
        else:
            self._paused_keys.discard(key)
        cell = self._cells.get(key)
        if cell is not None:
            cell.resume()

    def is_paused(self, key: K | None = None) -> bool:
        """Whether ``key`` (or, without one, the whole domain) is paused."""
        if key is None:
            return self._paused
        if self._paused:
            return key not in self._resumed_keys
        return key in self._paused_keys

    async def passivate_all(self) -> None:
        """Passivate every live activation and wait until they have stopped (the
        domain stays: a key is activated again by its next message)."""
        cells = list(self._cells.values())
        for cell in cells:
            self._passivate(cell)
        for cell in cells:
            await cell.stopped.wait()

    def is_active(self, key: K) -> bool:
        cell = self._cells.get(key)
        return cell is not None and not cell.mailbox.closed

    def key_statistics(self, key: K) -> ActorStatistics | None:
        cell = self._cells.get(key)
        return None if cell is None else cell.statistics()

    def statistics(self) -> DomainStatistics:
        return DomainStatistics(
            path=self.path,
            live=self._live,
            idle=len(self._idle),
            waiting=self._pending,
            max_active=self._max_active,
            idle_timeout=self._idle_timeout,
            activations=self._activations,
            passivations=self._passivations,
            crashes=self._crashes,
            paused=self._paused,
            paused_keys=_first_keys(self._paused_keys),
            resumed_keys=_first_keys(self._resumed_keys),
            paused_keys_total=len(self._paused_keys),
            resumed_keys_total=len(self._resumed_keys),
        )

    # -- activation and passivation --------------------------------------------

    def _has_room(self) -> bool:
        limit = self._max_active
        return limit is None or self._pending < limit

    async def _cell_for(self, key: K) -> Cell[M]:
        """The key's cell, like _deliverable_cell; but when the key needs a new
        activation while max_active activations already wait for a slot, wait for
        room first. This back-pressure keeps memory bounded however many distinct
        keys a sender touches (at most 2 * max_active cells exist)."""
        limit = self._max_active
        while limit is not None and self._pending >= limit and self._closed is None:
            if self.is_active(key):
                break
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_room()  # pass the room on
                elif waiter in self._room:
                    # (Not there when a wake-up already popped and skipped it: the
                    # future is cancelled as soon as our task is, before we run.)
                    self._room.remove(waiter)
                raise
        cell = self._deliverable_cell(key)
        if self._room and self._has_room():
            # We were woken but did not need the room (the key got an activation
            # meanwhile), or there is room for more: pass the wake-up on.
            self._wake_room()
        return cell

    def _wake_room(self) -> None:
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release_room_waiters(self) -> None:
        # The domain is closing: each waiting sender wakes up to get ActorStopped.
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _deliverable_cell(self, key: K) -> Cell[M]:
        cell = self._cells.get(key)
        if cell is not None and not cell.mailbox.closed:
            if cell.idle:
                # Marked busy before the put: a failed put means a full mailbox,
                # which is not idle either.
                cell.idle = False
                del self._idle[key]
            return cell
        if self._closed is not None:
            raise ActorStopped(f"{self.path}/{key}", self._closed)
        if self._placements and not self.is_local(key):
            raise OwnerUnavailable(f"{self.path}/{key}")
        new: Cell[M] = _KeyCell(
            cast("Callable[[], Actor[M]]", self._factory),  # called with the key: make_instance
            f"{self.path}/{key}",
            key=key,
            capacity=self._capacity,
            cancel_grace=self._cancel_grace,
        )
        new.on_idle = self._on_idle_hook  # one bound method shared by every cell
        if self._is_local_hook is not None:
            new.place(self._is_local_hook)
        new.predecessor = cell  # a passivating activation this one must wait for
        # (Two plain tests first: most domains are never paused, and this is the
        # activation path.)
        if (self._paused or self._paused_keys) and self.is_paused(key):
            new.pause()
        self._cells[key] = new
        self._pending += 1
        if self._loop is None:
            self._backlog.append(new)
        else:
            self._spawn(new)
        return new

    def _spawn(self, cell: Cell[M]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._run_cell(cell), name=cell.path)
        self._tasks[task] = cell
        # In the domain's own context: by default each callback would get a copy of
        # the sender's, one more object per live actor.
        task.add_done_callback(self._task_done_hook, context=self._context)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        del self._tasks[task]
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                # As a task group does: the error stops the domain, serve raises it.
                self._failures.append(exc)
                if self._scope is not None:
                    self._scope.cancel()
        if not self._tasks:
            done = self._tasks_done
            if done is not None and not done.done():
                done.set_result(None)

    async def _all_tasks_done(self) -> None:
        if self._tasks:
            assert self._loop is not None
            self._tasks_done = self._loop.create_future()
            try:
                await self._tasks_done
            finally:
                self._tasks_done = None

    def _doom(self) -> None:
        """Cancel every actor, as a cancelled task group cancels its tasks: a running
        incarnation is cancelled through its cancel scope (level by level, so a shield
        in a handler or on_stop still holds), one waiting for a slot stops waiting,
        and none starts or restarts any more."""
        self._doomed = True
        self._closed = self._closed or "its domain is stopping"
        for waiter in self._waiters:
            waiter.cancel()
        for cell in list(self._tasks.values()):
            cell.cancel(warn=False)

    async def _run_cell(self, cell: Cell[M]) -> None:
        pending = True
        try:
            if cell.predecessor is not None:
                await cell.predecessor.stopped.wait()
                cell.predecessor = None
            if self._doomed:
                return
            await self._acquire_slot()
            pending = False
            self._pending -= 1
            self._wake_room()
            try:
                if self._doomed:  # cancelled while its slot was being handed over
                    return
                self._activations += 1
                while True:
                    try:
                        await cell.serve()
                        break
                    except StartFailed as exc:
                        cell.mailbox.close("it failed to start")
                        cell.fail_queued(exc.__cause__ or exc)
                        cell.log.error("activation failed", **exc_fields(exc.__cause__))
                        self._emit_crash(cell, exc.__cause__ or exc)
                        break
                    except Exception as exc:
                        self._crashes += 1
                        cell.log.error("actor crashed", **exc_fields(exc))
                        self._emit_crash(cell, exc)
                        if cell.mailbox.depth == 0 or cell.stop_mode == "exit" or self._doomed:
                            break
                        # Messages are waiting (also while passivating: they were sent
                        # before it began): a fresh instance takes them.
                        cell.restarts += 1
                        if self._events is not None:
                            self._events.emit(
                                ActorRestarted(
                                    path=cell.path, key=str(cell.key), restarts=cell.restarts
                                )
                            )
            finally:
                self._release_slot(cell)
        finally:
            if pending:
                self._pending -= 1
                self._wake_room()
            if self._cells.get(cell.key) is cell:  # type: ignore[arg-type]
                del self._cells[cell.key]  # type: ignore[arg-type]
            if cell.idle:
                cell.idle = False
                del self._idle[cell.key]  # type: ignore[arg-type]
            cell.close("it was passivated")  # sets cell.stopped: a successor may start
            self._passivations += 1

    def _emit_crash(self, cell: Cell[M], exc: BaseException) -> None:
        if self._events is not None:
            self._events.emit(
                ActorCrashed(
                    path=cell.path,
                    key=str(cell.key),
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
            )

    async def _acquire_slot(self) -> None:
        if self._max_active is None or (self._live < self._max_active and not self._waiters):
            self._live += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._evict()
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._hand_on_slot()  # we were given a slot but will not use it
            elif waiter in self._waiters:  # a hand-on may have popped it already
                self._waiters.remove(waiter)
            raise

    def _release_slot(self, cell: Cell[M]) -> None:
        self._evicting.discard(cell)
        self._hand_on_slot()

    def _hand_on_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter: _live unchanged
                return
        self._live -= 1

    def _evict(self) -> None:
        # One passivation in flight per activation waiting for a slot, LRU first.
        while len(self._waiters) > len(self._evicting) and self._idle:
            cell = next(iter(self._idle.values()))
            self._evicting.add(cell)
            self._passivate(cell)

    def _on_idle(self, cell: Cell[M]) -> None:
        if cell.idle or cell.mailbox.closed:
            return
        cell.idle = True
        cell.current_since = time.monotonic()
        self._idle[cell.key] = cell  # type: ignore[index]
        if len(self._idle) == 1:
            self._idle_appeared.set()
        if self._waiters:
            self._evict()

    def _passivate(self, cell: Cell[M]) -> None:
        if cell.idle:
            cell.idle = False
            del self._idle[cell.key]  # type: ignore[arg-type]
        cell.request_stop("drain")

    async def _sweep_idle(self, idle_timeout: float) -> None:
        while True:
            if not self._idle:
                self._idle_appeared.clear()
                await self._idle_appeared.wait()
            now = time.monotonic()
            while self._idle:
                oldest = next(iter(self._idle.values()))
                due = oldest.current_since + idle_timeout
                if due > now:
                    await anyio.sleep(due - now)
                    break
                self._passivate(oldest)

    # -- lifetime (driven by a supervisor) ---------------------------------------

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Host the domain's actors until a stop is requested, then drain them all."""
        try:
            self._doomed = False
            self._failures = []
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as tg:
                    self._loop = asyncio.get_running_loop()
                    try:
                        for cell in self._backlog:
                            self._spawn(cell)
                        self._backlog.clear()
                        # Entered by the sweeper's own task: a cancel scope belongs to
                        # the task that enters it.
                        sweeper = anyio.CancelScope()
                        if self._idle_timeout is not None:
                            tg.start_soon(self._sweep_idle_in, sweeper, self._idle_timeout)
                        if started is not None:
                            started()
                        await self._stop_requested.wait()
                        self._closed = self._closed or "its domain is stopping"
                        sweeper.cancel()
                        mode: StopMode = "cancel" if self._cancelling else "drain"
                        for cell in list(self._cells.values()):
                            cell.request_stop(mode)
                        await self._all_tasks_done()
                    finally:
                        # Cancelled (cancel(), a failed actor task, or from outside):
                        # cancel every actor and wait for them all, as a task group would.
                        if self._tasks:
                            self._doom()
                            with anyio.CancelScope(shield=True):
                                await self._all_tasks_done()
                        # No activation may begin while the task group ends.
                        self._closed = self._closed or "its domain has stopped"
            if self._failures:
                failures, self._failures = self._failures, []
                raise BaseExceptionGroup("unhandled errors in a TaskGroup", failures)
        finally:
            self._loop = None
            self._scope = None
            self._closed = self._closed or "its domain has stopped"
            # A cell whose task never ran (cancelled before its first step) must not
            # be found by a later incarnation of the domain.
            for cell in self._cells.values():
                cell.close(self._closed)
            self._cells.clear()
            self._idle.clear()
            self.stopped.set()

    async def _sweep_idle_in(self, scope: anyio.CancelScope, idle_timeout: float) -> None:
        with scope:
            await self._sweep_idle(idle_timeout)

    def request_stop(self, mode: StopMode) -> None:
        """Stop every activation: ``cancel`` cancels their running handlers (their
        queued asks fail with ActorStopped) and also cuts short a drain under way;
        any other mode lets each actor handle what its mailbox holds first."""
        self._closed = "its domain is stopping"
        self._release_room_waiters()
        if mode == "cancel":
            self._cancelling = True
            if self._stop_requested.is_set():
                for cell in list(self._cells.values()):
                    cell.request_stop("cancel")
        self._stop_requested.set()

    def reset(self) -> None:
        self._closed = None
        self._cancelling = False
        self._stop_requested = asyncio.Event()
        self.stopped = asyncio.Event()

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def close(self, reason: str) -> None:
        self._closed = reason
        self._release_room_waiters()
        for cell in self._backlog:
            cell.close(reason)
        self._backlog.clear()

    def __repr__(self) -> str:
        return f"<Domain {self.path} live={self._live}>"


class KeyRef(ActorRef[M]):
    """A ref to a domain key: each message goes to the key's current activation."""

    __slots__ = ("_domain", "_key")

    def __init__(self, domain: Domain[Any, M], key: Any) -> None:
        self._domain = domain
        self._key = key

    @property
    def path(self) -> str:
        return f"{self._domain.path}/{self._key}"

    def _cell(self) -> Cell[M]:
        return self._domain._deliverable_cell(self._key)

    async def tell(self, msg: M) -> None:
        await self._domain.tell(self._key, msg)

    def tell_nowait(self, msg: M) -> None:
        self._domain.tell_nowait(self._key, msg)

    async def ask(self, msg: Request[R], *, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> R:
        return await self._domain.ask(self._key, msg, timeout=timeout)

    async def stop(self) -> None:
        await self._domain.passivate(self._key)

    def pause(self) -> None:
        """Pause the key: its live activation, and the next ones until resumed."""
        self._domain.pause_key(self._key)

    def resume(self) -> None:
        self._domain.resume_key(self._key)

    @property
    def paused(self) -> bool:
        # Asked of the domain: a key without a live activation is not activated for it.
        return self._domain.is_paused(self._key)

    def statistics(self) -> ActorStatistics:
        stats = self._domain.key_statistics(self._key)
        if stats is None:
            raise LookupError(f"{self.path} has no live activation")
        return stats

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KeyRef) and other._domain is self._domain and other._key == self._key
        )

    def __hash__(self) -> int:
        return hash((id(self._domain), self._key))
