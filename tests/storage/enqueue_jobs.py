"""The job kinds the tests of PostgreSQL's enqueue paths share (the INSERT
statements, test_postgres_enqueue_statements.py, and the COPY,
test_postgres_enqueue_copy.py)."""

from __future__ import annotations

from fiefdom.storage import Job, JobOptions, JobState, Unique


class Plain(Job):
    options = JobOptions(kind="enqueue.plain")
    n: int


class Keyed(Job):
    options = JobOptions(kind="enqueue.keyed", unique=Unique())
    account: str


class CompletedOnly(Job):
    """Unique once completed: enqueued, it holds no key yet (only its digest)."""

    options = JobOptions(
        kind="enqueue.completed", unique=Unique(states=frozenset({JobState.COMPLETED}))
    )
    account: str
