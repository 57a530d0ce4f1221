"""Fairness between the clients of the control channel (GUARANTEES 004/7): a frame past
a connection's rate is dropped unread, with one error per window of dropped frames, and
the connection is not read from until the rate allows a frame again; a connection's
requests in flight are capped (it is not read from past the cap); the server's slots
for running requests go to the connection holding the fewest, a few at most to one;
and a well-behaved client is answered while another floods. Speed is measured in
bench/control_fairness.py, never asserted here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from daemon_harness import DaemonProcess, write_config
from prometheus_client.parser import text_string_to_metric_families
from raw_websocket import open_websocket, read_frame, ws_frame

from fiefdom.protocol._fairness import FairScheduler, RateLimiter
from fiefdom.protocol._messages import HEAVY

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


class _RawSocket:
    """A websocket client spoken over a plain TCP stream: its frames are written without
    waiting for the kernel to take them, so that what the daemon leaves unread backs up
    in this client's own buffer, where the test can see it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, daemon: DaemonProcess) -> _RawSocket:
        return cls(*await open_websocket(daemon.url, daemon.token))

    def send(self, payload: bytes) -> None:
        """One masked text frame."""
        self.writer.write(ws_frame(payload))

    def unsent(self) -> int:
        """Bytes written that the kernel has not taken yet (its send buffer is full)."""
        return self.writer.transport.get_write_buffer_size()

    async def receive(self) -> Any:
        """The next server frame, decoded from JSON."""
        return json.loads(await read_frame(self.reader))

    def vanish(self) -> None:
        """Leave with a RST: the daemon has megabytes of this client still to read."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def test_past_its_rate_a_connection_is_not_read_until_the_rate_allows(
    tmp_path: Path,
) -> None:
    """Past its burst a flooding connection gets one "rate_limited" error for its whole
    flood, and the daemon stops reading it: what the client goes on sending backs up in
    the client's own buffer, and the daemon then reads the flood in order, one frame each
    time the rate allows, the first being the frame right after the dropped one (not
    one from further into the flood, as reading and dropping everything would give).
    The dropped frame, undecodable, counts against the rate before any decoding."""
    with _daemon(tmp_path, "", rate="messages_per_second = 1.0\nburst = 3") as daemon:
        before = _frames(daemon)
        ws = await _RawSocket.connect(daemon)
        try:
            with anyio.fail_after(GUARD):
                ws.send(b'{"type": "hello", "id": 0}')  # the first of the burst of 3
                assert (await ws.receive())["type"] == "welcome"
                ws.send(b'{"type": "ping", "id": 1}')
                ws.send(b'{"type": "ping", "id": 2}')
                ws.send(b"{not json")  # past the burst
                sent = 2
                while not ws.unsent():  # the flood, until the kernel takes no more
                    sent += 1
                    ws.send(b'{"type": "ping", "id": %d}' % sent)
                    assert sent < 2_000_000, "the daemon reads on past the rate"
                answers = [await ws.receive() for _ in range(5)]
            assert answers[:2] == [{"type": "pong", "id": 1}, {"type": "pong", "id": 2}]
            error = answers[2]
            assert (error["type"], error["code"], error["id"]) == ("error", "rate_limited", None)
            details = error["details"]
            assert (details["messages_per_second"], details["burst"]) == (1.0, 3)
            assert 0 < details["retry_after"] <= 1.0
            # Read again once the rate allows: the next frame, then one of the two after
            # it (the one between dropped, if the bucket is empty again; told no more).
            assert answers[3] == {"type": "pong", "id": 3}
            assert answers[4] in ({"type": "pong", "id": 4}, {"type": "pong", "id": 5})
            # The flood is still in the client's buffer: the daemon has read a handful.
            assert ws.unsent()
            after = _frames(daemon)
            read = sum(after.values()) - sum(before.values())
            assert read < sent
            assert after.get("invalid", 0) == before.get("invalid", 0)
            assert after["rate_limited"] - before.get("rate_limited", 0) >= 1
        finally:
            ws.vanish()


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


def test_a_frame_given_back_leaves_the_bucket_as_it_was() -> None:
    """A frame taken where it is parsed and then left to the reading task (try_take,
    then untake) is not counted. While a window of dropped frames is open, try_take
    leaves the frame to the reading task, whose take closes the window."""
    limiter = RateLimiter(rate=1e-9, burst=3)  # (no refill within the test)
    assert limiter.try_take()
    limiter.untake()
    assert [limiter.try_take() for _ in range(4)] == [True, True, True, False]
    assert not limiter.take()
    limiter.untake()  # one frame back, for the window below
    assert limiter.refuse()  # a window opens (the client is told)
    assert not limiter.try_take()
    assert limiter.take()  # the reading task's: it closes the window
    assert limiter.refuse()  # the next frame dropped opens a new one


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


async def test_an_owner_holds_a_few_slots_at_most_even_when_others_are_free() -> None:
    """An owner holding owner_slots waits with its next request though slots are free,
    while another owner's request is granted at once; a slot it gives back lets its
    next request start."""
    scheduler: FairScheduler[str] = FairScheduler(10, slice_seconds=600, owner_slots=2)
    flooder = [scheduler.ticket("flooder") for _ in range(3)]
    newcomer = scheduler.ticket("newcomer")
    assert [t.done() for t in flooder] == [True, True, False]
    assert newcomer.done()
    assert scheduler.statistics() == (3, 1)
    with anyio.fail_after(GUARD):
        slots = [await scheduler.run("flooder", t) for t in flooder[:2]]
        other = await scheduler.run("newcomer", newcomer)
    slots[0].release()
    assert flooder[2].done()
    with anyio.fail_after(GUARD):
        slots.append(await scheduler.run("flooder", flooder[2]))
    for slot in [*slots[1:], other]:
        slot.release()
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
    ticket = scheduler.ticket("b")
    waiting = asyncio.Event()

    async def wait_in_line() -> None:
        waiting.set()  # run() then waits on the ticket in this same step
        await scheduler.run("b", ticket)

    gone = asyncio.ensure_future(wait_in_line())
    after = scheduler.ticket("c")
    with anyio.fail_after(GUARD):
        await waiting.wait()
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert scheduler.statistics() == (1, 1)  # out of the line: only "c" waits
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


async def test_a_heavy_request_counts_as_several_frames_against_the_rate(tmp_path: Path) -> None:
    """With a bucket of 12 frames (refilled at 10 per second): 12 pings are all
    answered, but only 3 of 4 status requests (each counts as HEAVY frames, the last
    one taken may overdraw the bucket): the 4th is past the rate, and its error names
    the cost of a heavy request."""
    rate = "messages_per_second = 10.0\nburst = 12"
    with _daemon(tmp_path, "", rate=rate) as daemon:
        async with _client(daemon) as pings:
            for i in range(1, 12):  # (the hello took one frame)
                await pings.send_json({"type": "ping", "id": i})
            answers = [await pings.receive_json(timeout=GUARD) for _ in range(11)]
            assert [a["type"] for a in answers] == ["pong"] * 11
        async with _client(daemon) as heavy:
            for i in range(1, 5):
                await heavy.send_json({"type": "status", "id": i})
            # (Replies run concurrently: the error may come before the last of them.)
            answers = [await heavy.receive_json(timeout=GUARD) for _ in range(4)]
    replies = sorted(a["id"] for a in answers if a["type"] == "status.reply")
    (error,) = [a for a in answers if a["type"] == "error"]
    assert replies == [1, 2, 3], answers
    assert error["code"] == "rate_limited", error
    assert error["details"]["heavy_request_cost"] == HEAVY
