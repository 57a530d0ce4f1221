"""Fairness of the control channel: the p99 latency of a well-behaved client (one
request every few milliseconds: ping, call, status, jobs.list in turn) alone, then
while one other client floods the daemon with one kind of frame as fast as it can
(ping, status, jobs.list, call, undecodable frames). The daemon runs with the
default control settings (rate limit included) as a subprocess; each flooder is a
subprocess too, so that it does not share the measuring client's event loop. The
solo baseline is measured in the same run, first and last. Prints one JSON object
per figure, with the ratio to the solo p99 (the goal: under 3).

    .venv/bin/python bench/control_fairness.py [--seconds 5]

This file is also the daemon's user module (its ``setup`` exposes an actor and fills
a paused queue for jobs.list) and the flooder (``--flood KIND``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

import fiefdom
from fiefdom.jobs import JobContext
from fiefdom.storage import Job, JobOptions

HERE = Path(__file__).resolve().parent
JOBS = 200
FLOODS = ("ping", "status", "jobs.list", "call", "garbage")

# -- the daemon's user module --------------------------------------------------------------


class Echo(fiefdom.Request[int]):
    n: int


class Echoer(fiefdom.Actor[Echo]):
    async def receive(self, msg: Echo) -> int:
        return msg.n


class Idle(Job):
    options = JobOptions(kind="bench.idle", queue="bench")


async def run_idle(job: Idle, ctx: JobContext[Any]) -> None:
    return None


async def setup(daemon: Any) -> None:
    ref = await daemon.system.spawn(Echoer, name="echo", mailbox_capacity=10_000)
    daemon.expose("echo", ref, [Echo])
    daemon.jobs.register(Idle, run_idle)


# -- frames ------------------------------------------------------------------------------


def frame(kind: str, i: int) -> str:
    match kind:
        case "ping" | "status":
            return json.dumps({"type": kind, "id": i})
        case "jobs.list":
            return json.dumps({"type": "jobs.list", "id": i, "queue": "bench", "limit": 100})
        case "call":
            message = {"n": i}
            return json.dumps(
                {
                    "type": "call",
                    "id": i,
                    "target": "echo",
                    "message_type": "Echo",
                    "message": message,
                }
            )
        case "garbage":
            return '{"type": "ping", "id": ' + str(i) + ', "oops": [1, 2, 3'
    raise ValueError(kind)


async def connect(session: aiohttp.ClientSession, url: str, token: str) -> Any:
    ws = await session.ws_connect(
        url, headers={"Authorization": f"Bearer {token}"}, compress=0, max_msg_size=0
    )
    await ws.send_str(json.dumps({"type": "hello", "id": 0}))
    assert json.loads((await ws.receive()).data)["type"] == "welcome"
    return ws


# -- the flooder ---------------------------------------------------------------------------


async def flood(url: str, token: str, kind: str) -> None:
    """Send ``kind`` frames as fast as the socket takes them and read every reply, until
    stdin closes; then print what was sent and received."""
    sent = received = 0
    async with aiohttp.ClientSession() as session:
        ws = await connect(session, url, token)

        async def reader() -> None:
            nonlocal received
            async for _ in ws:
                received += 1

        async def sender() -> None:
            nonlocal sent
            while True:
                await ws.send_str(frame(kind, sent + 1))
                sent += 1
                if sent % 64 == 0:
                    await asyncio.sleep(0)  # let the reader run

        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
        tasks = [asyncio.create_task(reader()), asyncio.create_task(sender())]
        print("ready", flush=True)
        await stop
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()
    print(json.dumps({"sent": sent, "received": received}), flush=True)


# -- the well-behaved client ---------------------------------------------------------------


async def well_behaved(url: str, token: str, seconds: float, interval: float) -> list[float]:
    """Round trips (ms) of one request every ``interval`` s, kinds in turn."""
    kinds = ("ping", "call", "status", "jobs.list")
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        ws = await connect(session, url, token)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            start = time.perf_counter()
            await ws.send_str(frame(kinds[i % len(kinds)], i))
            reply = json.loads((await ws.receive()).data)
            latencies.append((time.perf_counter() - start) * 1000)
            assert reply["id"] == i, reply
            assert reply["type"] != "error", reply
            await asyncio.sleep(interval)
        await ws.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, token: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        request = urllib.request.Request(url + "/readyz")
        request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


async def fill_queue(url: str, token: str) -> None:
    async with fiefdom.connect(url, token=token) as client:
        await client.pause("bench")
        for _ in range(JOBS):
            await client.enqueue("bench.idle", {}, queue="bench")


def measure(url: str, token: str, seconds: float, interval: float) -> dict[str, float]:
    latencies = asyncio.run(
        well_behaved(url.replace("http", "ws") + "/ws", token, seconds, interval)
    )
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(max(latencies), 3),
    }


def emit(**fields: Any) -> None:
    print(json.dumps({"benchmark": "control channel fairness", **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--floods", default=",".join(FLOODS))
    parser.add_argument("--flood", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        asyncio.run(flood(args.url, args.token, args.flood))
        return
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "config.toml"
        config.write_text(
            f"""
[daemon]
name = "bench"
data_dir = "data"
log_level = "warning"
modules = ["control_fairness"]
python_path = [{json.dumps(str(HERE))}]
[control]
listen = "127.0.0.1:{port}"
[jobs.queues.bench]
concurrency = 1
"""
        )
        log = (Path(tmp) / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fiefdom.cli", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            token_path = Path(tmp) / "data" / "admin.token"
            end = time.monotonic() + 30
            while not token_path.exists():
                if time.monotonic() > end:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            token = token_path.read_text().strip()
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, token)
            asyncio.run(fill_queue(url, token))
            measure(url, token, 1.0, args.interval)  # warm-up
            solo = measure(url, token, args.seconds, args.interval)
            emit(figure="solo", loop=_loop(), cpus=os.cpu_count(), **solo)
            for kind in args.floods.split(","):
                flooder = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--flood",
                        kind,
                        "--url",
                        f"{url}/ws",
                        "--token",
                        token,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert flooder.stdout is not None
                assert flooder.stdin is not None
                assert flooder.stdout.readline().strip() == "ready"
                time.sleep(0.5)  # the flood reaches its pace before the measure starts
                under = measure(url, token, args.seconds, args.interval)
                flooder.stdin.close()
                counts = json.loads(flooder.stdout.readline())
                flooder.wait(30)
                emit(
                    figure="under flood",
                    flood=kind,
                    **under,
                    solo_p99_ms=solo["p99_ms"],
                    ratio=round(under["p99_ms"] / solo["p99_ms"], 2),
                    flooder_frames_sent=counts["sent"],
                    flooder_frames_answered=counts["received"],
                    goal="ratio < 3",
                )
            again = measure(url, token, args.seconds, args.interval)
            emit(figure="solo again", **again)
        finally:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            log.close()


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


if __name__ == "__main__":
    main()
