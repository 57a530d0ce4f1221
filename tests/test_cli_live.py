"""The commands of `fiefdom` that follow a real daemon subprocess as it goes: drain and
stop print the drain's progress and its summary, `call` asks an exposed actor, `jobs
watch` prints job events and `logs -f` log events. A command that runs until it is
stopped is read a bounded number of lines, then given Ctrl-C (tests/test_cli_interrupt.py
interrupts them at more points)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import anyio
import pytest

import fiefdom as fiefdom_client
from fiefdom import JobEvent, JobState
from fiefdom.storage import open_store

sys.path.insert(0, str(Path(__file__).parent / "daemon"))

from daemon_harness import DaemonProcess, write_config

pytestmark = pytest.mark.slow

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")
SUMMARY = re.compile(
    r"drained in [\d.e-]+s: (\d+) finished, (\d+) given back unrun, (\d+) cancelled and given back"
)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("FIEFDOM_TOKEN", "FIEFDOM_CONFIG")}


def fiefdom(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [FIEFDOM, *args], capture_output=True, text=True, timeout=60, env=_environ()
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start(*args: str) -> subprocess.Popen[str]:
    """A command left running: its stdout and stderr are pipes to read line by line."""
    return subprocess.Popen(
        [FIEFDOM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environ(),
    )


def lines_until(stream: IO[str] | None, wanted: str, limit: int = 200) -> list[str]:
    """Lines of ``stream`` up to the first that contains ``wanted`` (at most ``limit``
    lines; the test's timeout guards a stream that stops short)."""
    assert stream is not None
    read: list[str] = []
    while len(read) < limit:
        line = stream.readline()
        assert line, f"the stream ended before {wanted!r}: {read}"
        read.append(line.rstrip("\n"))
        if wanted in line:
            return read
    raise AssertionError(f"no {wanted!r} in {limit} lines: {read}")


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """End a command that runs until Ctrl-C with one (SIGINT): it must exit 130 without
    a traceback (the test's timeout guards one that does not exit); what it still had
    to say."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, f"exit {proc.returncode}: {err}"
    assert "Traceback" not in err, err
    return out, err


def _daemon(folder: Path, extra: str = "") -> DaemonProcess:
    config = write_config(
        folder,
        modules=("hosted_app", "drain_gate_app"),
        extra="[jobs.retention]\nenabled = false\n" + extra,
        shutdown_timeout=600.0,
    )
    return DaemonProcess(config)


def _until(daemon: DaemonProcess, kind: str, args: dict[str, object], state: JobState) -> int:
    """Enqueue a job through the Python client and wait for its event of ``state``."""

    async def run() -> int:
        async with (
            fiefdom_client.connect(daemon.url, token=daemon.token) as client,
            client.subscribe(["jobs"]) as events,
        ):
            job_id = (await client.enqueue(kind, args)).id
            assert job_id is not None
            if (await client.get_job(job_id)).state == state:
                return job_id
            with anyio.fail_after(30):
                async for event in events:
                    if isinstance(event, JobEvent) and (event.job_id, event.state) == (
                        job_id,
                        state,
                    ):
                        return job_id
        raise AssertionError("the subscription ended")

    return asyncio.run(run())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app, found by the commands through its configuration."""
    with _daemon(tmp_path_factory.mktemp("live")) as proc:
        yield proc


# -- drain and stop ----------------------------------------------------------------------


def test_drain_prints_progress_then_the_summary(tmp_path: Path) -> None:
    """While jobs run, drain prints on stderr what the drain does (no new jobs, how many
    run, the seconds left); once they finish, the summary on stdout: how many finished,
    were given back unrun or cancelled. A second drain has nothing left to sum up and
    says so."""
    with _daemon(tmp_path) as daemon:
        config = ("--config", str(daemon.config))
        _until(daemon, "gate", {"name": "a"}, JobState.RUNNING)
        proc = start("drain", *config)
        progress = lines_until(proc.stderr, "1 job running")
        assert progress[0] == (
            "draining: no new jobs are claimed; 1 running (cancelled and given back after 600s)"
        )
        assert re.fullmatch(
            r"draining: 1 job running, [\d.]+s left before they are cancelled", progress[-1]
        ), progress
        (daemon.data / "gates" / "a").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        match = SUMMARY.match(out)
        assert match, out
        assert match.groups() == ("1", "0", "0")
        assert out.endswith("; no new jobs are claimed (stop the daemon with 'fiefdom stop')\n")
        again = fiefdom("drain", *config).stdout
        assert again == (
            "drained: no new jobs are claimed and none is running (the daemon was draining "
            "already: its log has that drain's summary)\n"
        )


def test_drain_json_counts_a_job_cut_short_and_stop_json(tmp_path: Path) -> None:
    """drain --json prints the summary as JSON: a job still running at the drain's
    deadline counts as cancelled; stop --json then says the daemon closed its channel
    (its drain had nothing left) and the daemon exits 0."""
    with _daemon(tmp_path, "[jobs]\ndrain_timeout = 0.5\n") as daemon:
        config = ("--config", str(daemon.config))
        _until(daemon, "nap", {"seconds": 300.0}, JobState.RUNNING)
        summary = json.loads(fiefdom("drain", "--json", *config).stdout)
        assert summary.pop("took") >= 0
        assert summary == {"drained": True, "finished": 0, "given_back": 0, "cancelled": 1}
        stopped = json.loads(fiefdom("stop", "--json", *config).stdout)
        assert stopped == {"stopping": "drain", "closed": True, "drained": None}
        assert daemon.wait(60) == 0


def test_stop_drains_with_progress_then_prints_the_summary(tmp_path: Path) -> None:
    """stop drains first, printing its progress, then the summary of what the drain
    did, and says when the daemon has closed its control channel; the daemon exits 0."""
    with _daemon(tmp_path) as daemon:
        _until(daemon, "gate", {"name": "b"}, JobState.RUNNING)
        proc = start("stop", "--config", str(daemon.config))
        lines_until(proc.stderr, "1 job running")
        (daemon.data / "gates" / "b").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary, closed = out.splitlines()
        match = SUMMARY.fullmatch(summary)
        assert match, out
        assert match.groups() == ("1", "0", "0")
        assert closed == "stopped: the daemon has closed its control channel"
        assert daemon.wait(60) == 0


def test_stop_cancel_counts_the_jobs_given_back(tmp_path: Path) -> None:
    """stop --cancel cancels the running job at once and says it was given back to its
    queue (as JSON with --json); the daemon exits 0 and the job waits, attempt unused."""
    with _daemon(tmp_path) as daemon:
        nap = _until(daemon, "nap", {"seconds": 300.0}, JobState.RUNNING)
        stopped = json.loads(
            fiefdom("stop", "--cancel", "--json", "--config", str(daemon.config)).stdout
        )
        assert stopped == {"stopping": "cancel", "closed": True, "given_back": 1, "finished": 0}
        assert daemon.wait(60) == 0

        async def read() -> tuple[JobState, int]:
            async with open_store(f"sqlite:///{daemon.data / 'fiefdom.db'}") as store:
                job = await store.get_job(nap)
                assert job is not None
                return job.state, job.attempt

        assert asyncio.run(read()) == (JobState.AVAILABLE, 0)


# -- call ----------------------------------------------------------------------------------


def test_call_prints_the_reply_as_json(daemon: DaemonProcess) -> None:
    """call sends a message type with the fields of --json to an exposed actor or a
    domain key and prints the reply as JSON (null for a message that is no request)."""
    config = ("--config", str(daemon.config))
    assert fiefdom("call", "counter", "Increment", "--json", '{"by": 2}', *config).stdout == (
        "null\n"
    )
    count = json.loads(fiefdom("call", "counter", "GetCount", *config).stdout)
    assert count >= 2
    echoed = fiefdom("call", "echo", "Echo", "--json", '{"payload": {"a": [1, "x"]}}', *config)
    assert json.loads(echoed.stdout) == {"a": [1, "x"]}
    fiefdom("call", "accounts", "Deposit", "--key", "alice", "--json", '{"amount": 5}', *config)
    balance = fiefdom("call", "accounts", "Balance", "--key", "alice", *config).stdout
    assert json.loads(balance) == 5


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ("nope", "Increment"),
            "not_found: no exposed actor or domain named 'nope' "
            "(known: accounts, counter, echo, scratch)",
        ),
        (
            ("counter", "Nope"),
            "not_found: 'counter' accepts no message type 'Nope' "
            "(known: Crash, GetCount, Increment)",
        ),
        (
            ("accounts", "Balance"),
            "invalid_message: 'accounts' is a domain: the call needs a 'key'",
        ),
        (
            ("counter", "Increment", "--json", '{"by": "two"}'),
            "invalid_message: invalid Increment message: Expected `int`, got `str` - at `$.by`",
        ),
        (
            ("accounts", "Crash", "--key", "bob"),
            "actor_error: accounts failed on Crash: RuntimeError: asked to crash",
        ),
        (("counter", "Increment", "--json", "{by: 2}"), "the message's fields are not JSON"),
        (("counter", "Increment", "--json", "[2]"), "the message's fields must be a JSON object"),
    ],
)
def test_call_errors_are_one_line_naming_the_error(
    daemon: DaemonProcess, args: tuple[str, ...], error: str
) -> None:
    """A refused call is one line on stderr, with the error's name (not_found,
    invalid_message, actor_error) and what the daemon knows instead, and exit 1."""
    result = fiefdom("call", *args, "--config", str(daemon.config), check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"fiefdom: error: {error}"), result.stderr


# -- jobs watch and logs -f ----------------------------------------------------------------


def test_jobs_watch_prints_the_events_of_the_chosen_jobs(daemon: DaemonProcess) -> None:
    """jobs watch prints each job event as it comes (time, id, kind, queue, state,
    attempt), only of the --kind and --queue asked for; --json prints them as JSON."""
    config = ("--config", str(daemon.config))
    proc = start("jobs", "watch", "--kind", "nap", "--queue", "default", *config)
    as_json = start("jobs", "watch", "--json", "--kind", "nap", *config)
    try:
        # Each says when it is subscribed: every event from then on is printed.
        lines_until(proc.stderr, "watching job events")
        lines_until(as_json.stderr, "watching job events")
        # A job of another kind runs to its end before the nap is enqueued: the first
        # line printed is the nap's.
        _until(daemon, "fail", {"reason": "not watched"}, JobState.DISCARDED)
        nap = _until(daemon, "nap", {"seconds": 0}, JobState.COMPLETED)
        printed = lines_until(proc.stdout, "completed")
        assert all(f"job {nap}  nap  queue default  " in line for line in printed), printed
        assert re.fullmatch(
            rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ  job {nap}  nap  queue default  running  "
            r"attempt 1  waited [\d.e-]+s",
            printed[0],
        ), printed
        assert printed[-1].endswith("  completed  attempt 1")
        events = [json.loads(line) for line in lines_until(as_json.stdout, '"completed"')]
        assert [(e["job_id"], e["kind"]) for e in events] == [(nap, "nap")] * len(events)
        assert events[-1]["state"] == "completed"
    finally:
        finish(proc)
        finish(as_json)


def test_logs_follow_prints_log_events(daemon: DaemonProcess) -> None:
    """logs -f prints the daemon's log events as they come (time, level, logger, event,
    fields), as JSON with --json; logs without -f says to pass it."""
    config = ("--config", str(daemon.config))
    proc = start("logs", "-f", *config)
    as_json = start("logs", "-f", "--json", *config)
    try:
        lines_until(proc.stderr, "following the daemon's log")
        lines_until(as_json.stderr, "following the daemon's log")
        wrote = fiefdom("dump", *config).stdout
        match = re.fullmatch(r"wrote (\d+) events to (.+)\n", wrote)
        assert match, wrote
        line = lines_until(proc.stdout, "flight recorder written")[-1]
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ info     fiefdom\.daemon: flight recorder "
            rf"written path={re.escape(match[2])} events={match[1]}",
            line,
        ), line
        event = json.loads(lines_until(as_json.stdout, "flight recorder written")[-1])
        assert (event["topic"], event["level"], event["event"]) == (
            "logs",
            "info",
            "flight recorder written",
        )
        assert event["fields"] == {"path": match[2], "events": int(match[1])}
    finally:
        finish(proc)
        finish(as_json)
    refused = fiefdom("logs", *config, check=False)
    assert refused.returncode == 1
    assert "pass -f" in refused.stderr
