"""An ask whose deadline passes before its idle actor gets to take it (the event loop
was busy elsewhere) is removed unrun: the queued phase of DESIGN rule 3 holds even
for an ask that has no timer of its own because its actor was idle when it was sent."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import fiefdom
from fiefdom.actors._cell import Cell


class Note(fiefdom.Request[str]):
    tag: str


class Recorder(fiefdom.Actor[Note]):
    """Logs the tag of every message its handler begins."""

    def __init__(self, began: list[str]) -> None:
        self.began = began

    async def receive(self, msg: Note) -> str:
        self.began.append(msg.tag)
        return msg.tag


async def _expires_before_taken(cell: Cell[Any], tag: str) -> fiefdom.AskTimeout:
    """Ask ``cell``'s idle actor ``Note(tag)`` with a 10 ms deadline, queued as ``ask``
    queues it before it waits (``new_ask``, ``queue_ask``), and keep the loop busy past
    that deadline with no await in between, so that the actor cannot take the message
    before its deadline has passed; return the AskTimeout the caller gets."""
    ask = cell.new_ask(Note(tag), 0.01)
    assert cell.queue_ask(ask)
    assert cell.mailbox.depth == 1, "the ask should be queued, not yet taken"
    # The loop is blocked on purpose: no task runs, so the actor cannot take the
    # message before its deadline has passed.
    time.sleep(0.05)  # noqa: ASYNC251
    with anyio.fail_after(10), pytest.raises(fiefdom.AskTimeout) as info:
        await ask.future
    return info.value


async def test_an_ask_past_its_deadline_before_an_idle_actor_took_it_never_starts() -> None:
    """An idle actor that gets to an ask only after its deadline drops it: the handler
    never begins and the caller's AskTimeout says the phase was "queued"."""
    began: list[str] = []
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Recorder(began), name="idle")
        assert await ref.ask(Note("warm-up")) == "warm-up"  # started, now idle
        error = await _expires_before_taken(ref._cell(), "late")
        assert error.phase == "queued"
        assert error.handler_exited
        assert "never ran" in str(error)
        assert ref.statistics().mailbox_depth == 0
        # The actor is unharmed and takes the next message.
        assert await ref.ask(Note("next")) == "next"
    assert began == ["warm-up", "next"]


async def test_a_domain_keys_idle_actor_drops_an_ask_past_its_deadline() -> None:
    """The same through a domain: an ask to a live, idle key that expires before the key's
    actor runs never starts, and says "queued"."""
    began: list[str] = []
    async with fiefdom.ActorSystem(name="t") as system:
        domain: fiefdom.Domain[str, Note] = system.domain(
            "notes", lambda key: Recorder(began), idle_timeout=None
        )
        assert await domain.ask("k", Note("warm-up")) == "warm-up"

        def depth() -> int:
            stats = domain.key_statistics("k")
            assert stats is not None, "the key should still be active"
            return stats.mailbox_depth

        # The key's live cell, as domain.ask finds it (and marks it busy) before it asks.
        error = await _expires_before_taken(domain._deliverable_cell("k"), "late")
        assert error.phase == "queued"
        assert depth() == 0
        assert await domain.ask("k", Note("next")) == "next"
    assert began == ["warm-up", "next"]
