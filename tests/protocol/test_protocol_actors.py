"""Pausing, resuming and stopping hosted actors and domains over the control channel
of a real daemon subprocess: held messages run after a resume, asks keep their
deadlines while paused, status shows what is paused, and errors are typed."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from daemon_harness import DaemonProcess
from hosted_app import Balance, Deposit, GetCount, Increment

import fiefdom


def _node(status: fiefdom.protocol.StatusReply, name: str) -> dict[str, Any]:
    """The tree node of a top-level child of the daemon's supervisor."""
    path = f"{status.name}/{name}"
    nodes = [child for child in status.tree["children"] if child["path"] == path]
    assert nodes, f"{path} is not in the tree"
    node: dict[str, Any] = nodes[0]
    return node


def _target(status: fiefdom.protocol.StatusReply, name: str) -> fiefdom.protocol.TargetInfo:
    return {t.name: t for t in status.targets}[name]


async def test_pause_holds_an_actor_until_resumed(daemon: DaemonProcess) -> None:
    """A paused actor holds what is sent to it (asks time out "queued"); resume runs it."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        before = await client.call("counter", GetCount())
        await client.pause_actor("counter")
        await client.call("counter", Increment(by=3))
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("counter", GetCount(), timeout=0.1)
        assert info.value.code == "timeout"
        assert info.value.details["phase"] == "queued"
        status = await client.status()
        node = _node(status, "counter")
        assert node["paused"] is True
        assert node["mailbox_depth"] == 1
        assert _target(status, "counter").paused
        await client.resume_actor("counter")
        assert await client.call("counter", GetCount()) == before + 3
        status = await client.status()
        assert _node(status, "counter")["paused"] is False
        assert not _target(status, "counter").paused


async def test_pause_and_resume_one_domain_key(daemon: DaemonProcess) -> None:
    """Pausing a key holds that key only; status lists it among the domain's paused keys."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        await client.pause_actor("accounts", key="held")
        await client.call("accounts", Deposit(amount=5), key="held")
        await client.call("accounts", Deposit(amount=1), key="free")
        assert await client.call("accounts", Balance(), key="free") == 1
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("accounts", Balance(), key="held", timeout=0.1)
        assert info.value.details["phase"] == "queued"
        assert _node(await client.status(), "accounts")["paused_keys"] == ["held"]
        await client.resume_actor("accounts", key="held")
        assert await client.call("accounts", Balance(), key="held") == 5
        assert _node(await client.status(), "accounts")["paused_keys"] == []


async def test_pause_a_whole_domain_holds_new_keys(daemon: DaemonProcess) -> None:
    """A paused domain holds keys activated after the pause, until the domain is resumed."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        await client.pause_actor("accounts")
        status = await client.status()
        assert _node(status, "accounts")["paused"] is True
        assert _target(status, "accounts").paused
        await client.call("accounts", Deposit(amount=2), key="brand-new")
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("accounts", Balance(), key="brand-new", timeout=0.1)
        assert info.value.details["phase"] == "queued"
        await client.resume_actor("accounts")
        assert await client.call("accounts", Balance(), key="brand-new") == 2
        assert _node(await client.status(), "accounts")["paused"] is False


async def test_stop_a_key_and_a_whole_domain_passivates(daemon: DaemonProcess) -> None:
    """Stopping a key (even paused) drains and passivates it; its state starts afresh."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        await client.call("accounts", Deposit(amount=9), key="gone")
        await client.pause_actor("accounts", key="gone")
        await client.call("accounts", Deposit(amount=1), key="gone")
        await client.stop_actor("accounts", key="gone", timeout=30)
        await client.resume_actor("accounts", key="gone")
        assert await client.call("accounts", Balance(), key="gone") == 0
        await client.call("accounts", Deposit(amount=4), key="one")
        await client.call("accounts", Deposit(amount=4), key="two")
        await client.stop_actor("accounts", timeout=30)
        assert _node(await client.status(), "accounts")["live"] == 0
        assert await client.call("accounts", Balance(), key="one") == 0


async def test_stop_a_paused_actor_for_good(daemon: DaemonProcess) -> None:
    """A stopped actor (paused or not) drains, leaves the tree and refuses later calls."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        await client.pause_actor("scratch")
        await client.call("scratch", Increment())
        await client.stop_actor("scratch", timeout=30)
        status = await client.status()
        paths = {child["path"] for child in status.tree["children"]}
        assert f"{status.name}/scratch" not in paths
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("scratch", GetCount())
        assert info.value.code == "unavailable"
        await client.stop_actor("scratch")  # already stopped: nothing to wait for


async def test_actor_control_errors_are_typed(daemon: DaemonProcess) -> None:
    """Unknown targets are "not_found" with the known names; a key on an actor is refused."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        for method in (client.pause_actor, client.resume_actor, client.stop_actor):
            with pytest.raises(fiefdom.ControlError) as info:
                await method("nobody")
            assert info.value.code == "not_found"
            assert "counter" in info.value.details["known"]
        with pytest.raises(fiefdom.ControlError) as info:
            await client.pause_actor("counter", key="k")
        assert info.value.code == "invalid_message"
        assert info.value.details["path"] == "$.key"
        assert _node(await client.status(), "counter")["paused"] is False


async def test_raw_websocket_actor_control(daemon: DaemonProcess) -> None:
    """The raw frames: actors.pause and actors.resume are acknowledged with "ack"."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.send_json({"type": "actors.pause", "id": 2, "target": "echo"})
        assert await ws.receive_json() == {"type": "ack", "id": 2}
        await ws.send_json({"type": "actors.resume", "id": 3, "target": "echo"})
        assert await ws.receive_json() == {"type": "ack", "id": 3}
        await ws.send_json({"type": "actors.stop", "id": 4, "target": "echo", "key": 5})
        error = await ws.receive_json()
        assert (error["code"], error["details"]["path"]) == ("invalid_message", "$.key")
