"""What every command shares: its errors, where the daemon is, which token to
present and which CA to verify its certificate with, running a command against the
daemon (and ending it on Ctrl-C), and the output primitives (JSON, tables, cells,
times with their zone, durations)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from .._errors import ControlConnectionError, ControlError
from ..daemon import Config, load_config, read_token_file
from ..protocol import Client, connect

EXIT_ERROR = 1
# ``serve`` could not start: nothing was created; the line names the setting to change.
EXIT_STARTUP = 2
# Ended by Ctrl-C (SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
# Seconds a command has, after its Ctrl-C, to close its connection and end; past
# them it exits at once (as on a second Ctrl-C).
INTERRUPT_GRACE = 10.0


class CommandError(Exception):
    """A one-line error for the user, and the exit status that goes with it."""

    def __init__(self, message: str, *, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


# -- configuration and where the daemon is ---------------------------------------------


def config_of(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("FIEFDOM_CONFIG") or None
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    return load_config(path)


def url_of(args: argparse.Namespace, config: Config) -> str:
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
    scheme = "https" if config.control.tls else "http"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def _ca_file(args: argparse.Namespace) -> tuple[str, str] | None:
    """The CA file given (``--ca-file``, else ``FIEFDOM_CA_FILE``) and where from."""
    if args.ca_file:
        return str(args.ca_file), "--ca-file"
    if os.environ.get("FIEFDOM_CA_FILE"):
        return os.environ["FIEFDOM_CA_FILE"], "FIEFDOM_CA_FILE"
    return None


def tls_of(args: argparse.Namespace, url: str) -> ssl.SSLContext | None:
    """How to verify the daemon's certificate at ``url``: None for a plain URL, or
    for TLS without a CA file (the system's trusted CAs); else a context trusting
    the CA certificates of ``--ca-file`` (or ``FIEFDOM_CA_FILE``)."""
    given = _ca_file(args)
    if given is None or not url.startswith(("https://", "wss://")):
        return None
    path, source = given
    try:
        return ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc).lower().replace("_", " ")
        raise CommandError(
            f"{source} {path}: holds no PEM certificate ({reason}); give the CA certificate "
            "that signed the daemon's"
        ) from exc
    except OSError as exc:
        raise CommandError(f"{source} {path}: cannot read it: {exc.strerror or exc}") from exc


def unverified(
    exc: ControlConnectionError, url: str, args: argparse.Namespace
) -> CommandError | None:
    """The error to print when the daemon's certificate at ``url`` failed verification
    (saying what to do about it); None for any other failure to connect."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    # The ssl module's own error, under aiohttp's (which subclasses it, without its
    # verify_code and verify_message).
    while cause is not None and not (
        isinstance(cause, ssl.SSLCertVerificationError) and hasattr(cause, "verify_code")
    ):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
        if cause is not None and id(cause) in seen:
            cause = None
    if cause is None:
        return None
    reason = (cause.verify_message or str(cause)).rstrip(".")
    if cause.verify_code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        remedy = "connect with a --url whose host the certificate names"
    elif (given := _ca_file(args)) is not None:
        remedy = (
            f"check that {given[1]} {given[0]} holds the CA that signed the daemon's certificate"
        )
    else:
        remedy = "pass --ca-file PATH (or set FIEFDOM_CA_FILE) with the CA that signed it"
    return CommandError(f"{url}: the daemon's certificate was not verified ({reason}); {remedy}")


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64


@dataclass(frozen=True, repr=False)
class Token:
    """A control token, and where the command found it (for an error that names it)."""

    secret: str
    source: str  # e.g. "FIEFDOM_TOKEN", "--token-file PATH"
    remedy: str  # what to do when the daemon refuses it


_ANY_TOKEN = "pass --token-file PATH or set FIEFDOM_TOKEN to a token the daemon accepts"


def token_of(args: argparse.Namespace, config: Config) -> Token:
    """The token a command presents: ``--token``, ``--token-file``, ``FIEFDOM_TOKEN``,
    the configuration's tokens (the strongest role first), else the daemon's admin
    token file; with where it came from and what to do if the daemon refuses it."""
    if args.token:
        print(
            "fiefdom: warning: --token shows the token to every user of this machine "
            "(ps, /proc); set FIEFDOM_TOKEN or let the command read the token file instead",
            file=sys.stderr,
        )
        return Token(str(args.token), "--token", f"check it, or {_ANY_TOKEN}")
    if args.token_file:
        path = Path(args.token_file)
        return Token(
            read_token_file(path),
            f"--token-file {path}",
            "check that this file holds one of the daemon's tokens (its [[control.tokens]], "
            "or admin.token in its data folder)",
        )
    if os.environ.get("FIEFDOM_TOKEN"):
        return Token(
            os.environ["FIEFDOM_TOKEN"],
            "FIEFDOM_TOKEN",
            "set FIEFDOM_TOKEN to one of the daemon's tokens, or unset it to use the "
            "configuration's",
        )
    where = _config_name(args)
    rank = {"read": 0, "operate": 1, "admin": 2}
    for spec in sorted(config.control.tokens, key=lambda s: -rank[s.role]):
        entry = f"the {spec.role} token of [[control.tokens]] in {where}"
        remedy = (
            "check that the daemon at this address runs with this configuration (--config, "
            f"--url) and was restarted since its tokens changed, or {_ANY_TOKEN}"
        )
        if spec.token:
            return Token(spec.token, entry, remedy)
        if spec.token_file:
            path = Path(config.base_dir) / spec.token_file
            return Token(read_token_file(path), f"{entry} (token_file {path})", remedy)
    path = config.admin_token_path
    if not path.is_file():
        raise CommandError(
            f"no token: {path} does not exist (has the daemon started once?); "
            "pass --token-file or set FIEFDOM_TOKEN"
        )
    return Token(
        read_token_file(path),
        f"the admin token file {path}",
        f"check that the daemon at this address uses the data folder of {where} (--config "
        f"names the right configuration, --url the right daemon), or {_ANY_TOKEN}",
    )


def _config_name(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get("FIEFDOM_CONFIG") or None
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    return "the built-in defaults" if path is None else str(path)


def refused(exc: ControlError, token: Token) -> CommandError | None:
    """The error to print for a token the daemon refused (or whose role is too weak),
    naming where the token came from and what to do; None for any other error."""
    if exc.code == "unauthenticated":
        return CommandError(f"{exc}: the token came from {token.source}; {token.remedy}")
    if exc.code == "forbidden":
        needed = exc.details.get("needed")
        stronger = f"a token of role {needed}" if needed else "a token of a stronger role"
        return CommandError(
            f"{exc}: the token came from {token.source}; this command needs {stronger} "
            "(pass --token-file PATH or set FIEFDOM_TOKEN)"
        )
    return None


def remote(action: Callable[[Client, argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    """A command that runs ``action`` on a client connected to the daemon."""

    def command(args: argparse.Namespace) -> int:
        config = config_of(args)
        url = url_of(args, config)
        token = token_of(args, config)
        tls = tls_of(args, url)

        async def run() -> int:
            async with connect(url, token=token.secret, timeout=args.timeout, ssl=tls) as client:
                return await action(client, args)

        try:
            return run_interruptibly(run)
        except ControlError as exc:
            error = (
                unverified(exc, url, args)
                if isinstance(exc, ControlConnectionError)
                else refused(exc, token)
            )
            if error is None:
                raise
            raise error from exc

    return command


class _Interrupt:
    """Ctrl-C while a command runs: the first cancels the command (it closes its
    connection on its way out) and arms INTERRUPT_GRACE; the second, or the end of
    the grace, ends the process at once with EXIT_INTERRUPTED, whatever it waits on.

    Installed with ``signal.signal``, not as the event loop's signal handler: it runs
    between two bytecodes of the main thread, so that a command blocked outside the
    loop (a write to a pipe nobody reads) still ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.count = 0
        self.task: asyncio.Task[Any] | None = None
        self._alarm: Any = None  # SIGALRM's handler before the grace was armed

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(EXIT_INTERRUPTED)
        self._alarm = signal.signal(signal.SIGALRM, _exit_interrupted)
        signal.setitimer(signal.ITIMER_REAL, INTERRUPT_GRACE)
        # RuntimeError: the loop is closed, the command has ended already.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.cancel)

    def cancel(self) -> None:
        if self.task is None or self.task.done():
            return
        print(
            "fiefdom: interrupted: closing the connection (Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        self.task.cancel()

    def disarm(self) -> None:
        """The command has ended: no exit at the end of the grace."""
        if self._alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._alarm)
            self._alarm = None


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    os._exit(EXIT_INTERRUPTED)


def run_interruptibly(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` on a new event loop and return its status. Ctrl-C cancels it
    and raises ``KeyboardInterrupt`` once it has ended; a second Ctrl-C, or a command
    still running INTERRUPT_GRACE seconds after the first, exits at once.

    The handler is installed whatever SIGINT's disposition was, ignored included: a
    shell without job control (a script, CI) starts a background command with SIGINT
    ignored, and asyncio's own handling, which keeps it so, left a follower of events
    started there running after its Ctrl-C until it was killed."""
    runner = asyncio.Runner()
    interrupt = _Interrupt(runner.get_loop())

    async def guarded() -> int:
        interrupt.task = asyncio.current_task()
        if interrupt.count:
            # Interrupted before the command began (the cancel found no task).
            raise asyncio.CancelledError
        return await main()

    # Signal handlers are for the main thread only (a command run from another
    # thread, as in a test, has none).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGINT, interrupt.on_sigint)
    try:
        # The runner's close (what is left cancelled and awaited) is under the
        # handler too.
        with runner:
            try:
                return runner.run(guarded())
            except asyncio.CancelledError:
                if interrupt.count:
                    raise KeyboardInterrupt from None
                raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
            interrupt.disarm()


# -- output ----------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _Zone:
    local = False  # --local: times in this machine's zone, with its offset


ZONE = _Zone()


def when(moment: datetime | float | None) -> str:
    """A time (a datetime, or unix seconds) to the second, with its zone: RFC 3339 in
    UTC (``Z``), or with ``--local`` in this machine's zone with its offset."""
    if moment is None:
        return "-"
    if isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    if ZONE.local:
        return moment.astimezone().isoformat(timespec="seconds")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def duration(text: str) -> float:
    """Seconds from ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a plain number of
    seconds (an argparse type: garbage is an error naming it)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (like 90, 30s, 15m, 12h, 7d or 2w)"
        )
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if not math.isfinite(seconds) or seconds > 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration")
    return seconds


def moment(text: str) -> datetime:
    """A time from a duration ago (``1h``: an hour ago) or an ISO 8601 time (without a
    zone: UTC)."""
    try:
        return datetime.now(UTC) - timedelta(seconds=duration(text))
    except argparse.ArgumentTypeError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration ago (like 1h, 7d) nor an ISO 8601 time "
            "(like 2024-05-01T12:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def finite(text: str) -> float:
    """A finite number of seconds, 0 or more (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds >= 0")
    return value


def positive(text: str) -> int:
    """An integer of 1 or more (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def confirm(args: argparse.Namespace, question: str) -> None:
    """Ask ``question`` (y/N) on the terminal unless ``--yes`` was given; without a
    terminal to ask on, the command needs ``--yes``."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"{question} (not a terminal: pass --yes to confirm)")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CommandError("not confirmed: nothing was changed")
