"""Roles of the control channel's requests: each request type declares its own, the
table the server uses is read off the union and matches the expectation written
out here, and a request sent with too weak a token is refused and changes nothing."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Iterator
from typing import Any, ClassVar

import aiohttp
import pytest
from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config
from hosted_app import GetCount
from protocol_samples import ROLES

import fiefdom
from fiefdom import JobState
from fiefdom.protocol import REQUIRED_ROLE, ClientMessage
from fiefdom.protocol._messages import CLIENT_TYPES, Role, _Request

NEEDS_OPERATE = {tag for tag, role in ROLES.items() if role == "operate"}
NEEDS_ADMIN = {tag for tag, role in ROLES.items() if role == "admin"}


def test_every_member_of_the_union_declares_its_role() -> None:
    """Each request type of ClientMessage declares a role on its own class, and the
    server's table holds exactly the union's types."""
    members = typing.get_args(ClientMessage)
    assert members
    for request_type in members:
        assert vars(request_type)["role"] in typing.get_args(Role), request_type
    assert set(REQUIRED_ROLE) == set(members)
    assert {t: t.role for t in members} == dict(REQUIRED_ROLE)


def test_a_request_type_without_a_role_is_refused_where_it_is_defined() -> None:
    """Defining a request type that declares no role fails at once, naming the fix."""
    with pytest.raises(TypeError, match="declares no role"):

        class Teleport(_Request, tag="teleport"):
            target: str

    class Beam(_Request, tag="beam"):
        role: ClassVar[Role] = "operate"

    assert Beam.role == "operate"


def test_the_roles_are_the_expected_ones() -> None:
    """The server's table matches the roles written out by hand in protocol_samples."""
    assert {t.__struct_config__.tag: role for t, role in REQUIRED_ROLE.items()} == ROLES
    assert set(CLIENT_TYPES) == set(ROLES)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with a token per role and a queue ``held`` paused from the start (so
    that resuming a queue has something to undo)."""
    config = write_config(
        tmp_path_factory.mktemp("roles"),
        control=TOKENS_TOML,
        extra="[jobs.queues.default]\n[jobs.queues.held]\npaused = true\n",
    )
    with DaemonProcess(config, token=TOKENS["admin"]) as proc:
        yield proc


async def _prepare(daemon: DaemonProcess) -> dict[str, int]:
    async with fiefdom.connect(daemon.url, token=TOKENS["admin"]) as admin:
        await admin.pause_actor("scratch")
        async with admin.subscribe(["jobs"]) as events:
            done = (await admin.enqueue("nap", {"seconds": 0.0})).id
            async for event in events:
                if isinstance(event, fiefdom.JobEvent) and (event.job_id, event.state) == (
                    done,
                    JobState.COMPLETED,
                ):
                    break
        later = (await admin.enqueue("nap", {"seconds": 0.0}, delay=3600.0)).id
    assert done is not None
    assert later is not None
    return {"completed": done, "scheduled": later}


@pytest.fixture(scope="module")
def jobs(daemon: DaemonProcess) -> dict[str, int]:
    """A completed job (something to retry), a scheduled one (something to cancel),
    and the ``scratch`` actor paused (something to resume)."""
    return asyncio.run(_prepare(daemon))


def _frames(jobs: dict[str, int]) -> dict[str, dict[str, Any]]:
    """For each operate and admin request, a frame that would change something."""
    return {
        "call": {"target": "counter", "message_type": "Increment", "message": {"by": 1}},
        "actors.pause": {"target": "counter"},
        "actors.resume": {"target": "scratch"},
        "actors.stop": {"target": "echo"},
        "jobs.enqueue": {"kind": "nap", "args": {"seconds": 0.0}},
        "jobs.retry": {"job_id": jobs["completed"]},
        "jobs.cancel": {"job_id": jobs["scheduled"]},
        "jobs.retry_many": {"state": "completed", "force": True},
        "jobs.prune": {"older_than": 0.0},
        "queues.pause": {"queue": "default"},
        "queues.resume": {"queue": "held"},
        "queues.drain": {"queue": "default"},
        "drain": {},
        "stop": {"mode": "cancel"},
        "dump": {},
    }


async def _snapshot(daemon: DaemonProcess) -> dict[str, Any]:
    """What any of those requests would change, read with the admin token."""
    async with fiefdom.connect(daemon.url, token=TOKENS["admin"]) as admin:
        status = await admin.status()
        return {
            "alive": daemon.proc is not None and daemon.proc.poll() is None,
            "draining": status.draining,
            "ready": status.ready,
            "paused": {t.name: t.paused for t in status.targets},
            "actors": {
                node["path"]: node.get("state", node.get("running"))
                for node in status.tree["children"]
            },
            "queues": {q.name: (q.paused, q.counts) for q in await admin.queues()},
            "jobs": [
                (j.id, j.state, j.attempt, j.cancel_requested)
                for j in await admin.list_jobs(limit=10_000)
            ],
            "count": await admin.call("counter", GetCount()),
            "dumps": sorted((daemon.data / "flight-recorder").glob("*")),
        }


WEAKER = [(tag, "read") for tag in sorted(NEEDS_OPERATE | NEEDS_ADMIN)] + [
    (tag, "operate") for tag in sorted(NEEDS_ADMIN)
]


@pytest.mark.parametrize(("tag", "role"), WEAKER, ids=[f"{t}-as-{r}" for t, r in WEAKER])
async def test_a_too_weak_token_is_forbidden_and_changes_nothing(
    daemon: DaemonProcess, jobs: dict[str, int], tag: str, role: str
) -> None:
    """An operate or admin request sent with a weaker token gets "forbidden" with its
    id, the daemon's state is the same after it as before, and the connection stays."""
    frame = {"type": tag, "id": 2, **_frames(jobs)[tag]}
    before = await _snapshot(daemon)
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": TOKENS[role]})
        assert (await ws.receive_json())["role"] == role
        await ws.send_json(frame)
        reply = await ws.receive_json()
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 2)
        assert reply["details"] == {"needed": REQUIRED_ROLE[CLIENT_TYPES[tag]], "role": role}
        await ws.send_json({"type": "ping", "id": 3})
        assert await ws.receive_json() == {"type": "pong", "id": 3}
    assert await _snapshot(daemon) == before
