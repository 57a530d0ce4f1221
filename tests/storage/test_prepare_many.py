"""A batch's rows are built by ``prepare_many``, which reuses what the first job of a
class makes of the overrides for the rest of its class. It must build exactly the
rows ``prepare`` builds one job at a time, and refuse exactly the jobs it refuses,
with the same error, whatever the mix of classes, arguments (nulls from NaN, NUL
characters, lone surrogates) and overrides."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fiefdom.storage import Job, JobOptions, JobState, Unique, _rows
from fiefdom.storage._jobs import partition_of
from fiefdom.storage._rows import NewJob, prepare, prepare_many

NOW = 1_800_000_000.0


class Plain(Job):
    options = JobOptions(kind="batch.plain")
    n: int


class Child(Plain):
    """A subclass: a class of its own, with its own options."""

    options = JobOptions(kind="batch.child", queue="children")
    extra: str = ""


class Text(Job):
    options = JobOptions(kind="batch.text", queue="texts", priority=3, max_attempts=2)
    text: str


class Measure(Job):
    options = JobOptions(kind="batch.measure")
    value: float
    note: str | None = None


class Account(Job):
    options = JobOptions(kind="batch.account", domain="accounts", key="account", ordered=True)
    account: str
    amount: int


class Once(Job):
    options = JobOptions(kind="batch.once", unique=Unique(states=frozenset({JobState.AVAILABLE})))
    n: int


texts = st.text(max_size=8) | st.sampled_from(["\x00", "a\x00b", "\ud800", "null", "\\u0000"])
# Structs do not validate when built: a field may hold what cannot be encoded (an
# object, an integer too long to write), which enqueue refuses for that job alone.
unencodable = st.sampled_from([object(), 10**5000, {1, 2}])
jobs = st.one_of(
    st.builds(Plain, n=st.integers(-(2**40), 2**40) | unencodable),
    st.builds(Child, n=st.integers(0, 3), extra=texts),
    st.builds(Text, text=texts),
    st.builds(
        Measure,
        value=st.floats(allow_nan=True, allow_infinity=True),
        note=st.none() | texts,
    ),
    st.builds(Account, account=texts, amount=st.integers(0, 10)),
    st.builds(Once, n=st.integers(0, 3)),
    st.sampled_from([object(), "not a job", 3]),
)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "queue": st.sampled_from(["other", "", "a\x00", "\udc00", "x" * 201]),
        "priority": st.sampled_from([-5, 40_000, 7]),
        "delay": st.sampled_from([0.0, 30.0, -1.0, math.nan, 1e12]),
        "run_at": st.sampled_from(
            [
                datetime.fromtimestamp(NOW, UTC) + timedelta(minutes=5),
                datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=5),
                datetime(2020, 1, 1),  # naive
            ]
        ),
    },
)


def one_by_one(batch: list[object], kwargs: dict[str, object]) -> list[object]:
    out: list[object] = []
    for job in batch:
        try:
            out.append(prepare(job, now=NOW, **kwargs))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            out.append((type(exc), str(exc)))
    return out


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(jobs, max_size=12), kwargs=overrides)
def test_a_batch_prepares_exactly_as_its_jobs_one_by_one(
    batch: list[object], kwargs: dict[str, object]
) -> None:
    got = [
        r if isinstance(r, NewJob) else (type(r), str(r))
        for r in prepare_many(batch, now=NOW, **kwargs)  # type: ignore[arg-type]
    ]
    assert got == one_by_one(batch, kwargs)


def test_only_the_first_job_of_a_class_goes_through_prepare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut is taken (so the property above compares it, not prepare with
    itself): of valid jobs without a unique key, one per class goes through
    prepare; a unique job, and one whose arguments hold a null, each go through it."""
    calls: list[object] = []
    real = _rows.prepare

    def counted(job: Job, **kwargs: Any) -> NewJob:
        calls.append(job)
        return real(job, **kwargs)

    monkeypatch.setattr(_rows, "prepare", counted)
    accounts = [Account(account=f"a{i}", amount=i) for i in range(3)]
    plain = [Plain(n=i) for i in range(3)]
    once = [Once(n=i) for i in range(2)]
    nulls = Measure(value=1.0)  # note is None: its arguments hold a null
    rows = _rows.prepare_many([*accounts, *plain, *once, nulls], now=NOW)
    assert calls == [accounts[0], plain[0], *once, nulls]
    assert [r.key for r in rows[:3] if isinstance(r, NewJob)] == ["a0", "a1", "a2"]
    assert [r.partition for r in rows[:3] if isinstance(r, NewJob)] == [
        partition_of(f"a{i}") for i in range(3)
    ]
    assert all(isinstance(r, NewJob) for r in rows)
