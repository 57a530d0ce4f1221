"""A module the daemon hosts: list it in ``config.toml`` and ``fiefdom serve`` runs it.

    [daemon]
    modules = ["app"]
    python_path = ["examples"]

One ``Document`` actor owns each document id; ``WordCount`` jobs for a document run
inside that actor, serialised with its edits. Over the control channel:

    fiefdom status
    fiefdom jobs enqueue wordcount '{"doc_id": "readme"}'   (or client.enqueue(...))
    client.call("documents", Append(text="hello world"), key="readme")

Its own settings come from ``[app.app]`` (the section is named after the module);
docs/modules.md is the guide to writing such a module.
"""

from __future__ import annotations

import msgspec

import fiefdom


class Append(msgspec.Struct):
    """Add text to the document."""

    text: str


class Read(fiefdom.Request[str]):
    """The document's text."""


class Words(fiefdom.Request[int]):
    """The word count the last WordCount job computed (-1 before any)."""


class Document(fiefdom.Actor[Append | Read | Words]):
    """Owns one document: its edits and its jobs run here, one at a time."""

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        self.text = ""
        self.words = -1

    async def receive(self, msg: Append | Read | Words) -> object:
        match msg:
            case Append(text=text):
                self.text = f"{self.text} {text}".strip()
            case Read():
                return self.text
            case Words():
                return self.words
        return None


class WordCount(fiefdom.DomainJob):
    """Count a document's words, inside the document's actor."""

    options = fiefdom.JobOptions(kind="wordcount", max_attempts=3, domain="documents", key="doc_id")
    doc_id: str


async def count_words(job: WordCount, ctx: fiefdom.DomainJobContext[Document]) -> None:
    document = ctx.actor
    document.words = len(document.text.split())


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    """``[app.app]`` in config.toml (every key optional)."""

    idle_timeout: float = 300.0  # seconds before an idle document's actor is passivated


async def setup(daemon: fiefdom.ModuleHost) -> None:
    """Called once at start: spawn and expose actors, register job kinds."""
    settings = daemon.settings(Settings)
    documents = daemon.system.domain("documents", Document, idle_timeout=settings.idle_timeout)
    daemon.expose("documents", documents, [Append, Read, Words])
    daemon.jobs.register(WordCount, count_words)
