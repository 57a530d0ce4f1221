"""The control channel carries the library's types: a job is one ``JobInfo`` (the
same class in fiefdom, fiefdom.storage and fiefdom.protocol) with the same field
names in Python and on the wire, in both encodings, its events are plain
``JobEvent`` objects, and ``call`` returns the reply type of a ``Request[R]``. The
server's dispatch is proven total by mypy."""

from __future__ import annotations

import json
import pathlib
from datetime import datetime
from typing import Any, Generic, TypeVar

import aiohttp
import anyio
import msgspec
import pytest
from daemon_harness import DaemonProcess
from mypy import api

import fiefdom
import fiefdom.protocol
import fiefdom.storage
from fiefdom import JobEvent, JobInfo, JobState
from fiefdom.protocol._client import reply_type_of

T = TypeVar("T")


def test_one_job_type_everywhere() -> None:
    """fiefdom, fiefdom.storage and fiefdom.protocol name the same JobInfo and JobEvent."""
    assert fiefdom.protocol.JobInfo is fiefdom.JobInfo is fiefdom.storage.JobInfo
    assert fiefdom.protocol.JobEvent is fiefdom.JobEvent is fiefdom.storage.JobEvent


async def _failed_job(daemon: DaemonProcess, encoding: str) -> tuple[int, list[JobEvent]]:
    """Run a failing job; return its id and the events a subscriber got for it."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token, encoding=encoding) as client,
        client.subscribe(["jobs"]) as events,
    ):
        job_id = (await client.enqueue("fail", {"reason": "boom"})).id
        seen: list[JobEvent] = []
        with anyio.fail_after(30):
            async for event in events:
                if isinstance(event, JobEvent) and event.job_id == job_id:
                    seen.append(event)
                    if event.state is JobState.DISCARDED:
                        break
    assert job_id is not None
    return job_id, seen


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_jobs_and_their_events_arrive_as_the_library_types(
    daemon: DaemonProcess, encoding: str
) -> None:
    """In either encoding the client hands out JobEvent and JobInfo themselves (not
    look-alikes), with typed fields: states, datetimes and AttemptError objects."""
    job_id, seen = await _failed_job(daemon, encoding)
    assert [type(e) for e in seen] == [JobEvent, JobEvent]
    assert [e.state for e in seen] == [JobState.RUNNING, JobState.DISCARDED]
    assert seen[1].detail == "boom"
    async with fiefdom.connect(daemon.url, token=daemon.token, encoding=encoding) as client:
        job = await client.get_job(job_id)
        listed = await client.list_jobs(kind="fail", state=JobState.DISCARDED)
    assert type(job) is JobInfo
    assert job in listed
    assert isinstance(job.created_at, datetime)
    assert job.created_at.utcoffset() is not None
    assert type(job.errors[0]) is fiefdom.AttemptError


async def test_both_encodings_read_the_same_job(daemon: DaemonProcess) -> None:
    """A job read over JSON and over MessagePack is the same JobInfo, equal field by field."""
    job_id, _ = await _failed_job(daemon, "json")
    read = []
    for encoding in ("json", "msgpack"):
        async with fiefdom.connect(daemon.url, token=daemon.token, encoding=encoding) as client:
            read.append(await client.get_job(job_id))
    assert read[0] == read[1]


async def test_the_wire_uses_the_library_field_names(daemon: DaemonProcess) -> None:
    """A raw jobs.get reply names JobInfo's fields (run_at, attempted_at, errors as
    objects), with times as RFC 3339 strings and the arguments as stored."""
    job_id, _ = await _failed_job(daemon, "json")
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.send_json({"type": "jobs.get", "id": 2, "job_id": job_id})
        reply: dict[str, Any] = await ws.receive_json()
    assert (reply["type"], reply["id"]) == ("job.reply", 2)
    job = reply["job"]
    assert set(job) == set(JobInfo.__struct_fields__)
    assert (job["kind"], job["state"], job["args"]) == ("fail", "discarded", '{"reason":"boom"}')
    for name in ("created_at", "run_at", "attempted_at", "finished_at"):
        assert job[name].endswith("Z"), name
        assert datetime.fromisoformat(job[name]).utcoffset() is not None
    (error,) = job["errors"]
    assert set(error) == set(fiefdom.AttemptError.__struct_fields__)
    assert (error["attempt"], error["type"], error["message"]) == (
        1,
        "builtins.RuntimeError",
        "boom",
    )
    assert msgspec.json.decode(json.dumps(job), type=JobInfo).id == job_id


class _Lookup(fiefdom.Request[T], Generic[T]):
    key: str


class _Names(_Lookup[list[str]]):
    pass


class _Balance(fiefdom.Request[int]):
    pass


def test_reply_types_are_read_through_generic_requests() -> None:
    """The client decodes a reply as the R of its Request[R], also when R is bound by a
    generic class between them; a request still generic in R decodes as Any."""
    assert reply_type_of(_Balance) is int
    assert reply_type_of(_Names) == list[str]
    assert reply_type_of(_Lookup) is Any


@pytest.mark.slow
def test_the_client_is_typed_with_the_library_types() -> None:
    """mypy --strict accepts typing_client.py: call returns R of a Request[R], the job
    methods take JobState and return JobInfo and Enqueued (each error it marks is reported)."""
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--warn-unused-ignores",
            "--no-error-summary",
            "--show-error-codes",
            str(pathlib.Path(__file__).parent / "typing_client.py"),
        ]
    )
    assert status == 0, stdout + stderr


CONNECTION = pathlib.Path(fiefdom.protocol.__file__).parent / "_connection.py"


@pytest.mark.slow
def test_the_dispatch_is_proven_total(tmp_path: pathlib.Path) -> None:
    """mypy --strict accepts the server's dispatch as it is, and rejects it (at its
    assert_never) with the case of one request type taken out."""
    source = CONNECTION.read_text(encoding="utf-8")
    case = (
        "            case Dump():\n"
        "                path, count = await host.dump()\n"
        "                return DumpReply(id=msg.id, path=path, events=count)\n"
    )
    assert source.count(case) == 1
    shadow = tmp_path / "_connection.py"
    shadow.write_text(source.replace(case, ""), encoding="utf-8")
    args = ["--strict", "--no-error-summary", "--show-error-codes", str(CONNECTION)]
    stdout, stderr, status = api.run(args)
    assert status == 0, stdout + stderr
    stdout, _, status = api.run([*args, "--shadow-file", str(CONNECTION), str(shadow)])
    assert status == 1
    assert 'Argument 1 to "assert_never" has incompatible type "Dump"' in stdout, stdout


def _structs_in(tp: Any, seen: set[type]) -> None:
    """Every Struct type reachable from the annotation ``tp``."""
    import typing

    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp in seen:
            return
        seen.add(tp)
        for hint in typing.get_type_hints(tp).values():
            _structs_in(hint, seen)
        return
    for arg in typing.get_args(tp):
        _structs_in(arg, seen)


def test_what_the_server_sends_tolerates_fields_from_a_newer_daemon() -> None:
    """Every Struct a client decodes from the server (each reply, error and event, the
    job records inside them) ignores a field it does not know, so that a client keeps
    working with a daemon upgraded before it; every request a server decodes still
    refuses one (an unknown field there is a mistake to report)."""
    from fiefdom.protocol import ClientMessage
    from fiefdom.protocol._replies import ServerMessage

    server_side: set[type] = set()
    _structs_in(ServerMessage, server_side)
    assert JobInfo in server_side
    assert JobEvent in server_side
    strict = sorted(t.__name__ for t in server_side if t.__struct_config__.forbid_unknown_fields)
    assert strict == []
    import typing

    lenient = [
        t.__name__
        for t in typing.get_args(ClientMessage)
        if not t.__struct_config__.forbid_unknown_fields
    ]
    assert lenient == []


def test_a_reply_with_a_field_this_client_does_not_know_decodes() -> None:
    """A ``jobs.reply`` whose job carries a field added by a newer daemon decodes
    into the same JobInfo (the field ignored); a request with an unknown field does
    not."""
    from fiefdom.protocol import ClientMessage
    from fiefdom.protocol._replies import ServerMessage

    job = {
        "id": 1,
        "kind": "k",
        "queue": "default",
        "state": "available",
        "priority": 0,
        "args": "{}",
        "key": None,
        "attempt": 0,
        "max_attempts": 3,
        "errors": [],
        "worker": None,
        "cancel_requested": False,
        "created_at": "2026-01-01T00:00:00Z",
        "run_at": "2026-01-01T00:00:00Z",
        "attempted_at": None,
        "finished_at": None,
        "a_field_from_the_future": {"x": 1},
    }
    frame = {"type": "jobs.reply", "id": 7, "jobs": [job], "total": 1, "future_count": 2}
    reply = msgspec.json.decode(json.dumps(frame), type=ServerMessage)
    assert reply.jobs[0].id == 1  # type: ignore[union-attr]
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(
            json.dumps({"type": "ping", "id": 1, "surprise": True}), type=ClientMessage
        )
