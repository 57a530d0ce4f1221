"""The parser of the command line (global options before or after the command) and
``main``, which runs a command and turns its errors into one line and a status."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import structlog

from .._errors import FiefdomError
from ..storage import JobState
from ._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    ZONE,
    CommandError,
    duration,
    finite,
    moment,
    positive,
    remote,
)
from ._daemon_cmds import _actors, _dump, _migrate, _queues, _serve, _status
from ._jobs import (
    jobs_cancel,
    jobs_enqueue,
    jobs_kinds,
    jobs_ls,
    jobs_prune,
    jobs_retry,
    jobs_show,
)
from ._live import call, drain, jobs_watch, logs, stop
from ._vault import register as _vault_parser


def _version() -> str:
    try:
        return importlib.metadata.version("fiefdom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _global_options(
    parser: argparse.ArgumentParser, *, sub: bool, json_output: bool = True
) -> None:
    """The options every command takes, before or after its name. On a command they
    default to nothing, so that one given before the command is kept. ``call`` takes
    ``--json`` for its message instead (its output is JSON anyway)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="configuration file (default: $FIEFDOM_CONFIG, else ./config.toml)",
    )
    if json_output:
        parser.add_argument(
            "--json", action="store_true", default=default(False), help="print JSON, not tables"
        )
    parser.add_argument(
        "--local",
        action="store_true",
        default=default(False),
        help="print times in this machine's zone with its offset (default: UTC)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="print an error's traceback before its line",
    )
    parser.add_argument(
        "--url",
        default=default(None),
        help="the daemon's address (default: from the configuration)",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        default=default(None),
        help="read the control token from this file",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        default=default(None),
        help="verify a TLS daemon's certificate (https://, wss://) against the CA "
        "certificates in this PEM file (default: $FIEFDOM_CA_FILE, else the system's)",
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help="a control token; other users see it in ps: prefer --token-file or FIEFDOM_TOKEN",
    )
    parser.add_argument(
        "--timeout",
        type=finite,
        default=default(30.0),
        help="seconds to wait for a reply (default: 30)",
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, sub=True)
    common_no_json = argparse.ArgumentParser(add_help=False)
    _global_options(common_no_json, sub=True, json_output=False)
    parser = argparse.ArgumentParser(prog="fiefdom", description=_DESCRIPTION)
    _global_options(parser, sub=False)
    parser.add_argument("--version", action="version", version=f"fiefdom {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
    ) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[common], help=text, description=text)

    command(sub, "serve", "run the daemon").set_defaults(func=_serve)
    migrate = command(sub, "migrate", "apply the store's migrations")
    migrate.add_argument(
        "--store",
        metavar="URL",
        help="the store to migrate, like sqlite:///path/to/fiefdom.db or "
        "postgresql://user@host:port/db (default: the configuration's)",
    )
    migrate.set_defaults(func=_migrate)
    command(sub, "status", "the daemon's actors and queues").set_defaults(func=remote(_status))
    _jobs_parser(sub, command)

    queues_text = "list, pause, resume and drain queues"
    queues = sub.add_parser("queues", help=queues_text, description=queues_text)
    queues_sub = queues.add_subparsers(dest="queues_command", required=True, metavar="ACTION")
    command(queues_sub, "ls", "jobs per queue and state").set_defaults(func=remote(_queues))
    for name, text in (
        ("pause", "stop claiming jobs"),
        ("resume", "claim jobs again"),
        ("drain", "stop claiming and wait for running jobs"),
    ):
        p = command(queues_sub, name, text)
        p.add_argument("queue", help="the queue's name")
        p.add_argument("--wait", type=finite, default=None, help="seconds to wait (drain)")
        p.set_defaults(func=remote(_queues))

    actors_text = "list, pause, resume and stop exposed actors"
    actors = sub.add_parser("actors", help=actors_text, description=actors_text)
    actors_sub = actors.add_subparsers(dest="actors_command", required=True, metavar="ACTION")
    command(actors_sub, "ls", "the exposed actors and domains").set_defaults(func=remote(_actors))
    for name, text in (
        ("pause", "finish the current message, then take no next one"),
        ("resume", "take messages again"),
        ("stop", "handle what is queued, then stop (a domain key: passivate it)"),
    ):
        p = command(actors_sub, name, text)
        p.add_argument("target", help="an exposed actor or domain (see 'fiefdom actors ls')")
        p.add_argument("--key", help="one key of a domain (default: the whole domain)")
        if name == "stop":
            p.add_argument("--wait", type=finite, default=None, help="seconds to wait at most")
        p.set_defaults(func=remote(_actors))

    call_parser = sub.add_parser(
        "call",
        parents=[common_no_json],
        help="ask an exposed actor or domain key; prints its reply as JSON",
        description="Send MESSAGE_TYPE with the fields of --json to an exposed actor or "
        "domain key (see 'fiefdom actors ls') and print its reply as JSON (null for a "
        "message that is not a request). --timeout is also the actor's deadline.",
    )
    call_parser.add_argument("target", help="an exposed actor or domain")
    call_parser.add_argument("message_type", help="a message type the target accepts")
    call_parser.add_argument("--key", help="the domain key to ask (a domain needs one)")
    call_parser.add_argument(
        "--json",
        dest="payload",
        default="{}",
        metavar="FIELDS",
        help="the message's fields as a JSON object (default: {})",
    )
    call_parser.set_defaults(func=remote(call))

    logs_parser = command(
        sub, "logs", "print the daemon's log events as they come (with -f), until Ctrl-C"
    )
    logs_parser.add_argument(
        "-f", "--follow", action="store_true", help="follow the log (the only mode)"
    )
    logs_parser.add_argument(
        "--level",
        choices=["debug", "info", "warning", "error", "critical"],
        default="info",
        help="the lowest level printed (default: info)",
    )
    logs_parser.set_defaults(func=remote(logs))

    drain_parser = command(
        sub,
        "drain",
        "stop taking jobs and let running ones finish (cancelled and given back after "
        "jobs.drain_timeout); prints progress on stderr, then a summary",
    )
    drain_parser.add_argument("--wait", type=finite, default=None, help="seconds to wait at most")
    drain_parser.set_defaults(func=remote(drain))
    stop_parser = command(
        sub,
        "stop",
        "stop the daemon: drain first (progress on stderr, then a summary), then stop "
        "and wait (--timeout) until it closes its control channel",
    )
    stop_parser.add_argument(
        "--cancel",
        action="store_true",
        help="cancel running work at once (jobs go back to their queue)",
    )
    stop_parser.set_defaults(func=remote(stop))
    command(sub, "dump", "write the flight recorder now").set_defaults(func=remote(_dump))
    _vault_parser(sub, command)
    return parser


_DESCRIPTION = (
    "Run the fiefdom daemon (serve), migrate its store, and drive a running daemon "
    "through its control channel."
)
_STATES = [str(s) for s in JobState]
_FINAL_STATES = [str(s) for s in (JobState.DISCARDED, JobState.CANCELLED, JobState.COMPLETED)]


def _jobs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: object) -> None:
    add = command  # (parent, name, text) -> parser, with the global options
    assert callable(add)
    jobs_text = "list, inspect, enqueue, retry, cancel and prune jobs"
    jobs = sub.add_parser("jobs", help=jobs_text, description=jobs_text)
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    ls = add(jobs_sub, "ls", "list jobs, newest first, with how many match in all")
    ls.add_argument("--queue", help="only jobs of this queue")
    ls.add_argument("--state", choices=_STATES, help="only jobs in this state")
    ls.add_argument("--kind", help="only jobs of this kind")
    ls.add_argument("--key", help="a domain job's key")
    ls.add_argument(
        "--since", type=moment, help="created since: a duration ago (1h, 7d) or an ISO time"
    )
    ls.add_argument(
        "--after",
        "--after-id",
        dest="after",
        type=int,
        default=0,
        metavar="ID",
        help="the page after the one ending at this id (as the last line of a page says)",
    )
    ls.add_argument("--limit", type=positive, default=100, help="at most this many (up to 10000)")
    ls.add_argument("--oldest-first", action="store_true", help="list in id order instead")
    ls.set_defaults(func=remote(jobs_ls))

    show = add(jobs_sub, "show", "a job with every attempt's error and traceback")
    show.add_argument("job_id", type=int, help="the job's id")
    show.set_defaults(func=remote(jobs_show))

    retry = add(
        jobs_sub,
        "retry",
        "run a discarded or cancelled job again (a completed one with --force); with "
        "--state instead of an id, every such job (with --kind, --queue), after a count "
        "and a confirmation",
    )
    retry.add_argument("job_id", type=int, nargs="?", help="the job's id (or --state instead)")
    retry.add_argument(
        "--state", choices=_FINAL_STATES, help="retry every job in this state instead of one"
    )
    retry.add_argument("--kind", help="with --state: only jobs of this kind")
    retry.add_argument("--queue", help="with --state: only jobs of this queue")
    retry.add_argument("--force", action="store_true", help="also rerun completed jobs")
    retry.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    retry.set_defaults(func=remote(jobs_retry))

    cancel = add(jobs_sub, "cancel", "cancel a waiting job, or stop a running one")
    cancel.add_argument("job_id", type=int, help="the job's id")
    cancel.set_defaults(func=remote(jobs_cancel))

    enqueue = add(jobs_sub, "enqueue", "enqueue a job")
    enqueue.add_argument("kind", help="a registered job kind (see 'fiefdom jobs kinds')")
    enqueue.add_argument("args", nargs="?", default="{}", help="the job's arguments as JSON")
    enqueue.add_argument("--queue", help="instead of the kind's queue")
    enqueue.add_argument("--priority", type=int, help="lower runs first")
    enqueue.add_argument("--delay", type=finite, help="seconds from now")
    enqueue.set_defaults(func=remote(jobs_enqueue))

    add(jobs_sub, "kinds", "the registered job kinds and their options").set_defaults(
        func=remote(jobs_kinds)
    )

    watch = add(jobs_sub, "watch", "print job events (state changes) as they come, until Ctrl-C")
    watch.add_argument("--kind", help="only jobs of this kind")
    watch.add_argument("--queue", help="only jobs of this queue")
    watch.set_defaults(func=remote(jobs_watch))

    prune = add(jobs_sub, "prune", "delete final jobs that finished long enough ago")
    prune.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="finished more than this long ago: 90 (seconds), 30m, 12h, 7d, 2w",
    )
    prune.add_argument(
        "--state", action="append", choices=_FINAL_STATES, help="only these (repeatable)"
    )
    prune.add_argument("--kind", help="only jobs of this kind")
    prune.add_argument("--queue", help="only jobs of this queue")
    prune.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    prune.set_defaults(func=remote(jobs_prune))


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


def _reader_gone() -> int:
    """stdout's reader has closed it (``| head``): end quietly. What is still
    buffered is dropped, so that the interpreter's exit does not fail on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments); returns its exit
    status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "older_than", None) is not None:
        args.older_than_text = args.older_than
        try:
            args.older_than = duration(args.older_than)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --older-than: {exc}")
    ZONE.local = bool(args.local)
    if args.command != "serve":
        _quiet_logging()
    debug = bool(args.debug)
    try:
        status = int(args.func(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _reader_gone()
    except CommandError as exc:
        _fail(str(exc), exc, debug, exc.status)
    except FiefdomError as exc:
        _fail(str(exc) or type(exc).__name__, exc, debug)
    except OSError as exc:
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        _fail(message, exc, debug)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
