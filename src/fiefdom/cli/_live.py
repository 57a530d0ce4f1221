"""The commands that follow the daemon as it goes, over the control channel's
topics: ``drain`` and ``stop`` (the drain's progress, then its summary), ``jobs
watch`` (job events) and ``logs -f`` (log events); and ``call``, which asks an
exposed actor or domain key.

Progress goes to stderr (a progress bar on a terminal, one line per report
otherwise), results to stdout, so that ``--json`` output stays JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import anyio
from tqdm import tqdm

from .._errors import ControlConnectionError, ControlError
from ..protocol import Client, Dropped, EventStream, JobEvent, LogEvent
from ..storage import JobState
from ._common import CommandError, emit_json, when

# The daemon's log events of a drain (see fiefdom.daemon._drain).
_BEGUN = "draining: no new jobs are claimed"
_PROGRESS = "draining: jobs still running"
_DRAINED = "drained: "


class _DrainReport:
    """Prints what the daemon's drain says: progress on ``out`` (a bar on a
    terminal), and keeps the summary (``finished``, ``given_back``,
    ``cancelled``, ``took``) once it comes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.total = 0  # the most jobs seen running: the bar's length
        self.summary: dict[str, Any] | None = None
        self._bar: tqdm[Any] | None = None

    def see(self, event: object) -> None:
        if not isinstance(event, LogEvent):
            return
        fields = event.fields
        if event.event.startswith(_BEGUN):
            running = int(fields.get("running") or 0)
            self.total = max(self.total, running)
            limit = fields.get("drain_timeout")
            after = f" (cancelled and given back after {limit:g}s)" if limit is not None else ""
            self._line(f"draining: no new jobs are claimed; {running} running{after}")
        elif event.event == _PROGRESS:
            running = int(fields.get("running") or 0)
            left = float(fields.get("seconds_left") or 0.0)
            self.total = max(self.total, running)
            self._progress(running, left)
        elif event.event.startswith(_DRAINED) and self.summary is None:
            self.summary = {
                name: fields.get(name) for name in ("finished", "given_back", "cancelled", "took")
            }
            self.end()

    def _progress(self, running: int, left: float) -> None:
        jobs = f"{running} job{'s' if running != 1 else ''} running"
        if not self.tty:
            self._line(f"draining: {jobs}, {left:g}s left before they are cancelled")
            return
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=self.total, desc="draining", unit="job", file=self.out, leave=True
            )
        bar.total = self.total
        bar.n = self.total - running
        bar.set_postfix_str(f"{jobs}, {left:.0f}s left", refresh=True)

    def _line(self, text: str) -> None:
        self.end()
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        """Close the progress bar left open on the terminal."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _summary_text(summary: dict[str, Any]) -> str:
    took = summary.get("took")
    return (
        f"drained{'' if took is None else f' in {took:g}s'}: "
        f"{summary['finished']} finished, {summary['given_back']} given back unrun, "
        f"{summary['cancelled']} cancelled and given back"
    )


async def _follow(
    client: Client,
    events: EventStream,
    request: Callable[[], Awaitable[None]],
    report: _DrainReport,
) -> None:
    """Send ``request`` and hand every event to ``report`` until its reply (and the
    events the daemon sent before it) has come."""

    async def follow() -> None:
        try:
            async for event in events:
                report.see(event)
        except ControlConnectionError:
            return  # the request fails with it too

    follower = asyncio.ensure_future(follow())
    try:
        await request()
        # The daemon logs the drain's summary before it answers; one more round trip
        # and whatever it sent before is received.
        await client.ping()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        report.end()
    for event in events.received():
        report.see(event)
    report.end()


async def drain(client: Client, args: argparse.Namespace) -> int:
    was_draining = (await client.status()).draining
    report = _DrainReport(sys.stderr)
    async with client.subscribe(["logs"]) as events:
        await _follow(client, events, lambda: client.drain(timeout=args.wait), report)
    summary = report.summary
    if args.json:
        emit_json({"drained": True, **(summary or _NO_SUMMARY)})
        return 0
    if summary is not None:
        print(
            f"{_summary_text(summary)}; no new jobs are claimed "
            "(stop the daemon with 'fiefdom stop')"
        )
    else:
        print(_drained_before(was_draining))
    return 0


_NO_SUMMARY: dict[str, Any] = {
    "finished": None,
    "given_back": None,
    "cancelled": None,
    "took": None,
}


def _drained_before(was_draining: bool) -> str:
    if was_draining:
        return (
            "drained: no new jobs are claimed and none is running (the daemon was draining "
            "already: its log has that drain's summary)"
        )
    return "drained: no new jobs are claimed and none is running"


async def stop(client: Client, args: argparse.Namespace) -> int:
    if args.cancel:
        return await _stop_cancel(client, args)
    was_draining = (await client.status()).draining
    report = _DrainReport(sys.stderr)
    async with client.subscribe(["logs"]) as events:
        try:
            # First the drain, over the channel, so that its summary can be read here;
            # then the stop, whose drain has nothing left to do.
            await _follow(client, events, client.drain, report)
        except asyncio.CancelledError:
            # Interrupted: the stop asked for is still sent.
            await client.stop_daemon("drain")
            print(
                "interrupted: the daemon was asked to stop; it finishes its drain", file=sys.stderr
            )
            raise
        await client.stop_daemon("drain")
        closed = await _until_closed(events, report, args.timeout)
    summary = report.summary
    if args.json:
        emit_json({"stopping": "drain", "closed": closed, "drained": summary})
        return 0
    print(_summary_text(summary) if summary is not None else _drained_before(was_draining))
    print(_closed_text(closed, args.timeout))
    return 0


def _closed_text(closed: bool, timeout: float) -> str:
    if closed:
        return "stopped: the daemon has closed its control channel"
    return (
        f"stop requested: the daemon has not closed its control channel within {timeout:g}s "
        "(it is still stopping)"
    )


async def _until_closed(events: EventStream, report: _DrainReport | None, timeout: float) -> bool:
    """Read ``events`` until the daemon closes the channel (True), or ``timeout``
    seconds (False)."""
    with anyio.move_on_after(timeout):
        try:
            async for event in events:
                if report is not None:
                    report.see(event)
        except ControlConnectionError:
            return True
        return True  # the stream ended: the subscription is gone with the channel
    return False


async def _stop_cancel(client: Client, args: argparse.Namespace) -> int:
    """Stop at once: running jobs are cancelled and given back. The daemon sums its
    stop up only in its log, after the channel has closed; what this command counts
    is the job events it received until then."""
    given_back = finished = 0
    async with client.subscribe(["jobs"]) as events:
        await client.stop_daemon("cancel")
        closed = False
        with anyio.move_on_after(args.timeout):
            try:
                async for event in events:
                    if not isinstance(event, JobEvent) or event.state is JobState.RUNNING:
                        continue
                    if event.state is JobState.AVAILABLE and (event.detail or "").startswith(
                        "given back"
                    ):
                        given_back += 1
                    else:
                        finished += 1
            except ControlConnectionError:
                pass
            closed = True
    if args.json:
        emit_json(
            {"stopping": "cancel", "closed": closed, "given_back": given_back, "finished": finished}
        )
        return 0
    print(
        f"stopping (cancel): {given_back} job{'s' if given_back != 1 else ''} cancelled or "
        f"unstarted, given back to their queue; {finished} finished meanwhile"
    )
    print(_closed_text(closed, args.timeout))
    return 0


def _dropped(event: Dropped) -> None:
    print(
        f"fiefdom: warning: the daemon dropped {event.count} events: this command read "
        "them slower than they came",
        file=sys.stderr,
        flush=True,
    )


def _job_line(event: JobEvent) -> str:
    line = (
        f"{when(event.at)}  job {event.job_id}  {event.kind}  queue {event.queue}  "
        f"{event.state}  attempt {event.attempt}"
    )
    if event.queued_for is not None:
        line += f"  waited {event.queued_for:.3g}s"
    if event.detail:
        line += f"  {event.detail}"
    return line


async def jobs_watch(client: Client, args: argparse.Namespace) -> int:
    async with client.subscribe(["jobs"]) as events:
        # Once subscribed: every event from now on is printed.
        print("watching job events (Ctrl-C to stop)", file=sys.stderr, flush=True)
        async for event in events:
            if isinstance(event, Dropped):
                _dropped(event)
                continue
            if not isinstance(event, JobEvent):
                continue
            if args.kind is not None and event.kind != args.kind:
                continue
            if args.queue is not None and event.queue != args.queue:
                continue
            if args.json:
                emit_json(event)
            else:
                print(_job_line(event))
            sys.stdout.flush()
    raise CommandError("the daemon closed the control channel")


def _log_line(event: LogEvent) -> str:
    fields = "".join(
        f" {name}={value if isinstance(value, str) and ' ' not in value else json.dumps(value)}"
        for name, value in event.fields.items()
    )
    return f"{when(event.at)} {event.level:<8} {event.logger}: {event.event}{fields}"


async def logs(client: Client, args: argparse.Namespace) -> int:
    if not args.follow:
        raise CommandError(
            "logs follows the daemon's log as it is written: pass -f (the daemon writes "
            "its whole log to its stderr; 'fiefdom dump' writes its recent events to a file)"
        )
    async with client.subscribe(["logs"], level=args.level) as events:
        # Once subscribed: every event from now on is printed.
        print("following the daemon's log (Ctrl-C to stop)", file=sys.stderr, flush=True)
        async for event in events:
            if isinstance(event, Dropped):
                _dropped(event)
                continue
            if not isinstance(event, LogEvent):
                continue
            if args.json:
                emit_json(event)
            else:
                print(_log_line(event))
            sys.stdout.flush()
    raise CommandError("the daemon closed the control channel")


async def call(client: Client, args: argparse.Namespace) -> int:
    try:
        fields = json.loads(args.payload)
    except ValueError as exc:
        raise CommandError(f"the message's fields are not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise CommandError("the message's fields must be a JSON object, like '{\"by\": 2}'")
    try:
        result = await client.call_by_name(
            args.target, args.message_type, fields, key=args.key, timeout=args.timeout
        )
    except ControlConnectionError:
        raise
    except ControlError as exc:
        raise CommandError(_call_error(exc)) from exc
    emit_json(result)
    return 0


def _call_error(exc: ControlError) -> str:
    """``code: message``, and what the daemon knows instead when nothing has the name."""
    known = exc.details.get("known")
    line = f"{exc.code}: {exc}"
    if isinstance(known, list):
        line += f" (known: {', '.join(str(k) for k in known) or 'none'})"
    return line
