"""The runtime of one actor: its mailbox, its current instance and the loop that
feeds messages to ``receive`` one at a time. A cell outlives restarts (refs stay
valid, the mailbox is kept); each incarnation is one call of ``Cell.serve``."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import anyio
import msgspec
from structlog.typing import FilteringBoundLogger

from .._errors import (
    ActivationFailed,
    ActorStopped,
    AskTimeout,
    CallCycleError,
    MailboxFull,
    OwnerUnavailable,
)
from .._lifecycle import StopMode as StopMode
from .._log import get_logger
from .._throttle import exc_fields
from ._envelope import DONE, QUEUED, RUNNING, Ask, AskHost
from ._mailbox import EMPTY, Mailbox
from ._message import Invoke, Request

M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)
R = TypeVar("R")


class Hosted(Protocol[M_contra]):
    """What a cell runs: an ``Actor`` (defined above the cell, in ``_actor``)."""

    _fiefdom_cell: Any

    async def on_start(self) -> None: ...

    async def on_stop(self) -> None: ...

    async def receive(self, msg: M_contra) -> object: ...


DEFAULT_CAPACITY = 1000
DEFAULT_ASK_TIMEOUT = 5.0
DEFAULT_CANCEL_GRACE = 5.0

# The cell whose incarnation runs in this task (None outside actors), set once per
# incarnation: run_process and the actor's context find their owner through it.
current_cell: contextvars.ContextVar[Cell[Any] | None] = contextvars.ContextVar(
    "fiefdom_current_cell", default=None
)
# The ask whose handler is running in this task, or that started this task: a task
# created inside a handler inherits it (its asks belong to that call chain while the
# handler runs), a task created in on_start does not (it waits on behalf of nobody).
# Set per ask only, never per tell.
handling: contextvars.ContextVar[Ask | None] = contextvars.ContextVar(
    "fiefdom_handling", default=None
)


# The call chain of an ask forwarded from another node of the cluster (the paths of
# the actors waiting on it there), set by the task that delivers it: the ask made
# in that task, and every ask its handler makes, carry it on.
forwarded_from: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "fiefdom_forwarded_from", default=()
)


def chain_paths() -> tuple[str, ...]:
    """The paths of the actors waiting on the ask being handled in this task (the
    ones on other nodes first, this task's actor last): the chain an ask forwarded
    from here carries. Empty outside a handler of an ask."""
    running = handling.get()
    if running is None or running.state != RUNNING:
        return forwarded_from.get()
    return (*running.origin, *(c.path for c in running.chain), running.cell.path)


class ActorState(enum.StrEnum):
    """Lifecycle of an actor cell."""

    PENDING = "pending"  # created; waiting to start (a domain actor waiting for a slot)
    STARTING = "starting"  # running on_start
    RUNNING = "running"
    RESTARTING = "restarting"  # between incarnations; the mailbox is kept
    STOPPING = "stopping"
    STOPPED = "stopped"


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True, tag="actor", tag_field="kind"):
    """A snapshot of one actor, as ``ref.statistics()`` returns it."""

    path: str
    key: str | None
    state: ActorState
    mailbox_depth: int
    mailbox_capacity: int
    messages_handled: int
    current_message: str | None
    current_for: float | None  # seconds the current message has been running
    restarts: int
    stuck: bool  # a cancelled handler has not returned within the grace period
    processes: tuple[int, ...]
    paused: bool = False  # takes no next message until resumed (``ref.pause()``)


class StartFailed(ActivationFailed):
    """The actor's factory or on_start raised (the cause is the original error)."""


class Cell(Generic[M]):
    """The runtime of one actor, driven by its owner (a supervisor or a domain): the
    mailbox, the current instance, the message loop, deadlines and statistics.
    Users talk to it through an ``ActorRef``; owners call ``serve``, ``request_stop``,
    ``cancel``, ``reset`` and ``close``."""

    # A domain keeps up to max_active cells alive and the cyclic garbage collector
    # scans every object they hold, so a cell allocates little up front: the stopped
    # event, the set of processes and the logger are made when first needed.
    __slots__ = (
        "__weakref__",
        "_cancel_requested_at",
        "_cancel_warns",
        "_cancelled",
        "_deadline_at",
        "_deadline_timer",
        "_gate",
        "_held",
        "_is_stopped",
        "_log",
        "_loop",
        "_processes",
        "_running_ask",
        "_scope",
        "_stopped",
        "cancel_grace",
        "current",
        "current_since",
        "factory",
        "handled",
        "idle",
        "instance",
        "key",
        "mailbox",
        "on_idle",
        "path",
        "paused",
        "placed",
        "predecessor",
        "restarts",
        "state",
        "stop_mode",
    )

    def __init__(
        self,
        factory: Callable[[], Hosted[M]],
        path: str,
        *,
        key: object = None,
        capacity: int = DEFAULT_CAPACITY,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> None:
        self.factory = factory
        self.path = path
        self.key = key
        self.mailbox = Mailbox(capacity, path)
        self.cancel_grace = cancel_grace
        self.instance: Hosted[M] | None = None
        self.state = ActorState.PENDING
        self.stop_mode: StopMode | None = None
        self.paused = False
        # A domain's key placed by a cluster: whether this process still owns the key
        # (one function shared by the domain's cells), asked before each message.
        self.placed: Callable[[Any], bool] | None = None
        # True while the loop must look before taking its next message: a stop was
        # requested, the actor is paused, or its key is placed. The loop reads this
        # one attribute per message, so none of them costs the hot path more.
        self._gate = False
        self._held: asyncio.Future[None] | None = None  # the paused loop waits on it
        self.handled = 0
        self.restarts = 0
        self.current: object | None = None
        self.current_since = 0.0
        self.idle = False
        self.on_idle: Callable[[Cell[M]], None] | None = None
        self.predecessor: Cell[M] | None = None
        self._processes: set[int] | None = None
        self._stopped: asyncio.Event | None = None
        self._is_stopped = False
        self._running_ask: Ask | None = None
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False  # the owner cancelled this incarnation (``cancel``)
        self._cancel_warns = True  # a cancelled incarnation logs that it was
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None
        self._cancel_requested_at: float | None = None
        self._log: Any = None
        # The loop of the running incarnation, looked up once per incarnation: Python
        # 3.11's asyncio.get_running_loop costs a getpid system call, and an ask
        # looked it up three times.
        self._loop: asyncio.AbstractEventLoop | None = None

    def make_instance(self) -> Hosted[M]:
        """A fresh instance for the next incarnation (a domain's cell passes its key)."""
        return self.factory()

    # -- lazily made parts ---------------------------------------------------------

    @property
    def log(self) -> FilteringBoundLogger:
        # Bound lazily: a domain may create a million cells that never log.
        if self._log is None:
            log = get_logger("fiefdom.actor").bind(actor=self.path)
            self._log = log.bind(key=str(self.key)) if self.key is not None else log
        return cast(FilteringBoundLogger, self._log)

    @property
    def processes(self) -> set[int]:
        """The pids of the subprocesses its handlers are running (see run_process)."""
        if self._processes is None:
            self._processes = set()
        return self._processes

    @property
    def stopped(self) -> asyncio.Event:
        """Set once the actor is gone for good (``close``); cleared by ``reset``."""
        event = self._stopped
        if event is None:
            # Made only for someone who waits: most cells stop unobserved.
            self._stopped = event = asyncio.Event()
            if self._is_stopped:
                event.set()
        return event

    def _set_stopped(self) -> None:
        self._is_stopped = True
        if self._stopped is not None:
            self._stopped.set()

    # -- sending -----------------------------------------------------------------

    def tell_nowait(self, msg: object) -> None:
        if not self.mailbox.put_nowait(msg):
            raise MailboxFull(self.path, self.mailbox.capacity)

    async def tell(self, msg: object) -> None:
        if not self.mailbox.put_nowait(msg):
            await self.mailbox.put(msg)

    async def ask(self, msg: object, timeout: float | None) -> object:
        ask = self.new_ask(msg, timeout)
        if not self.queue_ask(ask):
            try:
                with anyio.fail_after(timeout):
                    await self.mailbox.put(ask)
            except TimeoutError:
                raise self.timeout_error(ask, "queued") from None
            if ask.deadline is not None:
                loop = asyncio.get_running_loop()
                ask.timer = loop.call_at(ask.deadline, ask.on_deadline)
        try:
            return await ask.future
        except asyncio.CancelledError:
            ask.abandon()
            # A cancelled caller goes on only once the handler it started has really
            # returned (a subprocess killed and reaped), as a deadline's caller does:
            # whoever it answers to may hand the resource to someone else at once
            # (a job engine giving the job back). A handler ignoring its cancellation
            # is waited on for the grace period, then reported stuck.
            await ask.wait_exited(self.cancel_grace)
            raise

    def new_ask(self, msg: object, timeout: float | None) -> Ask:
        """An ask of ``msg`` on behalf of the running task, not queued yet: its call
        chain checked for a cycle, its deadline set. A ``timeout`` of 0 or less raises
        AskTimeout ("queued") at once, or ActorStopped when the actor is gone.

        ``ask`` is ``new_ask``, ``queue_ask`` and a wait on ``Ask.future``; a caller that
        cannot wait in a task of its own (the control channel answering from a
        callback) takes the first two and reads the future when it is done: to give
        up, it calls ``Ask.abandon``."""
        running = handling.get()
        if running is None or running.state != RUNNING:
            # Not on behalf of a running handler (or its handler has returned, so
            # nobody waits on it): the chain starts here, or where a forwarded ask
            # from another node began it.
            chain: tuple[AskHost, ...] = ()
            origin = forwarded_from.get()
        else:
            # Asked from a handler of an ask (or a task it started): its chain and it.
            chain = (*running.chain, running.cell)
            origin = running.origin
            if self in chain:
                start = chain.index(self)
                raise CallCycleError([c.path for c in chain[start:]] + [self.path])
        if origin and self.path in origin:
            # The chain left this node and came back to an actor waiting on it.
            paths = [*origin, *(c.path for c in chain)]
            raise CallCycleError([*paths[paths.index(self.path) :], self.path])
        loop = self._loop or asyncio.get_running_loop()
        ask = Ask(self, msg, loop.create_future(), chain, timeout, origin)
        if timeout is not None:
            if timeout <= 0:
                if self.mailbox.closed:
                    self.mailbox.put_nowait(ask)  # raises ActorStopped, as any put would
                raise self.timeout_error(ask, "queued")
            ask.deadline = loop.time() + timeout
        return ask

    def queue_ask(self, ask: Ask) -> bool:
        """Put ``ask`` (from ``new_ask``) in the mailbox without waiting; False when the
        mailbox is full (nothing was queued). Raises ActorStopped when it is closed."""
        mailbox = self.mailbox
        deadline = ask.deadline
        # No timer of its own, as a rule: the cell's deadline timer covers its running
        # phase (see _watch_deadline), and its queued phase too when it waits behind
        # other messages. An actor idle in its loop starts it on the next turn, where
        # its deadline is watched.
        starts_next = deadline is not None and mailbox.reader_idle()
        if not mailbox.put_nowait(ask):
            return False
        if deadline is not None and not starts_next:
            at = self._deadline_at
            if at is None or at > deadline:
                self._watch_deadline(deadline)
        return True

    def _respond(self, ask: Ask, future: asyncio.Future[object], result: object) -> None:
        """Set the result of ``ask``'s future, calling its responder (``Ask.respond``)
        now if it has one."""
        respond = ask.respond
        if respond is None:
            future.set_result(result)
            return
        ask.respond = None
        # Not scheduled as a done callback: called below, in this turn.
        future.remove_done_callback(respond)
        future.set_result(result)
        try:
            respond(future)
        except Exception:
            self.log.error("an ask's responder raised", **exc_fields())

    def timeout_error(
        self, ask: Ask, phase: Literal["queued", "running"], **kw: bool
    ) -> AskTimeout:
        return AskTimeout(self.path, type(ask.msg).__name__, ask.timeout or 0.0, phase, **kw)

    def _watch_deadline(self, deadline: float) -> None:
        """Make sure the cell's deadline timer fires by ``deadline`` (of the running ask,
        or of one queued without a timer of its own). The timer is not cancelled when
        an ask finishes: when it fires it looks at the asks running and queued then and
        re-arms for the earliest deadline, so with a steady stream of asks it is
        re-armed about once per timeout instead of once per ask."""
        at = self._deadline_at
        if at is None or at > deadline:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            loop = self._loop or asyncio.get_running_loop()
            self._deadline_timer = loop.call_at(deadline, self._on_deadline_timer)
            self._deadline_at = deadline

    def _on_deadline_timer(self) -> None:
        self._deadline_timer = None
        self._deadline_at = None
        # A timer may fire a little early (uvloop counts whole milliseconds).
        now = asyncio.get_running_loop().time() + 0.001
        later: float | None = None  # the earliest deadline still to come
        ask = self._running_ask
        # (An ask with a timer of its own is left to it.)
        if ask is not None and ask.deadline is not None and ask.timer is None:
            if ask.deadline > now:
                later = ask.deadline
            else:
                ask.on_deadline()
        if self.mailbox.depth:
            for queued in self.mailbox.queued_asks():
                deadline = queued.deadline
                if deadline is None or queued.timer is not None:
                    continue
                if deadline > now:
                    if later is None or deadline < later:
                        later = deadline
                else:
                    queued.on_deadline()  # removed unrun
        if later is not None:
            self._watch_deadline(later)

    def _stop_deadline_timer(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
            self._deadline_at = None

    def cancel_running(self, ask: Ask) -> None:
        scope = self._scope
        if self._running_ask is ask and scope is not None and not ask.cancelled:
            ask.cancelled = True
            self._cancel_requested_at = time.monotonic()
            scope.cancel()

    # -- running -----------------------------------------------------------------

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Run one incarnation: create the instance, start it, handle messages until
        a stop is requested, stop it. Raises what a handler raised (a crash), or
        StartFailed when the factory or on_start raised."""
        placed = self.placed
        if placed is not None and not placed(self.key):
            # The key became another node's while this activation waited (for a slot,
            # for its predecessor to stop, or to restart): on_start does not run either,
            # since it may act on the key's resource as its owner.
            self._placed_elsewhere()
            self.state = ActorState.STOPPING
            return
        current_cell.set(self)
        loop = self._loop = asyncio.get_running_loop()
        # The task was made in the context of whoever activated the actor, maybe a
        # forwarded ask: its chain is that ask's, not the actor's later messages'.
        if forwarded_from.get():
            forwarded_from.set(())
        self.state = ActorState.STARTING
        self._cancelled = False
        # One coroutine and, as a rule, one cancel scope per incarnation: a domain may
        # activate thousands of actors a second, and every frame of the loop is resumed
        # once per message. The scope covers on_start and the messages. Each message is
        # cancellable on its own, yet a scope per message costs as much as the rest of
        # an ask: the scope is cancelled only to cancel the running ask (cancel_running)
        # or the whole incarnation (cancel). After a cancelled handler has returned the
        # scope is left, before any other await so the cancellation reaches no other
        # message, and the next messages run in a fresh one.
        # No bound methods kept in locals (instance.receive, loop.time): the frame of an
        # idle actor would hold them, and the garbage collector scans each of them.
        mailbox = self.mailbox
        instance: Hosted[M] | None = None
        end = False
        try:
            while True:
                scope = self._scope = anyio.CancelScope()
                # Entered and left by hand, not with ``with``: the statement keeps the
                # scope's bound __exit__ on the frame of every idle actor, one more object
                # for the garbage collector to scan.
                scope.__enter__()
                try:
                    if instance is None:
                        try:
                            instance = self.make_instance()
                            instance._fiefdom_cell = self
                            if type(instance).on_start is not _default_on_start:
                                await instance.on_start()
                        except Exception as exc:
                            text = f"actor {self.path} failed to start: {exc!r}"
                            raise StartFailed(text) from exc
                        # Only now: on_stop pairs with an on_start that completed.
                        self.instance = instance
                        self.state = ActorState.RUNNING
                        if started is not None:
                            started()
                    while True:
                        if self._gate:
                            mode = self.stop_mode
                            if mode is None and self.paused:
                                # Paused: the current message has finished; the next
                                # waits for resume (or for a stop, which overrides).
                                await self._hold()
                                continue
                            if mode is not None and mode != "drain":
                                end = True
                                break
                            placed = self.placed
                            if placed is not None and mailbox.depth and not placed(self.key):
                                self._placed_elsewhere()
                                end = True
                                break
                        item = mailbox.get_nowait()
                        if item is EMPTY:
                            if self.stop_mode == "drain":
                                end = True
                                break
                            if self.on_idle is not None:
                                self.on_idle(self)
                                if self.stop_mode is not None:
                                    continue
                            # A plain future: no coroutine per wait.
                            waiter = mailbox.waiter(loop)
                            if waiter is not None:
                                await waiter
                            continue
                        if type(item) is not Ask:
                            self.current = item
                            self.current_since = time.monotonic()
                            try:
                                # The mailbox holds what tell accepted as an M.
                                await instance.receive(item)  # type: ignore[arg-type]
                            finally:
                                self.current = None
                                self.handled += 1
                            continue
                        # An ask, handled inline: a coroutine less per ask on the hottest path.
                        deadline = item.deadline
                        if deadline is not None:
                            if loop.time() >= deadline:
                                # Due, but its timer has not run yet: expired while
                                # queued, so it never runs.
                                item.finish()
                                if not item.future.done():
                                    item.future.set_exception(self.timeout_error(item, "queued"))
                                continue
                            if item.timer is None:
                                at = self._deadline_at
                                if at is None or at > deadline:
                                    self._watch_deadline(deadline)
                        item.state = RUNNING
                        self.current = msg = item.msg
                        self.current_since = time.monotonic()
                        self._running_ask = item
                        token = handling.set(item)
                        try:
                            if type(msg) is Invoke:
                                result = await msg.fn(instance)
                            else:
                                result = await instance.receive(msg)  # type: ignore[arg-type]
                        except BaseException as exc:
                            item.finish()
                            if not item.future.done():
                                item.future.set_exception(self._failure_of(item, exc))
                            raise  # our own cancellation is caught by the scope
                        finally:
                            handling.reset(token)
                            self._running_ask = None
                            self.current = None
                            self._cancel_requested_at = None
                            self.handled += 1
                        # (Ask.finish, inline when it has only its state to set: no
                        # timer of its own, no caller waiting for the handler to exit.)
                        if item.timer is None and item.exited is None:
                            item.state = DONE
                        else:
                            item.finish()
                        future = item.future
                        if not future.done():
                            # Even past its deadline: the work was done, and a timeout
                            # would tell the caller it was not (it might do it twice).
                            self._respond(item, future, result)
                        # An idle actor holds no old reply, nor the token (the garbage
                        # collector would scan it on every live actor).
                        del result, msg, future, token
                        if item.cancelled:  # the handler swallowed its cancellation
                            break
                except BaseException as exc:
                    if not scope.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                else:
                    scope.__exit__(None, None, None)
                # Left after a cancelled handler returned: go on in a fresh scope, unless
                # the incarnation ends (or was cancelled, maybe before it even started).
                if end or self._cancelled or self.instance is None:
                    break
        finally:
            self.state = ActorState.STOPPING
            self._scope = None
            self._stop_deadline_timer()
            # Queued asks have no timer of their own, as a rule (see queue_ask): the
            # cell's, stopped above, watched them. Those this incarnation will not
            # start get theirs now.
            for ask in mailbox.queued_asks():
                if ask.timer is None and ask.deadline is not None:
                    loop = asyncio.get_running_loop()
                    ask.timer = loop.call_at(ask.deadline, ask.on_deadline)
            inst, self.instance = self.instance, None
            # The default on_stop does nothing: skip its two cancel scopes (a domain
            # may activate and passivate thousands of actors a second).
            if inst is not None and type(inst).on_stop is not _default_on_stop:
                await self._stop_instance(inst)
            self._cancel_requested_at = None  # whatever was cancelled has returned
            self._loop = None  # the next incarnation looks it up again
        if self._cancelled and self._cancel_warns and scope.cancelled_caught:
            self.log.warning("actor cancelled at its shutdown deadline")

    async def _stop_instance(self, instance: Hosted[M]) -> None:
        # on_stop runs even when the incarnation was cancelled, within the grace period.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.cancel_grace):
            try:
                await instance.on_stop()
            except Exception:
                self.log.error("on_stop raised", **exc_fields())

    def _failure_of(self, ask: Ask, exc: BaseException) -> BaseException:
        """What the caller of a running ask gets when its handler raised ``exc``."""
        if ask.cancelled:
            # Our own cancellation (deadline or caller), or the handler turned it into
            # an error: either way it timed out while running.
            return self.timeout_error(ask, "running")
        if isinstance(exc, Exception):
            return exc  # a crash fails this ask with its error
        # Cancelled from outside: the actor's shutdown deadline.
        return ActorStopped(self.path, "it was cancelled while handling this message")

    async def _hold(self) -> None:
        """Take no message until resumed or asked to stop (the caller looks again)."""
        mailbox = self.mailbox
        # Asks sent while the actor was idle have no timer of their own, nor the
        # cell's (see queue_ask): they keep their deadlines while it is paused.
        loop = asyncio.get_running_loop()
        for ask in mailbox.queued_asks():
            if ask.timer is None and ask.deadline is not None:
                ask.timer = loop.call_at(ask.deadline, ask.on_deadline)
        while self.paused and self.stop_mode is None:
            if mailbox.depth == 0 and self.on_idle is not None:
                # Nothing queued (now, or again once queued asks expired): a domain
                # may passivate it like any idle actor (it remembers the pause for
                # the key's next activation).
                self.on_idle(self)
                if self.stop_mode is not None:
                    break
            held = self._held = loop.create_future()
            try:
                await held
            finally:
                self._held = None

    def _release(self) -> None:
        held = self._held
        if held is not None and not held.done():
            held.set_result(None)

    def queued_ask_removed(self) -> None:
        """A queued ask left the mailbox unrun (deadline, or its caller gave up). A
        paused actor left with nothing queued looks again: it is idle now, and a
        domain may passivate it (otherwise it would hold its slot until resumed)."""
        if self._held is not None and self.mailbox.depth == 0:
            self._release()

    def pause(self) -> None:
        """Take no next message until ``resume``: the running handler finishes, the
        mailbox keeps accepting (up to its capacity) and queued asks keep their
        deadlines. A pause outlives restarts; a stop request overrides it."""
        self.paused = True
        self._gate = True
        # An idle loop waits on the mailbox, where a new ask would count on it to
        # start at once (and go without a timer): move it to the pause.
        self.mailbox.wake()

    def resume(self) -> None:
        """Take messages again, in the order they were sent."""
        self.paused = False
        self._gate = self.stop_mode is not None or self.placed is not None
        self._release()

    def place(self, placed: Callable[[Any], bool] | None) -> None:
        """Ask ``placed(key)`` before each message whether this process still owns the
        key (None: no longer ask)."""
        self.placed = placed
        self._gate = self.paused or self.stop_mode is not None or placed is not None

    def _placed_elsewhere(self) -> None:
        """The key is another node's now, though no one has told this actor yet: a
        process paused past its lease resumes with messages queued, some turns of the
        event loop before its lease loop notices and fences it. None of them runs:
        asks fail OwnerUnavailable (the caller may send again, to the key's owner),
        tells are dropped, and the incarnation ends."""
        self.mailbox.close("its key is owned by another node now")
        self.stop_mode = "exit"
        dropped = self._fail_queued_asks(
            lambda: OwnerUnavailable(self.path, "its lease lapsed while the ask waited")
        )
        self.log.warning("messages not run: the key is owned elsewhere now", dropped_tells=dropped)

    def request_stop(self, mode: StopMode) -> None:
        """Ask the running incarnation to end: ``restart`` after the current message
        (mailbox kept), ``drain`` once the mailbox is empty (no new messages taken),
        ``exit`` after the current message (no new messages taken). A stop overrides a
        pause: a paused actor asked to drain handles what is queued, so that stopping
        never waits on a resume that may not come. ``cancel`` is ``exit`` with the
        running handler cancelled."""
        if mode == "cancel":
            self.request_stop("exit")
            self.cancel()
            return
        if self.stop_mode is None or mode != "drain":
            self.stop_mode = mode
        self._gate = True
        if mode != "restart":
            self.mailbox.close("it is stopping")
        self.mailbox.wake()
        self._release()

    def reset(self) -> None:
        """Prepare for a new incarnation after a restart (the mailbox is kept, and so
        is a pause)."""
        self.stop_mode = None
        self._gate = self.paused or self.placed is not None
        self.mailbox.reopen()
        if self._is_stopped:
            self._is_stopped = False
            self._stopped = None  # whoever waited on the old event has been woken
        self.state = ActorState.RESTARTING
        self.restarts += 1

    def cancel(self, *, warn: bool = True) -> None:
        """Cancel the running incarnation (a shutdown deadline passed). ``warn=False``:
        its owner is cancelled as a whole, and the incarnation logs nothing of its own
        (a domain may hold thousands)."""
        if self._scope is not None:
            if not self._cancelled:
                self._cancel_warns = warn
            self._cancelled = True
            self._cancel_requested_at = time.monotonic()
            self._scope.cancel()

    def close(self, reason: str) -> None:
        """The actor is gone for good: refuse messages; queued asks fail, tells are dropped."""
        self.mailbox.close(reason)
        self.state = ActorState.STOPPED
        dropped = self._fail_queued_asks(lambda: ActorStopped(self.path, reason))
        if dropped:
            self.log.warning("dropped messages of a stopped actor", dropped=dropped)
        self._set_stopped()

    def fail_queued(self, exc: BaseException) -> None:
        """Fail every queued ask with ``exc`` (the actor could not be activated)."""

        def error() -> BaseException:
            err = ActivationFailed(f"actor {self.path} could not be activated: {exc!r}")
            err.__cause__ = exc
            return err

        self._fail_queued_asks(error)

    def _fail_queued_asks(self, error: Callable[[], BaseException]) -> int:
        """Empty the mailbox: each queued ask fails with an ``error()`` of its own;
        returns how many tells were dropped."""
        dropped = 0
        for item in self.mailbox.drain():
            if type(item) is Ask:
                item.finish()
                if not item.future.done():
                    item.future.set_exception(error())
            else:
                dropped += 1
        return dropped

    def statistics(self) -> ActorStatistics:
        now = time.monotonic()
        running = self.current is not None
        cancel_at = self._cancel_requested_at
        return ActorStatistics(
            path=self.path,
            key=None if self.key is None else str(self.key),
            state=self.state,
            mailbox_depth=self.mailbox.depth,
            mailbox_capacity=self.mailbox.capacity,
            messages_handled=self.handled,
            current_message=_describe(self.current) if running else None,
            current_for=now - self.current_since if running else None,
            restarts=self.restarts,
            stuck=cancel_at is not None and now - cancel_at > self.cancel_grace,
            processes=tuple(sorted(self._processes or ())),
            paused=self.paused,
        )


# The base class's own hooks, which do nothing: a cell skips calling them (a domain
# may activate and passivate thousands of actors a second). ``Actor``'s module
# registers them (it imports this one, never the other way round).
_default_on_start: object = None
_default_on_stop: object = None


def register_default_hooks(on_start: object, on_stop: object) -> None:
    global _default_on_start, _default_on_stop
    _default_on_start, _default_on_stop = on_start, on_stop


def _describe(msg: object) -> str:
    return msg.name if type(msg) is Invoke else type(msg).__name__


__all__ = [
    "DONE",
    "QUEUED",
    "ActorState",
    "ActorStatistics",
    "Cell",
    "Request",
]
