"""A domain message starts only while its node owns its key (DESIGN rule 2,
"Cluster"; GUARANTEES 000/1a "stale owner"): the key's actor asks before each
message, not only when the key was activated.

Messages queue in a live actor's mailbox. A process paused past its lease (SIGSTOP, a
long pause) resumes with that actor about to take the next one, some turns of the
event loop before its lease loop runs and fences the key. Here the window is held
open by a message the actor is busy with, and the pause is what it leaves behind: a
lease no longer fresh while the node's loop has not yet run (its last renewal moved
into the past). A keyed job has the same check with its own outcome
(``test_ownership_at_start.py``)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import anyio
import pytest

import fiefdom
from fiefdom.cluster import Node
from fiefdom.storage import Store

sys.path.insert(0, str(Path(__file__).parent.parent / "storage"))

from storage_helpers import wait_until

KEY = "doc-1"


class Busy(fiefdom.Request[None]):
    """Keep the key's actor busy until the test lets it go."""


class Note(fiefdom.Request[str]):
    text: str


Msg = Busy | Note


class Owner(fiefdom.Actor[Msg]):
    gate: anyio.Event
    ran: list[str]

    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Msg) -> str | None:
        if isinstance(msg, Busy):
            await Owner.gate.wait()
            return None
        Owner.ran.append(msg.text)
        return msg.text


@pytest.mark.parametrize("stale", [True, False], ids=["lease-stale", "lease-fresh"])
async def test_messages_waiting_in_a_key_s_mailbox_start_only_if_its_lease_is_still_fresh(
    store: Store, stale: bool
) -> None:
    """An ask and a tell wait behind a busy message. With the lease gone stale
    meanwhile neither handler starts: the ask fails OwnerUnavailable (nothing ran; the
    caller may send it again, to the key's owner) and the tell is dropped. With the
    lease fresh both run (the check stops only what it must)."""
    Owner.gate = anyio.Event()
    Owner.ran = []
    async with fiefdom.ActorSystem(name="message-start-check") as system:
        res = system.domain("res", Owner, idle_timeout=None)
        # A long lease: the node's loop renews every 10 s, so it does not run (and
        # refresh the lease) while the test holds the window open.
        engine = fiefdom.JobEngine(
            store, domains={"res": res}, lease=30.0, poll_interval=0.05, retention=None
        )
        async with engine, anyio.create_task_group() as group:
            node = engine.ownership
            assert isinstance(node, Node)
            await wait_until(lambda: res.is_local(KEY), what="the node to own the key")
            group.start_soon(res.ask, KEY, Busy())
            await wait_until(lambda: res.is_active(KEY), what="the key's actor to be busy")
            outcome: list[object] = []

            async def ask() -> None:
                try:
                    outcome.append(await res.ask(KEY, Note(text="asked")))
                except fiefdom.OwnerUnavailable as exc:
                    outcome.append(exc)

            group.start_soon(ask)
            await res.tell(KEY, Note(text="told"))

            def queued_behind() -> bool:
                stats = res.key_statistics(KEY)
                return stats is not None and stats.mailbox_depth >= 2

            await wait_until(queued_behind, what="both messages to wait in the mailbox")
            if stale:
                # What a pause past the lease leaves: the last renewal long ago, the
                # node's loop not yet woken to notice it.
                node._renewed_at = -math.inf
            Owner.gate.set()
            await wait_until(lambda: outcome != [], what="the ask to be answered")
            if stale:
                assert isinstance(outcome[0], fiefdom.OwnerUnavailable), outcome
                assert f"res/{KEY}" in str(outcome[0])
                await wait_until(lambda: not res.is_active(KEY), what="the actor to end")
                assert Owner.ran == []
                # Let the node renew, so that the engine stops with its partitions
                # held, as a live node does.
                node._renewed_at = time.monotonic()
            else:
                assert outcome == ["asked"]
                await wait_until(lambda: len(Owner.ran) == 2, what="the tell to run")
                assert sorted(Owner.ran) == ["asked", "told"]


async def test_a_placement_added_to_live_actors_is_asked_before_their_next_message() -> None:
    """Actors activated before a placement was added are checked from then on, and no
    longer once it is removed."""

    class Elsewhere:
        def is_local(self, key: object) -> bool:
            return False

    Owner.gate = anyio.Event()
    Owner.ran = []
    async with fiefdom.ActorSystem(name="late-placement") as system:
        res = system.domain("res", Owner, idle_timeout=None)
        assert await res.ask(KEY, Note(text="before")) == "before"
        remove = res.add_placement(Elsewhere())
        with pytest.raises(fiefdom.OwnerUnavailable):
            await res.ask(KEY, Note(text="placed"))
        remove()
        assert await res.ask(KEY, Note(text="after")) == "after"
        assert Owner.ran == ["before", "after"]


class Starter(fiefdom.Actor[Note]):
    started: list[str]

    def __init__(self, key: str) -> None:
        self.key = key

    async def on_start(self) -> None:
        Starter.started.append(self.key)

    async def receive(self, msg: Note) -> str:
        if msg.text == "hold":
            await Owner.gate.wait()
        return msg.text


async def test_an_activation_whose_key_moved_while_it_waited_does_not_start() -> None:
    """on_start acts as the key's owner too: an activation that waited for a slot
    while its key became another node's never runs it. Its ask fails OwnerUnavailable
    (nothing ran) and the key's actor is not left active."""

    class Placement:
        elsewhere: set[str] = set()

        def is_local(self, key: object) -> bool:
            return key not in self.elsewhere

    Owner.gate = anyio.Event()
    Starter.started = []
    placement = Placement()
    async with fiefdom.ActorSystem(name="start-placement") as system:
        res = system.domain("res", Starter, idle_timeout=None, max_active=1)
        res.add_placement(placement)
        async with anyio.create_task_group() as group:
            group.start_soon(res.ask, "a", Note(text="hold"))
            await wait_until(lambda: Starter.started == ["a"], what="a to hold the one slot")
            outcome: list[object] = []

            async def ask_b() -> None:
                try:
                    outcome.append(await res.ask("b", Note(text="b")))
                except fiefdom.OwnerUnavailable as exc:
                    outcome.append(exc)

            group.start_soon(ask_b)
            await wait_until(lambda: res.statistics().waiting >= 1, what="b to wait for the slot")
            placement.elsewhere.add("b")
            Owner.gate.set()
            await wait_until(lambda: outcome != [], what="b's ask to be answered")
        assert isinstance(outcome[0], fiefdom.OwnerUnavailable), outcome
        assert Starter.started == ["a"]
        assert not res.is_active("b")
