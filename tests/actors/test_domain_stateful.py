"""A stateful model of a Domain (DESIGN rules 2 and 3, GUARANTEES 000/1a, 000/3a): random
mixes of tell, ask, asks with short deadlines, callers that give up, crashing messages,
explicit and idle passivation at a small cap. After every step: never two activations
or handlers of one key at once, every ask ends exactly once with an outcome that
matches what its handler did, a message removed by its deadline never runs, per-sender
order per key is kept, and live actors never exceed max_active."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any, Literal

import anyio
import msgspec
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import fiefdom

KEYS = ("k0", "k1", "k2", "k3")
MAX_ACTIVE = 2
IDLE_TIMEOUT = 0.02
Kind = Literal["quick", "slow", "block", "crash"]


class Op(fiefdom.Request[int]):
    """An ask; the reply is its id. ``block`` runs until cancelled."""

    id: int
    sender: str
    seq: int
    kind: str


class Note(msgspec.Struct):
    """A tell."""

    id: int
    sender: str
    seq: int
    kind: str


class Boom(Exception):
    pass


class Model:
    """What the actors did, recorded by the actors themselves."""

    def __init__(self) -> None:
        self.instances: Counter[str] = Counter()  # live instances per key
        self.running: Counter[str] = Counter()  # running handlers per key
        self.live_total = 0
        self.started: dict[int, str] = {}
        self.finished: set[int] = set()
        self.last_seq: dict[tuple[str, str], int] = {}
        self.violations: list[str] = []

    def violation(self, text: str) -> None:
        self.violations.append(text)


class Probe(fiefdom.Actor[Op | Note]):
    def __init__(self, key: str, model: Model) -> None:
        self.key = key
        self.model = model

    async def on_start(self) -> None:
        model = self.model
        model.instances[self.key] += 1
        model.live_total += 1
        if model.instances[self.key] > 1:
            model.violation(f"two activations of {self.key}")
        if model.live_total > MAX_ACTIVE:
            model.violation(f"{model.live_total} live actors, max_active is {MAX_ACTIVE}")

    async def on_stop(self) -> None:
        self.model.instances[self.key] -= 1
        self.model.live_total -= 1

    async def receive(self, msg: Op | Note) -> int:
        model, key = self.model, self.key
        model.running[key] += 1
        try:
            if model.running[key] > 1:
                model.violation(f"two handlers of {key} at once")
            if msg.id in model.started:
                model.violation(f"message {msg.id} ran twice")
            model.started[msg.id] = key
            last = model.last_seq.get((key, msg.sender), -1)
            if msg.seq <= last:
                model.violation(f"{key}: {msg.sender} #{msg.seq} ran after #{last}")
            model.last_seq[(key, msg.sender)] = msg.seq
            match msg.kind:
                case "crash":
                    raise Boom(msg.id)
                case "slow":
                    await anyio.sleep(0.002)
                case "block":
                    await anyio.sleep(3600)  # ended only by a deadline or a caller giving up
            model.finished.add(msg.id)
            return msg.id
        finally:
            model.running[key] -= 1


class DomainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.next_id = 0
        self.seqs: Counter[tuple[str, str]] = Counter()
        self.asks: dict[int, asyncio.Task[None]] = {}
        self.kinds: dict[int, Kind] = {}
        self.outcomes: dict[int, list[object]] = {}
        self.never_run: set[int] = set()  # removed by a deadline or a caller that gave up
        self.background: list[asyncio.Task[Any]] = []
        self.exits = contextlib.ExitStack()
        self.exits.enter_context(structlog.testing.capture_logs())  # crashes log tracebacks
        self.loop = asyncio.new_event_loop()
        self.ready = asyncio.Event()
        self.runner = self.loop.create_task(self._main())
        self.loop.run_until_complete(self.ready.wait())

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        async with fiefdom.ActorSystem(name="m") as system:
            model = self.model
            self.domain: fiefdom.Domain[str, Op | Note] = system.domain(
                "keys",
                lambda key: Probe(key, model),
                idle_timeout=IDLE_TIMEOUT,
                max_active=MAX_ACTIVE,
            )
            self.ready.set()
            await self.stop.wait()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _new(self, key: str, sender: str) -> tuple[int, int]:
        self.next_id += 1
        seq = self.seqs[(key, sender)]
        self.seqs[(key, sender)] += 1
        return self.next_id, seq

    async def _ask(self, key: str, op: Op, timeout: float | None) -> None:
        outcome: object
        try:
            outcome = await self.domain.ask(key, op, timeout=timeout)
        except asyncio.CancelledError:
            outcome = "cancelled"
            if op.id not in self.model.started:
                self.never_run.add(op.id)
            self.outcomes[op.id].append(outcome)
            raise
        except fiefdom.AskTimeout as exc:
            outcome = exc
            if exc.phase == "queued":
                if op.id in self.model.started:
                    self.model.violation(f"{op.id}: queued timeout but its handler ran")
                self.never_run.add(op.id)
            elif op.id not in self.model.started or op.id in self.model.finished:
                self.model.violation(f"{op.id}: running timeout but handler did not run/stop")
            elif not exc.handler_exited:
                self.model.violation(f"{op.id}: handler did not return within the grace")
        except Boom as exc:
            outcome = exc
            if op.kind != "crash" or op.id not in self.model.started:
                self.model.violation(f"{op.id}: unexpected crash")
        except BaseException as exc:
            outcome = exc
            self.model.violation(f"{op.id}: unexpected outcome {exc!r}")
        else:
            if outcome != op.id or op.id not in self.model.finished:
                self.model.violation(f"{op.id}: reply {outcome!r} without a finished handler")
        self.outcomes[op.id].append(outcome)

    def _start_ask(self, key: str, sender: str, kind: Kind, timeout: float | None) -> int:
        # Each ask runs in its own task, started concurrently with the others: each
        # is its own sender. (Two tasks are not ordered against each other: one that
        # finds room in the domain may overtake one still waking up for room.) The
        # teller, which awaits each send before the next, is the ordered sender.
        sender = f"{sender}-{self.next_id + 1}"
        ident, seq = self._new(key, sender)
        self.kinds[ident] = kind
        self.outcomes[ident] = []
        op = Op(ident, sender, seq, kind)
        self.asks[ident] = self.loop.create_task(self._ask(key, op, timeout))
        return ident

    async def _let_run(self, turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)

    # -- rules -------------------------------------------------------------------

    @rule(
        key=st.sampled_from(KEYS),
        kinds=st.lists(st.sampled_from(["quick", "slow", "crash"]), min_size=1, max_size=4),
        turns=st.integers(0, 5),
    )
    def tell(self, key: str, kinds: list[Kind], turns: int) -> None:
        async def send() -> None:
            for kind in kinds:
                ident, seq = self._new(key, "teller")
                self.kinds[ident] = kind
                await self.domain.tell(key, Note(ident, "teller", seq, kind))
            await self._let_run(turns)

        self.run(send())

    @rule(
        key=st.sampled_from(KEYS),
        kind=st.sampled_from(["quick", "slow", "crash"]),
        turns=st.integers(0, 5),
    )
    def ask(self, key: str, kind: Kind, turns: int) -> None:
        self._start_ask(key, "asker", kind, 10.0)
        self.run(self._let_run(turns))

    @rule(
        key=st.sampled_from(KEYS),
        kind=st.sampled_from(["block", "slow"]),
        timeout=st.sampled_from([0.0005, 0.002, 0.01, 0.03]),
        turns=st.integers(0, 5),
    )
    def ask_with_deadline(self, key: str, kind: Kind, timeout: float, turns: int) -> None:
        self._start_ask(key, "asker", kind, timeout)
        self.run(self._let_run(turns))

    @rule(key=st.sampled_from(KEYS), turns=st.integers(0, 8))
    def caller_gives_up(self, key: str, turns: int) -> None:
        """A caller without a deadline is cancelled after a few turns."""
        ident = self._start_ask(key, "quitter", "block", None)

        async def cancel_later() -> None:
            await self._let_run(turns)
            task = self.asks[ident]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.run(cancel_later())

    @rule(key=st.sampled_from(KEYS), turns=st.integers(0, 5))
    def passivate(self, key: str, turns: int) -> None:
        self.background.append(self.loop.create_task(self.domain.passivate(key)))
        self.run(self._let_run(turns))

    @rule(ms=st.sampled_from([1, 5, 25]))
    def time_passes(self, ms: int) -> None:
        """Lets deadlines and idle timeouts expire (part of the model, not a wait for one)."""
        self.run(asyncio.sleep(ms / 1000))

    # -- checks after every step --------------------------------------------------

    @invariant()
    def no_violation(self) -> None:
        assert self.model.violations == []

    @invariant()
    def within_the_cap(self) -> None:
        assert self.domain.statistics().live <= MAX_ACTIVE
        assert self.model.live_total <= MAX_ACTIVE
        assert all(n <= 1 for n in self.model.instances.values())
        assert all(n <= 1 for n in self.model.running.values())

    @invariant()
    def removed_messages_never_ran(self) -> None:
        assert not (self.never_run & self.model.started.keys())

    @invariant()
    def each_ended_ask_ended_once(self) -> None:
        for ident, task in self.asks.items():
            if task.done():
                assert len(self.outcomes[ident]) == 1, (ident, self.outcomes[ident])

    def teardown(self) -> None:
        try:
            self.run(self._drain())
            assert self.model.violations == []
            assert not (self.never_run & self.model.started.keys())
            for ident, outcome in self.outcomes.items():
                assert len(outcome) == 1, (ident, outcome)
            assert self.model.live_total == 0
            assert sum(self.model.running.values()) == 0
            assert self.domain.statistics().live == 0
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.exits.close()

    async def _drain(self) -> None:
        tasks = [*self.asks.values(), *self.background]
        if tasks:
            # Every ask has a deadline or was cancelled: none may hang.
            done, pending = await asyncio.wait(tasks, timeout=20)
            for task in pending:
                task.cancel()
            assert not pending, f"{len(pending)} asks or passivations never ended"
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise AssertionError("background task failed") from task.exception()
        self.stop.set()
        await self.runner


DomainMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDomainModel = DomainMachine.TestCase
TestDomainModel.__doc__ = "The domain model holds after every step of random interleavings."
