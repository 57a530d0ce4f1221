"""Type checked by ``mypy --strict`` from tests/test_typing.py, never run: the handler
of a ``DomainJob`` kind gets a ``DomainJobContext[A]`` whose ``actor`` is an ``A``
(no ``assert ctx.actor is not None``), while a plain job's ``ctx.actor`` may be None
and a plain kind is refused a handler that expects a domain context. Each
``type: ignore`` marks an error mypy must report (strict mode flags an unused one)."""

from __future__ import annotations

from typing import Any, assert_type

import fiefdom
from fiefdom.storage import Store


class Document(fiefdom.Actor[Any]):
    def __init__(self, doc_id: str) -> None:
        self.indexed = 0

    def bump(self) -> int:
        self.indexed += 1
        return self.indexed

    async def receive(self, msg: Any) -> None:
        return None


class Reindex(fiefdom.DomainJob):
    options = fiefdom.JobOptions(kind="reindex", domain="documents", key="doc_id")
    doc_id: str


class Plain(fiefdom.Job):
    options = fiefdom.JobOptions(kind="plain")
    n: int


class OldStyle(fiefdom.Job):
    """A domain kind declared as a plain Job (before DomainJob): still registers."""

    options = fiefdom.JobOptions(kind="old", domain="documents", key="doc_id")
    doc_id: str


async def reindex(job: Reindex, ctx: fiefdom.DomainJobContext[Document]) -> None:
    assert_type(ctx.actor, Document)
    assert_type(ctx.actor.bump(), int)
    assert_type(ctx.partition, int | None)


async def reindex_untyped(job: Reindex, ctx: fiefdom.JobContext[Any]) -> None:
    """A handler written before DomainJobContext: still accepted."""


async def plain(job: Plain, ctx: fiefdom.JobContext[Document]) -> None:
    assert_type(ctx.actor, Document | None)
    ctx.actor.bump()  # type: ignore[union-attr]


async def plain_expecting_an_actor(job: Plain, ctx: fiefdom.DomainJobContext[Document]) -> None:
    ctx.actor.bump()


async def old_style(job: OldStyle, ctx: fiefdom.JobContext[Document]) -> None:
    assert ctx.actor is not None
    ctx.actor.bump()


async def wrong_kind(job: Plain, ctx: fiefdom.DomainJobContext[Document]) -> None:
    """Registered below for Reindex: the job's type does not match."""


def register(store: Store, documents: fiefdom.Domain[str, Any]) -> None:
    engine = fiefdom.JobEngine(store, domains={"documents": documents})
    engine.register(Reindex, reindex)
    engine.register(Reindex, reindex_untyped)
    engine.register(Plain, plain)
    engine.register(OldStyle, old_style)
    # Rejected: a plain kind's context has no actor to promise; a handler of another kind.
    engine.register(Plain, plain_expecting_an_actor)  # type: ignore[type-var]
    engine.register(OldStyle, reindex)  # type: ignore[type-var, arg-type]
    engine.register(Reindex, wrong_kind)  # type: ignore[arg-type]

    @engine.handler(Reindex)
    async def decorated(job: Reindex, ctx: fiefdom.DomainJobContext[Document]) -> None:
        ctx.actor.bump()

    @engine.handler(Plain)  # type: ignore[arg-type]
    async def decorated_plain(job: Plain, ctx: fiefdom.DomainJobContext[Document]) -> None:
        ctx.actor.bump()


def setup(daemon: fiefdom.ModuleHost) -> None:
    daemon.jobs.register(Reindex, reindex)
    daemon.jobs.register(Plain, plain)
    daemon.jobs.register(Plain, plain_expecting_an_actor)  # type: ignore[type-var]

    @daemon.jobs.handler(Reindex)
    async def decorated(job: Reindex, ctx: fiefdom.DomainJobContext[Document]) -> None:
        assert_type(ctx.actor.bump(), int)

    @daemon.jobs.handler(Plain)  # type: ignore[arg-type]
    async def decorated_plain(job: Plain, ctx: fiefdom.DomainJobContext[Document]) -> None:
        ctx.actor.bump()
