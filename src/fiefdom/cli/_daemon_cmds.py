"""The commands on the daemon itself: ``serve``, ``migrate``, ``status``, the
queues, the exposed actors, ``drain``, ``stop`` and ``dump``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from .._errors import FiefdomError, RestartIntensityExceeded
from ..daemon import Config, Daemon
from ..protocol import Client, StatusReply
from ._common import EXIT_STARTUP, CommandError, config_of, emit_json
from ._print import _print_queues, _print_status, _print_targets


def _serve(args: argparse.Namespace) -> int:
    daemon: Daemon | None = None
    try:
        config = config_of(args)
        runner, loop_name = _runner(config)
        daemon = Daemon(config, loop_name=loop_name)
        runner(daemon.run())
    except Exception as exc:
        if daemon is not None and daemon.reached_running:
            raise  # it ran, then failed: like any other command's error
        if isinstance(exc, RestartIntensityExceeded):
            # Its tree gave up (a module's service kept crashing) while it started:
            # a failure of what it runs, not of its settings.
            raise
        raise CommandError(_startup_error(exc), status=EXIT_STARTUP) from exc
    return 0


def _startup_error(exc: Exception) -> str:
    if isinstance(exc, CommandError | FiefdomError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    # A bug, not a setting: its traceback is what helps, under --debug.
    return f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)"


def _runner(config: Config) -> tuple[Callable[[Awaitable[None]], None], str]:
    """How to run the daemon's loop, as ``daemon.loop`` asks, and the loop's name."""
    wanted = config.daemon.loop
    loop_name = "asyncio"
    runner: Callable[[Awaitable[None]], None] = asyncio.run  # type: ignore[assignment]
    if wanted in ("auto", "uvloop"):
        try:
            # Imported by name: uvloop is optional (the ``fast`` extra), so the type
            # check must not depend on whether it is installed.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if wanted == "uvloop":
                raise CommandError(
                    "daemon.loop = 'uvloop' but uvloop is not installed: "
                    "pip install 'fiefdom[fast]'"
                ) from None
        else:
            runner = uvloop.run
            loop_name = "uvloop"
    return runner, loop_name


def _migrate(args: argparse.Namespace) -> int:
    config = config_of(args)
    url = args.store or config.store_url

    async def run() -> int:
        from ..daemon._storage import open_store

        if args.store is None and config.store.url is None:
            # The default store is SQLite in the data folder: made here if need be.
            # Any other store's folder is its owner's to make.
            config.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = open_store(url)
        path = getattr(store, "path", None)
        if store.backend == "sqlite" and isinstance(path, str):
            folder = Path(path).parent
            if not folder.is_dir():
                raise CommandError(
                    f"{folder} does not exist: create the SQLite database's folder first"
                )
        await store.open(migrate=True)
        try:
            return await store.schema_version()
        finally:
            await store.close()

    version = asyncio.run(run())
    if args.json:
        emit_json({"schema_version": version})
    else:
        print(f"schema at version {version}")
    return 0


async def _status(client: Client, args: argparse.Namespace) -> int:
    status = await client.status()
    if args.json:
        emit_json(status)
    else:
        _print_status(status)
    return 0


async def _queues(client: Client, args: argparse.Namespace) -> int:
    command = args.queues_command
    if command == "ls":
        queues = await client.queues()
        if args.json:
            emit_json(queues)
        else:
            _print_queues(queues)
        return 0
    if command == "pause":
        await client.pause(args.queue)
    elif command == "resume":
        await client.resume(args.queue)
    else:
        await client.drain_queue(args.queue, timeout=args.wait)
    done = {"pause": "paused", "resume": "resumed", "drain": "drained"}[command]
    if args.json:
        emit_json({"queue": args.queue, "done": done})
    else:
        print(f"queue {args.queue} {done}")
    return 0


async def _actors(client: Client, args: argparse.Namespace) -> int:
    command = args.actors_command
    if command == "ls":
        status = await client.status()
        if args.json:
            emit_json(status.targets)
        else:
            # With the tree: a domain's paused column names its keys paused on their own.
            _print_targets(status.targets, status.tree)
        return 0
    target, key = args.target, args.key
    if command == "pause":
        await client.pause_actor(target, key=key)
    elif command == "resume":
        await client.resume_actor(target, key=key)
    else:
        await client.stop_actor(target, key=key, timeout=args.wait)
    done = {"pause": "paused", "resume": "resumed", "stop": "stopped"}[command]
    if args.json:
        emit_json({"target": target, "key": key, "done": done})
    else:
        what = target if key is None else f"{target} key {key}"
        if command == "stop" and key is None and _is_domain(await client.status(), target):
            what = f"{target}: every live activation"
        print(f"{what} {done}")
    return 0


def _is_domain(status: StatusReply, target: str) -> bool:
    return any(t.name == target and t.kind == "domain" for t in status.targets)


async def _dump(client: Client, args: argparse.Namespace) -> int:
    reply = await client.dump()
    if args.json:
        emit_json({"path": reply.path, "events": reply.events})
    else:
        print(f"wrote {reply.events} events to {reply.path}")
    return 0
