"""A user module running two tiny aiohttp servers as daemon services, one as an async
function that serves until cancelled, one as an object with start() and stop(); each
writes its port to the data folder once it listens and logs when it has closed.
``GET /count`` asks the module's counter actor, so the servers use the tree."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

import fiefdom


class Hit(fiefdom.Request[int]):
    """Count one request; answers the count so far."""


class Hits(fiefdom.Actor[Hit]):
    def __init__(self) -> None:
        self.count = 0

    async def receive(self, msg: Hit) -> int:
        self.count += 1
        return self.count


def make_app(hits: fiefdom.ActorRef[Hit]) -> web.Application:
    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(await hits.ask(Hit())))

    app = web.Application()
    app.router.add_get("/count", count)
    return app


class HttpServer:
    """The object form: start() returns once the port listens, stop() once it closed."""

    def __init__(self, app: web.Application, port_file: Path, log: object) -> None:
        self.runner = web.AppRunner(app)
        self.port_file = port_file
        self.log = log

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port_file.write_text(str(self.runner.addresses[0][1]))

    async def stop(self) -> None:
        await self.runner.cleanup()
        self.log.info("object server closed")  # type: ignore[attr-defined]


async def setup(daemon: fiefdom.ModuleHost) -> None:
    hits = await daemon.system.spawn(Hits, name="hits")
    data = daemon.data_dir

    async def serve_http() -> None:
        runner = web.AppRunner(make_app(hits))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            (data / "function.port").write_text(str(runner.addresses[0][1]))
            await asyncio.Event().wait()  # until cancelled
        finally:
            await runner.cleanup()
            daemon.log.info("function server closed")

    await daemon.run_service("http", serve_http)
    await daemon.run_service(
        "admin-http", HttpServer(make_app(hits), data / "object.port", daemon.log)
    )
