"""Errors of the control channel are typed where they are meant: what a request names
and does not exist is "not_found", raised on purpose; an exception nobody meant (a
KeyError from a bug in a hosted module) is "internal", and the daemon logs its
traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_harness import DaemonProcess, write_config
from faulty_app import Fetch

import fiefdom

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app and the faulty module."""
    config = write_config(tmp_path_factory.mktemp("errors"), modules=("hosted_app", "faulty_app"))
    with DaemonProcess(config, env={"PYTHONPATH": str(HERE)}) as proc:
        yield proc


async def _exchange(daemon: DaemonProcess, request_frame: dict[str, Any]) -> dict[str, Any]:
    """Send one request (id 2) on a raw websocket, after hello, and return its answer."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.send_json({"id": 2, **request_frame})
        reply: dict[str, Any] = await ws.receive_json()
        return reply


def _recorded(path: str) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


async def test_an_unexpected_key_error_is_internal_and_logged(daemon: DaemonProcess) -> None:
    """A KeyError raised while the daemon handles a call (here: decoding a message type
    whose own code has a bug) is "internal", not "not_found"; the flight recorder
    holds the failure with its traceback."""
    reply = await _exchange(
        daemon,
        {"type": "call", "target": "faulty", "message_type": "Lookup", "message": {"key": "k"}},
    )
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "internal", 2)
    assert reply["message"] == "KeyError: 'k'"
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        recorded = _recorded((await client.dump()).path)
    failures = [e for e in recorded if e["event"] == "control request failed"]
    assert len(failures) == 1
    assert failures[0]["request"] == "call"
    assert failures[0]["level"] == "error"
    assert failures[0]["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'k'" in failures[0]["exception"]
    assert "__post_init__" in failures[0]["exception"]


async def test_a_key_error_in_a_handler_is_the_actors_error(daemon: DaemonProcess) -> None:
    """A KeyError raised by the actor's own handler is "actor_error" naming it."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        with pytest.raises(fiefdom.ControlError) as raised:
            await client.call("faulty", Fetch(key="missing"))
    assert raised.value.code == "actor_error"
    assert raised.value.details == {"exception": "KeyError"}


@pytest.mark.parametrize(
    ("request_frame", "known"),
    [
        ({"type": "call", "target": "nobody", "message_type": "Fetch"}, ["accounts"]),
        ({"type": "call", "target": "faulty", "message_type": "Nope"}, ["Fetch", "Lookup"]),
        ({"type": "actors.pause", "target": "nobody"}, ["counter"]),
        ({"type": "jobs.get", "job_id": 424242}, None),
        ({"type": "jobs.retry", "job_id": 424242}, None),
        ({"type": "jobs.cancel", "job_id": 424242}, None),
        ({"type": "jobs.enqueue", "kind": "no-such-kind"}, None),
        ({"type": "unsubscribe", "subscription": 424242}, None),
    ],
    ids=[
        "target",
        "message-type",
        "actor",
        "get-job",
        "retry-job",
        "cancel-job",
        "job-kind",
        "subscription",
    ],
)
async def test_what_does_not_exist_is_not_found(
    daemon: DaemonProcess, request_frame: dict[str, Any], known: list[str] | None
) -> None:
    """Each request naming something that does not exist gets "not_found", with what
    does exist when there is a list of it."""
    reply = await _exchange(daemon, request_frame)
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "not_found", 2), reply
    if known is not None:
        assert set(known) <= set(reply["details"]["known"])
