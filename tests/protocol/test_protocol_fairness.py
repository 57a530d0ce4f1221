"""Fairness between the clients of the control channel (GUARANTEES 004/7): a frame past
a connection's rate is dropped unread, with one error per window of dropped frames; a
connection's requests in flight are capped (it is not read from past the cap); the
server's slots for running requests go to the connection holding the fewest; and a
well-behaved client is answered while another floods. Speed is measured in
bench/control_fairness.py, never asserted here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from daemon_harness import DaemonProcess, write_config
from prometheus_client.parser import text_string_to_metric_families

from fiefdom.protocol._fairness import FairScheduler

HERE = Path(__file__).parent
GUARD = 30.0  # a hang guard, never a speed requirement


def _daemon(tmp_path: Path, control: str, rate: str = "") -> DaemonProcess:
    """A daemon hosting the test app and the gate, with ``control`` settings added (and
    the harness's generous rate limit replaced by ``rate``)."""
    config = write_config(tmp_path, modules=("hosted_app", "gate_app"), control=control)
    if rate:
        text = config.read_text().replace("messages_per_second = 100000.0\nburst = 100000", rate)
        config.write_text(text)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return DaemonProcess(config, env={"PYTHONPATH": path})


@contextlib.asynccontextmanager
async def _client(daemon: DaemonProcess) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A raw websocket that has said hello."""
    bearer = {"Authorization": f"Bearer {daemon.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(daemon.ws_url, headers=bearer) as ws,
    ):
        await ws.send_json({"type": "hello", "id": 0})
        assert (await ws.receive_json(timeout=GUARD))["type"] == "welcome"
        yield ws


def _frames(daemon: DaemonProcess) -> dict[str, float]:
    """fiefdom_ws_frames_total by type, read from /metrics."""
    status, body = daemon.http("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return {
        s.labels["type"]: s.value
        for s in families["fiefdom_ws_frames"].samples
        if s.name == "fiefdom_ws_frames_total"
    }


async def _poll_until_answered(ws: aiohttp.ClientWebSocketResponse, first_id: int) -> int:
    """Send pings until one is answered (the bucket refills with time); return how many
    were sent. Whatever arrives must be that ping's pong: the dropped ones get nothing."""
    sent = 0
    with anyio.fail_after(GUARD):
        while True:
            sent += 1
            await ws.send_json({"type": "ping", "id": first_id + sent})
            try:
                answer = await ws.receive_json(timeout=0.25)
            except TimeoutError:
                continue  # still limited: that ping was dropped, unanswered
            assert answer == {"type": "pong", "id": first_id + sent}, answer
            return sent


async def test_a_flooder_gets_one_error_per_window_and_its_excess_is_not_read(
    tmp_path: Path,
) -> None:
    """Past its burst, a connection gets exactly one "rate_limited" error per window of
    dropped frames; the dropped frames (undecodable ones here) are never decoded nor
    answered: /metrics counts them as rate_limited, none as invalid."""
    with _daemon(tmp_path, "", rate="messages_per_second = 0.5\nburst = 5") as daemon:
        before = _frames(daemon)
        async with _client(daemon) as ws:  # the hello takes the first token
            for i in range(1, 5):
                await ws.send_json({"type": "ping", "id": i})
            for _ in range(50):
                await ws.send_str("{not json")
            answers = [await ws.receive_json(timeout=GUARD) for _ in range(5)]
            assert answers[:4] == [{"type": "pong", "id": i} for i in range(1, 5)]
            error = answers[4]
            assert (error["type"], error["code"], error["id"]) == ("error", "rate_limited", None)
            assert error["details"]["messages_per_second"] == 0.5
            assert error["details"]["burst"] == 5
            polls = await _poll_until_answered(ws, 100)
            # A second window: one error again, then nothing until the rate allows.
            for _ in range(20):
                await ws.send_str("{not json")
            error = await ws.receive_json(timeout=GUARD)
            assert (error["type"], error["code"]) == ("error", "rate_limited")
            polls += await _poll_until_answered(ws, 200)
        after = _frames(daemon)
    assert after.get("invalid", 0) == before.get("invalid", 0)
    assert after["rate_limited"] - before.get("rate_limited", 0) == 50 + 20 + polls - 2


def _hold(frame_id: int, key: str) -> dict[str, Any]:
    return {
        "type": "call",
        "id": frame_id,
        "target": "gate",
        "key": key,
        "message_type": "Hold",
        "timeout": 600,
    }


async def _gatekeeper(ws: aiohttp.ClientWebSocketResponse, message_type: str, **fields: Any) -> Any:
    frame = {"type": "call", "id": 1, "target": "gatekeeper", "message_type": message_type}
    await ws.send_json({**frame, "message": fields})
    reply = await ws.receive_json(timeout=GUARD)
    assert reply["type"] == "call.reply", reply
    return reply["result"]


async def test_the_in_flight_cap_holds(tmp_path: Path) -> None:
    """With max_in_flight = 3, six held requests and a ping: the daemon reads the next
    frame only when a request ends, so the ping is answered after exactly 6 - 3 of
    them have ended, and never more than 3 were handled at once."""
    control = "max_in_flight = 3\nrunning_request_slice = 600.0"
    with _daemon(tmp_path, control) as daemon:
        async with _client(daemon) as held, _client(daemon) as keeper:
            for i in range(1, 7):
                await held.send_json(_hold(i, f"h{i}"))
            await held.send_json({"type": "ping", "id": 99})
            ended: list[int] = []
            for _ in range(3):
                assert await _gatekeeper(keeper, "Release", count=1) == 1
                reply = await held.receive_json(timeout=GUARD)
                assert reply["type"] == "call.reply", (reply, ended)  # not the pong: not read yet
                ended.append(reply["id"])
            assert await held.receive_json(timeout=GUARD) == {"type": "pong", "id": 99}
            assert await _gatekeeper(keeper, "Release", count=3) == 3
            for _ in range(3):
                ended.append((await held.receive_json(timeout=GUARD))["id"])
            report = await _gatekeeper(keeper, "GetReport")
    assert sorted(ended) == [1, 2, 3, 4, 5, 6]
    assert report["peak"] == 3
    assert report["inside"] == 0


async def test_a_free_slot_goes_to_the_owner_holding_fewest() -> None:
    """With 2 slots both held by a flooder that has a third request waiting, a slot freed
    goes to a newcomer's request, not to the flooder's next."""
    scheduler: FairScheduler[str] = FairScheduler(2, slice_seconds=600)
    flooder = [scheduler.ticket("flooder") for _ in range(3)]
    newcomer = scheduler.ticket("newcomer")
    with anyio.fail_after(GUARD):
        slots = [await scheduler.run("flooder", t) for t in flooder[:2]]
    assert not flooder[2].done()
    assert not newcomer.done()
    assert scheduler.statistics() == (2, 2)
    slots[0].release()
    slots[0].release()  # once only
    assert newcomer.done()
    assert not flooder[2].done()
    with anyio.fail_after(GUARD):
        taken = await scheduler.run("newcomer", newcomer)
    taken.release()
    assert flooder[2].done()
    slots[1].release()
    assert scheduler.statistics() == (1, 0)
    # The flooder's third request was granted but never began (its connection closed).
    scheduler.drop("flooder")
    assert scheduler.statistics() == (0, 0)


async def test_a_slot_held_past_the_slice_is_given_back() -> None:
    """A request running longer than the slice gives its slot back and runs on: the one
    waiting behind it gets the slot (waited on, under a hang guard)."""
    scheduler: FairScheduler[str] = FairScheduler(1, slice_seconds=0.01)
    first = await scheduler.run("slow", scheduler.ticket("slow"))
    waiting = scheduler.ticket("other")
    with anyio.fail_after(GUARD):
        second = await scheduler.run("other", waiting)
    first.release()  # long after its slice: changes nothing
    assert scheduler.statistics() == (1, 0)
    second.release()
    assert scheduler.statistics() == (0, 0)


async def test_a_cancelled_wait_gives_up_its_place() -> None:
    """A request cancelled while it waits for a slot leaves the line; the next one in
    line gets the slot."""
    scheduler: FairScheduler[str] = FairScheduler(1, slice_seconds=600)
    held = await scheduler.run("a", scheduler.ticket("a"))
    gone = asyncio.ensure_future(scheduler.run("b", scheduler.ticket("b")))
    after = scheduler.ticket("c")
    await asyncio.sleep(0)  # the waiter starts waiting
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    held.release()
    assert after.done()
    (await scheduler.run("c", after)).release()
    assert scheduler.statistics() == (0, 0)


FLOODS = {
    "ping": {"type": "ping"},
    "status": {"type": "status"},
    "jobs.list": {"type": "jobs.list", "limit": 100},
    "call": {"type": "call", "target": "counter", "message_type": "GetCount"},
}


async def test_a_well_behaved_client_is_answered_while_another_floods(tmp_path: Path) -> None:
    """While one client sends frames of every kind as fast as its socket takes them (and
    reads its replies), another's requests are each answered within a hang guard."""
    with _daemon(tmp_path, "") as daemon:
        async with _client(daemon) as flooder, _client(daemon) as polite:
            sent = 0
            flooding = asyncio.Event()

            async def flood() -> None:
                nonlocal sent
                kinds = list(FLOODS.values())
                while True:
                    sent += 1
                    await flooder.send_str(json.dumps({**kinds[sent % 4], "id": sent}))
                    if sent % 32 == 0:
                        await asyncio.sleep(0)  # the polite client shares this loop
                    if sent == 2000:
                        flooding.set()

            async def drain() -> None:
                async for _ in flooder:
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(flood)
                tg.start_soon(drain)
                await flooding.wait()  # the flood is under way before the first request
                at_start = sent
                for i, frame in enumerate(list(FLOODS.values()) * 10, start=1):
                    with anyio.fail_after(GUARD):
                        await polite.send_json({**frame, "id": i})
                        reply = await polite.receive_json()
                    assert reply["id"] == i, reply
                    assert reply["type"] != "error", reply
                assert sent > at_start  # the flood went on all along
                tg.cancel_scope.cancel()
