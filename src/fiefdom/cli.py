"""The ``fiefdom`` command line: run the daemon (``serve``), migrate its store, and
drive a running daemon through its control channel. Output is a readable table by
default and JSON with ``--json``; an error is one line on stderr and exit status 1
(2 when ``serve`` cannot start), with its traceback before it under ``--debug``.

The control token is read from ``FIEFDOM_TOKEN``, else from the configuration's
tokens, else from the daemon's ``admin.token``. ``--token`` works too, but any user
of the machine can read it in the process list: the command warns when it is used."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

import msgspec
import structlog

from ._errors import FiefdomError
from .daemon import Config, Daemon, load_config, read_token_file
from .protocol import Client, ClusterInfo, QueueInfo, StatusReply, TargetInfo, connect
from .storage import Enqueued, JobInfo, JobState

EXIT_ERROR = 1
# ``serve`` could not start: nothing was created; the line names the setting to change.
EXIT_STARTUP = 2


class CommandError(Exception):
    """A one-line error for the user, and the exit status that goes with it."""

    def __init__(self, message: str, *, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


# -- configuration and where the daemon is ---------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("FIEFDOM_CONFIG")
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    return load_config(path)


def _url(args: argparse.Namespace, config: Config) -> str:
    if args.url:
        return str(args.url)
    if os.environ.get("FIEFDOM_URL"):
        return os.environ["FIEFDOM_URL"]
    endpoint = config.endpoint_path
    if endpoint.is_file():
        # The running daemon's actual address (its port may have been chosen by the OS).
        try:
            return str(json.loads(endpoint.read_text(encoding="utf-8"))["url"])
        except (OSError, ValueError, KeyError):
            pass
    host, port = config.control.host_port()
    return f"http://{host}:{port}"


def _token(args: argparse.Namespace, config: Config) -> str:
    if args.token:
        print(
            "fiefdom: warning: --token shows the token to every user of this machine "
            "(ps, /proc); set FIEFDOM_TOKEN or let the command read the token file instead",
            file=sys.stderr,
        )
        return str(args.token)
    if os.environ.get("FIEFDOM_TOKEN"):
        return os.environ["FIEFDOM_TOKEN"]
    rank = {"read": 0, "operate": 1, "admin": 2}
    for spec in sorted(config.control.tokens, key=lambda s: -rank[s.role]):
        if spec.token:
            return spec.token
        if spec.token_file:
            return read_token_file(Path(config.base_dir) / spec.token_file)
    path = config.admin_token_path
    if not path.is_file():
        raise CommandError(
            f"no token: {path} does not exist (has the daemon started once?); "
            "pass --token or set FIEFDOM_TOKEN"
        )
    return read_token_file(path)


# -- output ----------------------------------------------------------------------------


def _emit_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _when(moment: datetime | float | None) -> str:
    """A time (a datetime, or unix seconds) in UTC, to the second."""
    if moment is None:
        return "-"
    if isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_status(status: StatusReply) -> None:
    state = "draining" if status.draining else ("ready" if status.ready else "not ready")
    print(f"{status.name} {status.version}  pid {status.pid}  up {status.uptime:.0f}s  {state}")
    cluster = status.cluster
    where = (
        ""
        if cluster is None
        else f"  cluster: {cluster.partitions}/{cluster.total} partitions, "
        f"{cluster.nodes} node{'s' if cluster.nodes != 1 else ''}"
    )
    print(f"loop {status.loop}  connections {status.connections}{where}")
    print()
    rows: list[list[Any]] = []

    def walk(node: dict[str, Any]) -> None:
        kind = node.get("kind")
        if kind == "supervisor":
            rows.append([node["path"], "supervisor", "-", "-", node["restarts"], "-"])
            for child in node.get("children", []):
                walk(child)
        elif kind == "actor":
            rows.append(
                [
                    node["path"],
                    "actor",
                    node["state"]
                    + (" (paused)" if node.get("paused") else "")
                    + (" (stuck)" if node.get("stuck") else ""),
                    f"{node['mailbox_depth']}/{node['mailbox_capacity']}",
                    node["restarts"],
                    node["messages_handled"],
                ]
            )
        elif kind == "domain":
            rows.append(
                [
                    node["path"],
                    "domain",
                    f"{node['live']} live" + _domain_pauses(node),
                    "-",
                    node["crashes"],
                    node["activations"],
                ]
            )
        elif kind == "service":
            state = "running" if node["running"] else "stopped"
            rows.append([node["path"], "service", state, "-", node["restarts"], "-"])

    walk(status.tree)
    _table(["path", "kind", "state", "mailbox", "restarts", "handled"], rows)
    if status.targets:
        print()
        _print_targets(status.targets)
    if status.queues:
        print()
        _print_queues(status.queues)
    if cluster is not None and cluster.members:
        print()
        _print_cluster(cluster)


_EVENTS_SHOWN = 5  # the last events of the cluster node status prints (--json has all)


def _print_cluster(cluster: ClusterInfo) -> None:
    """The nodes of the cluster as this daemon's node last saw them, then its last
    events."""
    rows: list[list[Any]] = []
    for member in cluster.members:
        state = (
            "this node" if member.node == cluster.node else ("live" if member.alive else "silent")
        )
        epochs = _epochs(member.min_epoch, member.max_epoch)
        rows.append([member.node, member.partitions, epochs, member.lapsed, state])
    if cluster.unowned:
        rows.append(["-", cluster.unowned, "-", "-", "no live lease"])
    _table(["node", "partitions", "epochs", "lapsed", "state"], rows)
    if cluster.events:
        print()
        _table(
            ["time", "event", "partitions", "nodes"],
            [
                [_when(e.at), e.kind, e.partitions, ",".join(e.nodes) or "-"]
                for e in cluster.events[-_EVENTS_SHOWN:]
            ],
        )


def _epochs(low: int | None, high: int | None) -> str:
    if low is None or high is None:
        return "-"
    return str(low) if low == high else f"{low}-{high}"


def _domain_pauses(node: dict[str, Any]) -> str:
    if node.get("paused"):
        resumed = node.get("resumed_keys") or []
        return " (paused" + (f", except {', '.join(resumed)})" if resumed else ")")
    keys = node.get("paused_keys") or []
    return f" (paused keys: {', '.join(keys)})" if keys else ""


def _print_targets(targets: Sequence[TargetInfo]) -> None:
    _table(
        ["target", "kind", "paused", "messages"],
        [[t.name, t.kind, "yes" if t.paused else "no", ", ".join(t.messages)] for t in targets],
    )


def _print_queues(queues: Sequence[QueueInfo]) -> None:
    states = [s for s in JobState if any(s in q.counts for q in queues)]
    _table(
        ["queue", "paused", *states],
        [
            [q.name, "yes" if q.paused else "no", *(q.counts.get(s, 0) for s in states)]
            for q in queues
        ],
    )


def _print_jobs(jobs: Sequence[JobInfo]) -> None:
    _table(
        ["id", "kind", "queue", "state", "attempt", "key", "run_at"],
        [
            [
                j.id,
                j.kind,
                j.queue,
                j.state,
                f"{j.attempt}/{j.max_attempts}",
                j.key,
                _when(j.run_at),
            ]
            for j in jobs
        ],
    )


# The fields of a job that ``jobs show`` prints, by their names in JobInfo.
_JOB_FIELDS = ("id", "kind", "queue", "state", "priority", "key", "attempt", "max_attempts")
_JOB_TIMES = ("created_at", "run_at", "attempted_at", "finished_at")
_WIDTH = len("cancel_requested")


def _print_job(job: JobInfo) -> None:
    for name in _JOB_FIELDS:
        print(f"{name:<{_WIDTH}} {_cell(getattr(job, name))}")
    print(f"{'worker':<{_WIDTH}} {_cell(job.worker)}")
    print(f"{'cancel_requested':<{_WIDTH}} {'yes' if job.cancel_requested else 'no'}")
    for name in _JOB_TIMES:
        print(f"{name:<{_WIDTH}} {_when(getattr(job, name))}")
    print(f"{'args':<{_WIDTH}} {job.args}")
    if job.damaged is not None:
        print(f"{'damaged':<{_WIDTH}} {job.damaged}")
    label = "errors"
    for error in job.errors:
        print(
            f"{label:<{_WIDTH}} attempt {error.attempt} at {_when(error.at)}: "
            f"{error.type}: {error.message}"
        )
        label = ""


def _print_enqueued(kind: str, enqueued: Enqueued) -> None:
    if not enqueued.duplicate:
        print(f"enqueued job {enqueued.id} ({kind})")
    elif enqueued.id is not None:
        print(f"job {enqueued.id} is a unique {kind} job like this one: nothing new enqueued")
    else:
        print(f"a unique {kind} job like this one has just finished: nothing enqueued")


# -- commands --------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    daemon: Daemon | None = None
    try:
        config = _config(args)
        runner, loop_name = _runner(config)
        daemon = Daemon(config, loop_name=loop_name)
        runner(daemon.run())
    except Exception as exc:
        if daemon is not None and daemon.reached_running:
            raise  # it ran, then failed: like any other command's error
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
    config = _config(args)

    async def run() -> int:
        from .daemon._storage import open_store

        config.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = open_store(config.store_url)
        await store.open(migrate=True)
        try:
            return await store.schema_version()
        finally:
            await store.close()

    version = asyncio.run(run())
    if args.json:
        _emit_json({"schema_version": version})
    else:
        print(f"schema at version {version}")
    return 0


def _remote(action: Callable[[Client, argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    def command(args: argparse.Namespace) -> int:
        config = _config(args)
        url = _url(args, config)
        token = _token(args, config)

        async def run() -> int:
            async with connect(url, token=token, timeout=args.timeout) as client:
                return await action(client, args)

        return asyncio.run(run())

    return command


async def _status(client: Client, args: argparse.Namespace) -> int:
    status = await client.status()
    if args.json:
        _emit_json(status)
    else:
        _print_status(status)
    return 0


async def _jobs_ls(client: Client, args: argparse.Namespace) -> int:
    state = None if args.state is None else JobState(args.state)
    jobs = await client.list_jobs(
        queue=args.queue, state=state, kind=args.kind, after_id=args.after_id, limit=args.limit
    )
    if args.json:
        _emit_json(jobs)
    else:
        _print_jobs(jobs)
    return 0


async def _job_action(client: Client, args: argparse.Namespace) -> int:
    action = {"show": client.get_job, "retry": client.retry_job, "cancel": client.cancel_job}[
        args.jobs_command
    ]
    job = await action(args.job_id)
    if args.json:
        _emit_json(job)
    else:
        _print_job(job)
    return 0


async def _jobs_enqueue(client: Client, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.args)
    except ValueError as exc:
        raise CommandError(f"job arguments are not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError("job arguments must be a JSON object")
    enqueued = await client.enqueue(
        args.kind, payload, queue=args.queue, priority=args.priority, delay=args.delay
    )
    if args.json:
        _emit_json(enqueued)
    else:
        _print_enqueued(args.kind, enqueued)
    return 0


async def _queues(client: Client, args: argparse.Namespace) -> int:
    command = args.queues_command
    if command == "ls":
        queues = await client.queues()
        if args.json:
            _emit_json(queues)
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
        _emit_json({"queue": args.queue, "done": done})
    else:
        print(f"queue {args.queue} {done}")
    return 0


async def _actors(client: Client, args: argparse.Namespace) -> int:
    command = args.actors_command
    if command == "ls":
        targets = (await client.status()).targets
        if args.json:
            _emit_json(targets)
        else:
            _print_targets(targets)
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
        _emit_json({"target": target, "key": key, "done": done})
    else:
        what = target if key is None else f"{target} key {key}"
        if command == "stop" and key is None and _is_domain(await client.status(), target):
            what = f"{target}: every live activation"
        print(f"{what} {done}")
    return 0


def _is_domain(status: StatusReply, target: str) -> bool:
    return any(t.name == target and t.kind == "domain" for t in status.targets)


async def _drain(client: Client, args: argparse.Namespace) -> int:
    await client.drain(timeout=args.wait)
    if args.json:
        _emit_json({"drained": True})
    else:
        print("drained: no new jobs are claimed and none is running (stop it with 'fiefdom stop')")
    return 0


async def _stop(client: Client, args: argparse.Namespace) -> int:
    mode: Literal["drain", "cancel"] = "cancel" if args.cancel else "drain"
    await client.stop_daemon(mode)
    if args.json:
        _emit_json({"stopping": mode})
    else:
        print(f"stopping ({mode})")
    return 0


async def _dump(client: Client, args: argparse.Namespace) -> int:
    reply = await client.dump()
    if args.json:
        _emit_json({"path": reply.path, "events": reply.events})
    else:
        print(f"wrote {reply.events} events to {reply.path}")
    return 0


# -- parser ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", help="configuration file (default: ./config.toml)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    common.add_argument(
        "--debug", action="store_true", help="print an error's traceback before its line"
    )
    remote = argparse.ArgumentParser(add_help=False, parents=[common])
    remote.add_argument("--url", help="the daemon's address (default: from the configuration)")
    remote.add_argument(
        "--token",
        help="a control token; other users see it in ps: prefer FIEFDOM_TOKEN "
        "(default: FIEFDOM_TOKEN, the configured tokens, then the data folder's admin.token)",
    )
    remote.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")

    parser = argparse.ArgumentParser(prog="fiefdom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the daemon").set_defaults(func=_serve)
    sub.add_parser("migrate", parents=[common], help="apply the store's migrations").set_defaults(
        func=_migrate
    )
    sub.add_parser("status", parents=[remote], help="the daemon's actors and queues").set_defaults(
        func=_remote(_status)
    )

    jobs = sub.add_parser("jobs", help="list, inspect, enqueue, retry and cancel jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    ls = jobs_sub.add_parser("ls", parents=[remote], help="list jobs")
    ls.add_argument("--queue")
    ls.add_argument("--state", choices=[str(s) for s in JobState])
    ls.add_argument("--kind")
    ls.add_argument("--after-id", type=int, default=0, help="list the jobs after this id")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (up to 10000)")
    ls.set_defaults(func=_remote(_jobs_ls))
    for name, text in (("show", "show a job"), ("retry", "run a job again"), ("cancel", "cancel")):
        p = jobs_sub.add_parser(name, parents=[remote], help=text)
        p.add_argument("job_id", type=int)
        p.set_defaults(func=_remote(_job_action))
    enqueue = jobs_sub.add_parser("enqueue", parents=[remote], help="enqueue a job")
    enqueue.add_argument("kind")
    enqueue.add_argument("args", nargs="?", default="{}", help="the job's arguments as JSON")
    enqueue.add_argument("--queue", help="instead of the kind's queue")
    enqueue.add_argument("--priority", type=int, help="lower runs first")
    enqueue.add_argument("--delay", type=float, help="seconds from now")
    enqueue.set_defaults(func=_remote(_jobs_enqueue))

    queues = sub.add_parser("queues", help="list, pause, resume and drain queues")
    queues_sub = queues.add_subparsers(dest="queues_command", required=True, metavar="ACTION")
    queues_sub.add_parser("ls", parents=[remote], help="jobs per queue and state").set_defaults(
        func=_remote(_queues)
    )
    for name, text in (
        ("pause", "stop claiming jobs"),
        ("resume", "claim jobs again"),
        ("drain", "stop claiming and wait for running jobs"),
    ):
        p = queues_sub.add_parser(name, parents=[remote], help=text)
        p.add_argument("queue")
        p.add_argument("--wait", type=float, default=None, help="seconds to wait (drain)")
        p.set_defaults(func=_remote(_queues))

    actors = sub.add_parser("actors", help="list, pause, resume and stop exposed actors")
    actors_sub = actors.add_subparsers(dest="actors_command", required=True, metavar="ACTION")
    actors_sub.add_parser(
        "ls", parents=[remote], help="the exposed actors and domains"
    ).set_defaults(func=_remote(_actors))
    for name, text in (
        ("pause", "finish the current message, then take no next one"),
        ("resume", "take messages again"),
        ("stop", "handle what is queued, then stop (a domain key: passivate it)"),
    ):
        p = actors_sub.add_parser(name, parents=[remote], help=text)
        p.add_argument("target", help="an exposed actor or domain (see 'fiefdom actors ls')")
        p.add_argument("--key", help="one key of a domain (default: the whole domain)")
        if name == "stop":
            p.add_argument("--wait", type=float, default=None, help="seconds to wait at most")
        p.set_defaults(func=_remote(_actors))

    drain = sub.add_parser("drain", parents=[remote], help="stop taking work; let running finish")
    drain.add_argument("--wait", type=float, default=None, help="seconds to wait at most")
    drain.set_defaults(func=_remote(_drain))
    stop = sub.add_parser("stop", parents=[remote], help="stop the daemon (drains first)")
    stop.add_argument("--cancel", action="store_true", help="cancel running work at once")
    stop.set_defaults(func=_remote(_stop))
    sub.add_parser("dump", parents=[remote], help="write the flight recorder now").set_defaults(
        func=_remote(_dump)
    )
    return parser


def _fail(message: str, exc: BaseException, debug: bool, status: int = EXIT_ERROR) -> NoReturn:
    if debug:
        # What went wrong underneath: the cause a one-line error was made from.
        traceback.print_exception(exc.__cause__ or exc)
    print(f"fiefdom: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _quiet_logging() -> None:
    # Commands other than serve print their results on stdout; library logs would
    # mix into it (and into --json), so only warnings go, to stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        _quiet_logging()
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args))
    except CommandError as exc:
        _fail(str(exc), exc, debug, exc.status)
    except FiefdomError as exc:
        _fail(str(exc) or type(exc).__name__, exc, debug)
    except OSError as exc:
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        _fail(message, exc, debug)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
