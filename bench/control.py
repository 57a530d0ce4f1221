"""Request/reply calls per second to an actor through the websocket control
channel of a real `fiefdom serve` subprocess, with 1 client and with 50 concurrent
clients, next to a bare aiohttp websocket echo server (also a subprocess, on the
same event loop) measured in the same run with the same client code. Prints JSON.

    .venv/bin/python bench/control.py [--seconds 3]

This file is also the daemon's user module (its ``setup`` exposes the actor) and
the echo server (``--echo-server PORT``)."""

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
import msgspec

import fiefdom

HERE = Path(__file__).resolve().parent


# -- the hosted actor (the daemon imports this module and calls setup) ------------------


class Ping(fiefdom.Request[int]):
    n: int


class Pinger(fiefdom.Actor[Ping]):
    async def receive(self, msg: Ping) -> int:
        return msg.n


async def setup(daemon: Any) -> None:
    ref = await daemon.system.spawn(Pinger, name="pinger", mailbox_capacity=10_000)
    daemon.expose("pinger", ref, [Ping])


# -- the baseline: a bare aiohttp websocket echo server ----------------------------------


def loop_runner() -> tuple[str, Any]:
    try:
        import uvloop
    except ImportError:
        return "asyncio", asyncio.run
    return "uvloop", uvloop.run


def echo_server(port: int) -> None:
    from aiohttp import web

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    loop_runner()[1](main())


# -- the clients -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, token: str | None, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def wait_tcp(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


async def client_loop(
    session: aiohttp.ClientSession, url: str, token: str | None, stop_at: float
) -> int:
    # The token goes in the upgrade too, as fiefdom's client sends it: connections
    # still to authenticate have a small limit of their own on the daemon.
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.ws_connect(url, compress=0, headers=headers) as ws:
        if token is not None:
            await ws.send_str(json.dumps({"type": "hello", "id": 0, "token": token}))
            assert json.loads((await ws.receive()).data)["type"] == "welcome"
        done = 0
        i = 1
        while time.monotonic() < stop_at:
            frame = (
                f'{{"type":"call","id":{i},"target":"pinger","message_type":"Ping",'
                f'"message":{{"n":{i}}}}}'
            )
            await ws.send_str(frame)
            reply = await ws.receive()
            if token is not None:
                assert b'"call.reply"' in reply.data.encode()
            done += 1
            i += 1
        return done


async def measure(url: str, token: str | None, clients: int, seconds: float) -> float:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up (connections, code paths), then measure.
        await asyncio.gather(
            *(client_loop(session, url, token, time.monotonic() + 0.3) for _ in range(clients))
        )
        start = time.monotonic()
        counts = await asyncio.gather(
            *(client_loop(session, url, token, start + seconds) for _ in range(clients))
        )
        elapsed = time.monotonic() - start
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--echo-server", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    loop_name, run = loop_runner()
    with tempfile.TemporaryDirectory() as tmp:
        daemon_port, echo_port = free_port(), free_port()
        config = Path(tmp) / "config.toml"
        config.write_text(
            f"""
[daemon]
name = "bench"
data_dir = "data"
log_level = "warning"
modules = ["control"]
python_path = [{json.dumps(str(HERE))}]
[control]
listen = "127.0.0.1:{daemon_port}"
messages_per_second = 10000000.0
burst = 10000000
max_connections = 1000
[jobs]
enabled = false
"""
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fiefdom.cli", "serve", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen([sys.executable, __file__, "--echo-server", str(echo_port)]),
        ]
        try:
            token_path = Path(tmp) / "data" / "admin.token"
            end = time.monotonic() + 30
            while not token_path.exists():
                if time.monotonic() > end:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            token = token_path.read_text().strip()
            wait_http(f"http://127.0.0.1:{daemon_port}/readyz", token)
            wait_tcp(echo_port)
            results: dict[str, Any] = {}
            for clients in (1, 50):
                echo = run(measure(f"ws://127.0.0.1:{echo_port}/ws", None, clients, args.seconds))
                calls = run(
                    measure(f"ws://127.0.0.1:{daemon_port}/ws", token, clients, args.seconds)
                )
                results[f"{clients}_client" + ("s" if clients > 1 else "")] = {
                    "fiefdom_calls_per_s": round(calls),
                    "bare_echo_per_s": round(echo),
                    "ratio": round(calls / echo, 3),
                }
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(
        msgspec.json.encode(
            {
                "benchmark": "control channel request/reply to an actor",
                "loop": loop_name,
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "seconds_per_figure": args.seconds,
                "results": results,
                "goal": "ratio >= 0.5",
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
