"""The actor of the forwarding tests, imported by the test process and by its peer
node process alike (a forwarded message's type must be loaded on both): each key of
domain ``acct`` answers with the pid of the process it runs in, sleeps on request,
relays an ask to another key from inside its handler, and keeps a journal of what
its handlers did (started, finished, cancelled), one per process."""

from __future__ import annotations

import os

import anyio
import msgspec

import fiefdom


class WhereAreYou(fiefdom.Request[int]):
    """Reply with the pid of the process the key's actor runs in."""


class Nap(fiefdom.Request[None]):
    """Sleep ``seconds`` inside the handler (journaled as nap:<tag>:start/end/cancelled)."""

    seconds: float
    tag: str


class Relay(fiefdom.Request[int]):
    """Ask key ``to`` WhereAreYou (or Relay on, if ``then`` is set) from inside the handler."""

    to: str
    then: str | None = None


class RelayTold(msgspec.Struct):
    """Told: ask key ``to`` WhereAreYou from the handler, and journal the answer
    (``relayed:<pid>``) or the error's type name (``relayed:<Error>``)."""

    to: str


class Count(fiefdom.Request[int]):
    """How many Count asks the key's actor has answered, this one included."""


class Journal(fiefdom.Request[list[str]]):
    """The journal of every key of the process so far (asked of any of them)."""


class Fail(fiefdom.Request[None]):
    """Raise ValueError(text), with a NUL and a lone surrogate after it."""

    text: str


Message = WhereAreYou | Nap | Relay | RelayTold | Count | Journal | Fail
# The process's domain ``acct`` (set where it is created): a handler relays through it.
DOMAIN: list[fiefdom.Domain[str, Message]] = []
JOURNAL: list[str] = []


class Account(fiefdom.Actor[Message]):
    def __init__(self, key: str) -> None:
        self.key = key
        self.journal = JOURNAL
        self.counted = 0

    async def receive(self, msg: Message) -> object:
        match msg:
            case WhereAreYou():
                return os.getpid()
            case Nap(seconds=seconds, tag=tag):
                self.journal.append(f"nap:{tag}:start")
                try:
                    await anyio.sleep(seconds)
                except BaseException:
                    self.journal.append(f"nap:{tag}:cancelled")
                    raise
                self.journal.append(f"nap:{tag}:end")
                return None
            case Relay(to=to, then=then):
                domain = DOMAIN[0]
                if then is None:
                    return await domain.ask(to, WhereAreYou())
                return await domain.ask(to, Relay(to=then))
            case RelayTold(to=to):
                try:
                    self.journal.append(f"relayed:{await DOMAIN[0].ask(to, WhereAreYou())}")
                except Exception as exc:
                    self.journal.append(f"relayed:{type(exc).__name__}")
                return None
            case Count():
                self.counted += 1
                return self.counted
            case Journal():
                return list(self.journal)
            case Fail(text=text):
                raise ValueError(f"{text} \x00 \ud800")


def make_engine(store: fiefdom.Store, system: fiefdom.ActorSystem, name: str) -> fiefdom.JobEngine:
    """The process's domain ``acct`` served by a job engine (so it joins the cluster
    with a short lease: the second node gets its share within a second or so)."""
    domain: fiefdom.Domain[str, Message] = system.domain("acct", Account, idle_timeout=None)
    DOMAIN[:] = [domain]
    return fiefdom.JobEngine(
        store, queues={"default": 1}, domains={"acct": domain}, name=name, lease=3.0
    )
