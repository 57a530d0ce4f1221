"""Request/reply calls per second to an actor through the websocket control
channel of a real `fiefdom serve` subprocess, with 1 client and with 50 concurrent
clients, next to a bare aiohttp websocket echo server (also a subprocess, on the
same event loop) measured in the same run with the same client code, in interleaved
rounds (the order flips each round). Prints one JSON line per round and one per
figure: the medians, and the ratio as the median of the per-round ratios. The
daemon's [control] limits are raised for the benchmark (``BENCH_CONTROL_SETTINGS``,
printed too): the defaults would rate-limit the clients.

    .venv/bin/python bench/control.py [--seconds 2] [--rounds 5] [--clients 1 50]

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


WARM_UP = 0.3  # seconds of calls before each measurement


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, token: str | None, clients: int, seconds: float) -> float:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up (connections, code paths), then measure.
        await asyncio.gather(
            *(client_loop(session, url, token, time.monotonic() + WARM_UP) for _ in range(clients))
        )
        start = time.monotonic()
        counts = await asyncio.gather(
            *(client_loop(session, url, token, start + seconds) for _ in range(clients))
        )
        elapsed = time.monotonic() - start
    return sum(counts) / elapsed


# Settings of the daemon's [control] section for this benchmark, set explicitly: the
# defaults limit a connection to 1000 frames/s (a heavy request counting 5) and 4
# running requests, which would measure the limits, not the channel. One call at a
# time per client never reaches the in-flight or running caps set here.
BENCH_CONTROL_SETTINGS: dict[str, Any] = {
    "messages_per_second": 10_000_000.0,
    "burst": 10_000_000,
    "max_connections": 1000,
    "max_in_flight": 64,
    "max_running_requests": 256,
    "max_running_per_connection": 64,
}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def emit(obj: dict[str, Any]) -> None:
    print(msgspec.json.encode(obj).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per figure per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 50], help="client counts to measure"
    )
    parser.add_argument("--echo-server", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    loop_name, run = loop_runner()
    control = "\n".join(f"{k} = {json.dumps(v)}" for k, v in BENCH_CONTROL_SETTINGS.items())
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
{control}
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
        emit(
            {
                "benchmark": "control channel request/reply to an actor",
                "loop": loop_name,
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "seconds_per_figure": args.seconds,
                "rounds": args.rounds,
                "daemon_control_settings": BENCH_CONTROL_SETTINGS,
                "note": "the daemon's rate limit and per-connection caps are raised "
                "explicitly for the benchmark (daemon_control_settings)",
            }
        )
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
            echo_url = f"ws://127.0.0.1:{echo_port}/ws"
            daemon_url = f"ws://127.0.0.1:{daemon_port}/ws"
            raw: dict[int, list[dict[str, float]]] = {n: [] for n in args.clients}
            # Interleaved rounds, the order flipping each round: noise from the
            # machine's other work lands on both sides alike.
            for i in range(args.rounds):
                for clients in args.clients:
                    order = ("echo", "fiefdom") if i % 2 == 0 else ("fiefdom", "echo")
                    rates: dict[str, float] = {}
                    for side in order:
                        pid = procs[0 if side == "fiefdom" else 1].pid
                        cpu = cpu_seconds(pid)
                        if side == "echo":
                            rates[side] = run(measure(echo_url, None, clients, args.seconds))
                        else:
                            rates[side] = run(measure(daemon_url, token, clients, args.seconds))
                        # The server's CPU time per request (warm-up included: it is
                        # the same on both sides), steadier than rates on a busy machine.
                        served = rates[side] * (args.seconds + WARM_UP)
                        rates[f"{side}_cpu_us"] = (cpu_seconds(pid) - cpu) / served * 1e6
                    raw[clients].append(rates)
                    emit(
                        {
                            "round": i,
                            "clients": clients,
                            "order": list(order),
                            "fiefdom_calls_per_s": round(rates["fiefdom"]),
                            "bare_echo_per_s": round(rates["echo"]),
                            "ratio": round(rates["fiefdom"] / rates["echo"], 3),
                            "fiefdom_server_cpu_us_per_call": round(rates["fiefdom_cpu_us"], 1),
                            "echo_server_cpu_us_per_echo": round(rates["echo_cpu_us"], 1),
                        }
                    )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    goals = {1: 0.8, 50: 0.75}
    for clients, rounds in raw.items():
        emit(
            {
                "figure": f"control channel call, {clients} client" + ("s" if clients > 1 else ""),
                "loop": loop_name,
                "fiefdom_calls_per_s": round(median([r["fiefdom"] for r in rounds])),
                "bare_echo_per_s": round(median([r["echo"] for r in rounds])),
                "ratio": round(median([r["fiefdom"] / r["echo"] for r in rounds]), 3),
                "ratio_is": "median of per-round ratios",
                "fiefdom_server_cpu_us_per_call": round(
                    median([r["fiefdom_cpu_us"] for r in rounds]), 1
                ),
                "echo_server_cpu_us_per_echo": round(median([r["echo_cpu_us"] for r in rounds]), 1),
                "goal": f"ratio >= {goals[clients]}" if clients in goals else None,
            }
        )


if __name__ == "__main__":
    main()
