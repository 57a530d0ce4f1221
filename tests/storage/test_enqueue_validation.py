"""Bad input gets a clear error and loses nothing: enqueue validates every time,
number and text before writing, an error means nothing was committed, and
``enqueue_many`` answers per item (seed 001/4). Both dialects."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from fiefdom import StoreError
from fiefdom.storage import Job, JobOptions, JobState, Store, engine_queries


class Note(Job):
    options = JobOptions(kind="note")
    text: str


BAD_ENQUEUES = [
    pytest.param({"delay": math.inf}, "delay", id="delay-inf"),
    pytest.param({"delay": math.nan}, "delay", id="delay-nan"),
    pytest.param({"delay": 1e11}, "delay", id="delay-overflow"),
    pytest.param({"delay": -1.0}, "delay", id="delay-negative"),
    pytest.param({"run_at": datetime(9999, 1, 1, tzinfo=UTC)}, "run_at", id="run-at-far"),
    pytest.param({"run_at": datetime(2030, 1, 1)}, "aware", id="run-at-naive"),
    pytest.param({"priority": 2**63}, "priority", id="priority-huge"),
    pytest.param({"max_attempts": 2**63}, "max_attempts", id="attempts-huge"),
    pytest.param({"max_attempts": 0}, "max_attempts", id="attempts-zero"),
    pytest.param({"queue": ""}, "queue", id="queue-empty"),
    pytest.param({"queue": "a\x00b"}, "queue", id="queue-nul"),
    pytest.param({"queue": "\ud800"}, "queue", id="queue-lone-surrogate"),
]


@pytest.mark.parametrize(("overrides", "named"), BAD_ENQUEUES)
async def test_a_refused_enqueue_names_the_field_and_commits_nothing(
    store: Store, overrides: dict[str, object], named: str
) -> None:
    """Each out-of-range option is refused with a message naming it; no row is written."""
    with pytest.raises(ValueError, match=named):
        await store.enqueue(Note(text="x"), **overrides)  # type: ignore[arg-type]
    assert await store.count_jobs() == []


@pytest.mark.parametrize(
    "text",
    [pytest.param("a\x00b", id="nul"), pytest.param("\ud800", id="lone-surrogate")],
)
async def test_arguments_a_store_cannot_hold_are_refused_before_writing(
    store: Store, text: str
) -> None:
    """NUL and lone surrogates in a job's arguments are refused (both dialects alike)."""
    with pytest.raises(ValueError, match="arguments"):
        await store.enqueue(Note(text=text))
    assert await store.count_jobs() == []


def test_unknown_argument_fields_are_refused_by_name() -> None:
    """A job's arguments decode strictly: an unknown field is an error naming it."""
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.json.decode(b'{"text": "x", "colour": "red"}', type=Note)


async def test_enqueue_many_answers_per_item(store: Store) -> None:
    """One bad item among a hundred is refused with its reason; the 99 others are enqueued."""
    jobs = [Note(text=str(i)) for i in range(100)]
    jobs[42] = Note(text="bad\x00")
    results = await store.enqueue_many(jobs)
    assert len(results) == 100
    bad = results[42]
    assert bad.id is None
    assert not bad.ok
    assert bad.error is not None
    assert "NUL" in bad.error
    good = [r for i, r in enumerate(results) if i != 42]
    assert all(r.ok and r.id is not None and not r.duplicate for r in good)
    listed = await store.list_jobs(limit=1000)
    assert len(listed) == 99
    assert {r.id for r in good} == {j.id for j in listed}


async def test_enqueue_many_all_or_nothing_names_the_item_and_writes_nothing(store: Store) -> None:
    """With all_or_nothing=True one bad item raises, naming its index, and nothing is written."""
    jobs = [Note(text="ok"), Note(text="\ud800"), Note(text="ok")]
    with pytest.raises(ValueError, match="item 1"):
        await store.enqueue_many(jobs, all_or_nothing=True)
    assert await store.count_jobs() == []


class Odd(Job):
    options = JobOptions(kind="odd\x00kind")
    n: int


@pytest.mark.dialect("postgres")  # SQLite's text holds a NUL
async def test_a_batch_the_database_refuses_in_a_later_statement_writes_nothing(
    store: Store,
) -> None:
    """A batch of several statements (past 10,000 rows) whose last one PostgreSQL
    refuses (a kind name holding NUL) leaves none of the earlier rows behind."""
    jobs: list[Job] = [Note(text=str(i)) for i in range(12_000)]
    jobs.append(Odd(n=1))
    with pytest.raises(StoreError):
        await store.enqueue_many(jobs)
    assert await store.count_jobs() == []


async def test_a_delay_just_inside_the_bound_is_accepted_and_lists(store: Store) -> None:
    """The furthest allowed time is stored and read back (no out-of-range date on listing)."""
    far = datetime.now(UTC) + timedelta(days=365 * 99)
    result = await store.enqueue(Note(text="x"), run_at=far)
    assert result.id is not None
    (info,) = await store.list_jobs()
    assert abs((info.run_at - far).total_seconds()) < 1


POISON = [
    pytest.param("run_at", "1e12", id="run-at-year-33715"),
    pytest.param("created_at", "-1e13", id="created-at-before-year-1"),
    pytest.param("errors", "'not json'", id="errors-unreadable"),
]


@pytest.mark.dialect("sqlite")  # PostgreSQL's own types refuse these values on write
@pytest.mark.parametrize(("column", "value"), POISON)
async def test_a_poisoned_row_is_listed_as_damaged_and_never_fails_the_page(
    store: Store, column: str, value: str
) -> None:
    """A row holding a value this code cannot read (written by another program or an
    old release) is listed marked damaged, and the rest of the page is listed too."""
    first, poisoned, last = [await store.enqueue(Note(text=str(i))) for i in range(3)]
    async with store.transaction() as tx:
        await tx.execute(f"UPDATE fiefdom_jobs SET {column} = {value} WHERE id = $1", poisoned.id)
    listed = await store.list_jobs()
    assert [j.id for j in listed] == [first.id, poisoned.id, last.id]
    damaged = {j.id: j.damaged for j in listed}
    assert damaged[first.id] is None
    assert damaged[last.id] is None
    assert damaged[poisoned.id] is not None
    assert column.split("_")[0] in damaged[poisoned.id]
    info = await store.get_job(poisoned.id)  # type: ignore[arg-type]
    assert info is not None
    assert info.damaged == damaged[poisoned.id]


@pytest.mark.dialect("postgres")
async def test_an_infinite_time_is_listed_as_damaged_on_postgres(store: Store) -> None:
    """PostgreSQL's 'infinity' timestamp in a row is listed as damaged, not an error."""
    first, poisoned = [await store.enqueue(Note(text=str(i))) for i in range(2)]
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE fiefdom_jobs SET run_at = 'infinity'::timestamptz WHERE id = $1", poisoned.id
        )
    listed = await store.list_jobs()
    assert [j.id for j in listed] == [first.id, poisoned.id]
    assert listed[0].damaged is None
    assert listed[1].damaged is not None
    assert "run_at" in listed[1].damaged


class Other(Job):
    options = JobOptions(kind="other", queue="other")
    n: int


async def test_every_listing_filter_pages_like_a_filter_of_the_whole_table(store: Store) -> None:
    """Each combination of queue, state and kind, paged in small pages, lists exactly the
    jobs a filter of the whole table gives, in id order (the per-state merge included,
    and the running jobs, which no listing index holds), and counts them."""
    jobs: list[Job] = []
    for i in range(30):
        jobs.append(Note(text=str(i)) if i % 3 else Other(n=i))
    results = await store.enqueue_many(jobs)
    ids = [r.id for r in results]
    for job_id in ids[::4]:
        await store.cancel_job(job_id)  # type: ignore[arg-type]
    queries = engine_queries(store)
    running = await queries.claim("default", 5, worker="w", lease=600.0)
    running += await queries.claim("other", 2, worker="w", lease=600.0)
    assert len(running) == 7
    everything = await store.list_jobs(limit=1000)
    assert [j.id for j in everything] == sorted(ids)  # type: ignore[type-var]
    for queue in (None, "default", "other"):
        for state in (None, JobState.AVAILABLE, JobState.RUNNING, JobState.CANCELLED):
            for kind in (None, "note", "other"):
                expected = [
                    j.id
                    for j in everything
                    if queue in (None, j.queue)
                    and state in (None, j.state)
                    and kind in (None, j.kind)
                ]
                listed: list[int] = []
                after = 0
                while True:
                    page = await store.list_jobs(
                        queue=queue, state=state, kind=kind, after_id=after, limit=4
                    )
                    listed += [j.id for j in page]
                    if len(page) < 4:
                        break
                    after = page[-1].id
                assert listed == expected, (queue, state, kind)
                counted = await store.count_listed(queue=queue, state=state, kind=kind)
                assert counted == len(expected), (queue, state, kind)
                capped = await store.count_listed(queue=queue, state=state, kind=kind, cap=3)
                assert capped == min(3, len(expected)), (queue, state, kind)
