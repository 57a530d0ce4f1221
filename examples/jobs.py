"""Durable jobs, embedded: a job enqueued in the same transaction as the change it
follows (the outbox), run inside the actor that owns its document, on the
embedded SQLite store."""

from __future__ import annotations

import pathlib
import sys
import tempfile

import anyio
import msgspec

import fiefdom


class Indexed(fiefdom.Request[int]):
    """How many times the document was indexed."""


class Document(fiefdom.Actor[Indexed]):
    """Owns one document: every job and message for it runs here, one at a time."""

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        self.indexed = 0

    async def receive(self, msg: Indexed) -> int:
        return self.indexed


class Reindex(fiefdom.DomainJob):
    """Rebuild a document's search entry. Runs inside the document's actor."""

    options = fiefdom.JobOptions(
        kind="reindex", queue="default", max_attempts=3, domain="documents", key="doc_id"
    )
    doc_id: str


async def reindex(job: Reindex, ctx: fiefdom.DomainJobContext[Document]) -> None:
    ctx.actor.indexed += 1  # the job runs inside the key's actor, with its state


async def main(data_dir: pathlib.Path) -> dict[str, int]:
    url = f"sqlite:///{data_dir / 'jobs.db'}"
    store = fiefdom.open_store(url)
    await store.open(migrate=True)  # a daemon runs ``fiefdom migrate`` instead
    async with store:
        async with store.transaction() as tx:
            await tx.execute("CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, body TEXT)")
        async with fiefdom.ActorSystem(name="search") as system:
            documents = system.domain("documents", Document, idle_timeout=30.0)
            engine = fiefdom.JobEngine(
                store, queues={"default": 4}, domains={"documents": documents}
            )
            engine.register(Reindex, reindex)
            done = anyio.Event()
            completed: list[int] = []

            def on_event(event: fiefdom.JobEvent) -> None:
                # (The engine's own pruning job completes too: count ours.)
                if event.state is fiefdom.JobState.COMPLETED and event.kind == "reindex":
                    completed.append(event.job_id)
                    if len(completed) == 3:
                        done.set()

            engine.subscribe(on_event)
            async with engine:
                for doc_id, body in [("a", "alpha"), ("b", "beta"), ("a", "alpha, again")]:
                    # The row and its job commit together, or neither does.
                    async with store.transaction() as tx:
                        await tx.execute(
                            "INSERT INTO docs (id, body) VALUES ($1, $2) "
                            "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                            doc_id,
                            body,
                        )
                        await store.enqueue(Reindex(doc_id=doc_id), tx=tx)
                with anyio.fail_after(30):
                    await done.wait()
                return {d: await documents.ask(d, Indexed()) for d in ("a", "b")}


if __name__ == "__main__":
    folder = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    counts = anyio.run(main, folder)
    print(msgspec.json.encode(counts).decode())
