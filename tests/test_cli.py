"""The `fiefdom` command line against a real daemon subprocess: tables by default,
JSON with --json, the address and token found from the configuration and the data
folder, and errors as one line with a non-zero exit status."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import fiefdom as fiefdom_client
from fiefdom import JobEvent, JobState
from fiefdom.storage import SCHEMA_VERSION, open_store

sys.path.insert(0, str(Path(__file__).parent / "daemon"))

from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")


def fiefdom(
    *args: str, check: bool = True, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "FIEFDOM_TOKEN"} | (env or {})
    result = subprocess.run(
        [FIEFDOM, *args], capture_output=True, text=True, timeout=60, env=environ, cwd=cwd
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app, found by the CLI through its configuration."""
    with DaemonProcess(write_config(tmp_path_factory.mktemp("cli"))) as proc:
        yield proc


def _when(moment: str | float | None) -> str:
    """How the command line prints a time: an RFC 3339 string or unix seconds, in UTC
    with its zone (``Z``)."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows(table: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell (the header's too)."""
    return {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.strip()}


def _until(daemon: DaemonProcess, kind: str, args: dict[str, object], state: JobState) -> int:
    """Enqueue a job through the Python client and wait for its event of ``state``."""

    async def run() -> int:
        async with (
            fiefdom_client.connect(daemon.url, token=daemon.token) as client,
            client.subscribe(["jobs"]) as events,
        ):
            job_id = (await client.enqueue(kind, args)).id
            with anyio.fail_after(30):
                async for event in events:
                    if isinstance(event, JobEvent) and (event.job_id, event.state) == (
                        job_id,
                        state,
                    ):
                        break
        assert job_id is not None
        return job_id

    return asyncio.run(run())


def _status_held_still(config: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """The JSON status and the printed one, taken while the queues' counts held still:
    the jobs of the daemon's earlier tests may still be finishing, and the two are
    taken one after the other. The printed one is taken between two JSON ones that
    agree."""
    deadline = time.monotonic() + 30
    while True:
        before = json.loads(fiefdom("status", "--json", *config).stdout)
        lines = fiefdom("status", *config).stdout.splitlines()
        after = json.loads(fiefdom("status", "--json", *config).stdout)
        if before["queues"] == after["queues"]:
            return before, lines
        assert time.monotonic() < deadline, "the queues' counts did not hold still for 30 s"


def test_status_prints_the_daemon_its_tree_targets_and_queues(daemon: DaemonProcess) -> None:
    """status prints a line on the daemon, the tree (one row per actor, domain and
    service, with state, mailbox, restarts and messages handled), the exposed targets,
    the queues, the cluster's nodes (partitions, epochs, this node marked) and its
    node's last events, each as the JSON of --json says."""
    config = ("--config", str(daemon.config))
    data, lines = _status_held_still(config)
    assert data["name"] == "test-daemon"
    assert data["ready"] is True
    assert re.fullmatch(
        rf"test-daemon {re.escape(data['version'])}  pid {data['pid']}  up \d+s  ready", lines[0]
    ), lines[0]
    # The hosted app's engine serves a domain: the daemon is a node of the store's
    # cluster, alone, holding every partition.
    assert data["cluster"]["partitions"] == data["cluster"]["total"] == 256
    assert data["cluster"]["nodes"] == 1
    assert re.fullmatch(
        rf"loop {data['loop']}  connections \d+  cluster: 256/256 partitions, 1 node", lines[1]
    ), lines[1]
    assert lines[2] == ""
    assert lines[3].split() == ["PATH", "KIND", "STATE", "MAILBOX", "RESTARTS", "HANDLED"]
    tree = _rows("\n".join(lines[3:]).split("\n\n")[0])
    assert tree["test-daemon"] == ["supervisor", "-", "-", "0", "-"]
    for service in ("store", "control", "jobs"):
        assert tree[f"test-daemon/{service}"] == ["service", "running", "-", "0", "-"]
    assert tree["test-daemon/echo"] == ["actor", "running", "0/1000", "0", "0"]
    assert tree["test-daemon/accounts"][:3] == ["domain", "0", "live"]
    targets, queues, nodes, events = "\n".join(lines).split("\n\n")[2:6]
    assert _rows(targets) == {
        "TARGET": ["KIND", "PAUSED", "MESSAGES"],
        "counter": ["actor", "no", "Crash,", "GetCount,", "Increment"],
        "accounts": ["domain", "no", "Balance,", "Crash,", "Deposit"],
        "echo": ["actor", "no", "Echo"],
        "scratch": ["actor", "no", "GetCount,", "Increment"],
    }
    printed = _rows(queues)
    assert printed["QUEUE"][0] == "PAUSED"
    states = printed["QUEUE"][1:]
    for queue in data["queues"]:
        paused, *counts = printed[queue["name"]]
        assert paused == ("yes" if queue["paused"] else "no")
        assert counts == [str(queue["counts"].get(state.lower(), 0)) for state in states]
    cluster = data["cluster"]
    epoch = cluster["min_epoch"]
    assert cluster["max_epoch"] == epoch
    assert [(m["node"], m["partitions"]) for m in cluster["members"]] == [(cluster["node"], 256)]
    assert _rows(nodes) == {
        "NODE": ["PARTITIONS", "EPOCHS", "LAPSED", "STATE"],
        cluster["node"]: ["256", str(epoch), "0", "this", "node"],
    }
    assert [e["kind"] for e in cluster["events"][:2]] == ["joined", "claimed"]
    assert cluster["events"][1]["partitions"] == 256
    assert cluster["counters"]["claimed"] == 256
    assert cluster["counters"]["took_over"] == 0
    printed_events = events.splitlines()
    assert printed_events[0].split() == ["TIME", "EVENT", "PARTITIONS", "NODES"]
    assert [line.split() for line in printed_events[1:]] == [
        [*_when(e["at"]).split(), e["kind"], str(e["partitions"]), ",".join(e["nodes"]) or "-"]
        for e in cluster["events"][-5:]
    ]


def test_jobs_enqueue_ls_show_and_cancel_print_the_job(daemon: DaemonProcess) -> None:
    """jobs enqueue prints the new id; jobs ls prints one row per job (id, kind, queue,
    state, attempt, key, run_at with its zone) and how many match in all; jobs cancel
    says what it did, and a second cancel that there was nothing left to cancel;
    retrying a job that is not final is refused in one line."""
    config = ("--config", str(daemon.config))
    enqueued = fiefdom("jobs", "enqueue", "nap", '{"seconds": 0}', "--delay", "3600", *config)
    match = re.fullmatch(r"enqueued job (\d+) \(nap\)\n", enqueued.stdout)
    assert match, enqueued.stdout
    job_id = int(match[1])
    job = json.loads(fiefdom("jobs", "show", str(job_id), "--json", *config).stdout)
    assert (job["id"], job["state"], job["attempt"], job["max_attempts"]) == (
        job_id,
        "scheduled",
        0,
        3,
    )
    table = fiefdom("jobs", "ls", "--kind", "nap", "--state", "scheduled", *config).stdout
    rows = _rows(table)
    assert rows["ID"] == ["KIND", "QUEUE", "STATE", "ATTEMPT", "KEY", "RUN_AT"]
    assert rows[str(job_id)] == ["nap", "default", "scheduled", "0/3", "-", _when(job["run_at"])]
    listed = json.loads(fiefdom("jobs", "ls", "--kind", "nap", "--json", *config).stdout)
    assert job in listed["jobs"]
    assert listed["total"] == len(listed["jobs"])
    assert table.splitlines()[-1].startswith("showing ")
    refused = fiefdom("jobs", "retry", str(job_id), *config, check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"fiefdom: error: job {job_id} is scheduled: only discarded, cancelled or "
        "completed jobs can be retried\n"
    )
    cancelled = fiefdom("jobs", "cancel", str(job_id), *config).stdout
    assert cancelled == f"job {job_id} (nap) was scheduled: cancelled\n"
    again = fiefdom("jobs", "cancel", str(job_id), *config).stdout
    assert re.fullmatch(
        rf"job {job_id} \(nap\) had already been cancelled at \S+Z: nothing to cancel\n", again
    ), again
    shown = json.loads(fiefdom("jobs", "cancel", str(job_id), "--json", *config).stdout)
    assert (shown["previous"], shown["job"]["state"]) == ("cancelled", "cancelled")


def test_jobs_ls_lists_newest_first_with_the_total_and_pages_by_keyset(
    daemon: DaemonProcess,
) -> None:
    """jobs ls lists the newest jobs first and says how many of how many it shows;
    --after with the id its last line names gives the next page, and the pages
    together are every matching job once; --key, --since and --oldest-first filter
    and order as they say, and the options work before the command too."""
    config = ("--config", str(daemon.config))
    ids = []
    for _ in range(5):
        out = fiefdom("jobs", "enqueue", "nap", '{"seconds": 0}', "--delay", "3600", *config)
        ids.append(int(out.stdout.split()[2]))
    queue = ("--kind", "nap", "--state", "scheduled")
    total = json.loads(fiefdom("--json", *config, "jobs", "ls", *queue).stdout)["total"]
    printed = fiefdom("jobs", "ls", *queue, "--limit", "2", *config).stdout.splitlines()
    assert [int(line.split()[0]) for line in printed[1:3]] == sorted(ids, reverse=True)[:2]
    assert printed[-1] == (
        f"showing 2 of {total:,} (newest first); next page: --after {sorted(ids)[-2]}"
    )
    seen: list[int] = []
    after = 0
    while True:
        page = json.loads(
            fiefdom(
                "jobs", "ls", *queue, "--limit", "2", "--after", str(after), "--json", *config
            ).stdout
        )
        seen += [j["id"] for j in page["jobs"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == total
    assert set(ids) <= set(seen)
    oldest = json.loads(fiefdom("jobs", "ls", *queue, "--oldest-first", "--json", *config).stdout)
    assert [j["id"] for j in oldest["jobs"]] == sorted(seen)
    future = json.loads(fiefdom("jobs", "ls", "--since", "2999-01-01", "--json", *config).stdout)
    assert (future["jobs"], future["total"]) == ([], 0)
    recent = json.loads(fiefdom("jobs", "ls", "--since", "1h", *queue, "--json", *config).stdout)
    assert recent["total"] == total
    by_key = json.loads(fiefdom("jobs", "ls", "--key", "nobody", "--json", *config).stdout)
    assert by_key["total"] == 0
    for job_id in ids:
        fiefdom("jobs", "cancel", str(job_id), *config)


def test_jobs_show_prints_every_field_and_the_errors(daemon: DaemonProcess) -> None:
    """jobs show prints each field of the job under its JobInfo name, times in UTC
    with their zone, the arguments as stored and each attempt's error followed by its
    traceback, indented (what --json gives as objects)."""
    config = ("--config", str(daemon.config))
    job_id = _until(daemon, "fail", {"reason": "boom"}, JobState.DISCARDED)
    job = json.loads(fiefdom("jobs", "show", str(job_id), "--json", *config).stdout)
    (error,) = job["errors"]
    assert (error["attempt"], error["type"], error["message"]) == (
        1,
        "builtins.RuntimeError",
        "boom",
    )
    assert error["traceback"].startswith("Traceback (most recent call last):")
    traceback_lines = ["                   " + line for line in error["traceback"].splitlines()]
    assert fiefdom("jobs", "show", str(job_id), *config).stdout.splitlines() == [
        f"id               {job_id}",
        "kind             fail",
        "queue            default",
        "state            discarded",
        "priority         0",
        "key              -",
        "attempt          1",
        "max_attempts     1",
        "snoozes          0",
        "worker           -",
        "cancel_requested no",
        f"created_at       {_when(job['created_at'])}",
        f"run_at           {_when(job['run_at'])}",
        f"attempted_at     {_when(job['attempted_at'])}",
        f"finished_at      {_when(job['finished_at'])}",
        'args             {"reason":"boom"}',
        f"errors           attempt 1 at {_when(error['at'])}: builtins.RuntimeError: boom",
        *(line.rstrip() for line in traceback_lines),
    ]
    missing = fiefdom("jobs", "show", "999999", *config, check=False)
    assert (missing.returncode, missing.stderr) == (1, "fiefdom: error: no job 999999\n")
    # The failure reached the daemon's log at warning level, naming the job.
    assert any(
        "job failed its last attempt: discarded" in line and f"job_id={job_id}" in line
        for line in daemon.log().splitlines()
    ), daemon.log()


def test_jobs_show_prints_the_snoozes_of_a_job_discarded_for_them(tmp_path: Path) -> None:
    """A daemon with ``[jobs] max_snoozes = 3`` discards a job whose handler always
    snoozes at its fourth snooze: jobs show prints its 3 snoozes on its one attempt
    and the error naming the setting, --json carries them, /metrics counts 3
    ``snoozed`` outcomes and one ``discarded``, and the log has the warning."""
    extra = "[jobs]\nmax_snoozes = 3\n"
    with DaemonProcess(write_config(tmp_path, modules=("snoozing_app",), extra=extra)) as daemon:
        config = ("--config", str(daemon.config))
        job_id = _until(daemon, "snoozer", {}, JobState.DISCARDED)
        job = json.loads(fiefdom("jobs", "show", str(job_id), "--json", *config).stdout)
        assert (job["state"], job["attempt"], job["snoozes"]) == ("discarded", 1, 3)
        (error,) = job["errors"]
        assert error["type"] == "fiefdom.TooManySnoozes"
        assert error["message"].startswith("snoozed 3 times and max_snoozes is 3: discarded")
        printed = fiefdom("jobs", "show", str(job_id), *config).stdout.splitlines()
        assert printed[6:9] == [
            "attempt          1",
            "max_attempts     1",
            "snoozes          3",
        ]
        assert printed[-1] == (
            f"errors           attempt 1 at {_when(error['at'])}: "
            f"fiefdom.TooManySnoozes: {error['message']}"
        )
        status, body = daemon.http("/metrics")
        assert status == 200, body
        outcomes = {
            line.split("outcome=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines()
            if line.startswith("fiefdom_job_outcomes_total{") and 'kind="snoozer"' in line
        }
        assert outcomes == {"snoozed": 3.0, "discarded": 1.0}
        assert any(
            "job snoozed too many times: discarded" in line and f"job_id={job_id}" in line
            for line in daemon.log().splitlines()
        ), daemon.log()


def test_queues_pause_and_resume_print_and_show_it(daemon: DaemonProcess) -> None:
    """queues pause/resume print what they did, and queues ls shows the queue paused,
    then not; --json prints the same."""
    config = ("--config", str(daemon.config))
    assert fiefdom("queues", "pause", "default", *config).stdout == "queue default paused\n"
    rows = _rows(fiefdom("queues", "ls", *config).stdout)
    assert rows["QUEUE"][0] == "PAUSED"
    assert rows["default"][0] == "yes"
    paused = json.loads(fiefdom("queues", "ls", "--json", *config).stdout)
    assert {q["name"]: q["paused"] for q in paused}["default"] is True
    assert fiefdom("queues", "resume", "default", *config).stdout == "queue default resumed\n"
    assert _rows(fiefdom("queues", "ls", *config).stdout)["default"][0] == "no"
    resumed = json.loads(fiefdom("queues", "resume", "default", "--json", *config).stdout)
    assert resumed == {"queue": "default", "done": "resumed"}


def test_dump_writes_the_flight_recorder(daemon: DaemonProcess) -> None:
    """dump writes the flight recorder and prints where, and how many events."""
    out = json.loads(fiefdom("dump", "--json", "--config", str(daemon.config)).stdout)
    assert Path(out["path"]).is_file()
    printed = fiefdom("dump", "--config", str(daemon.config)).stdout
    match = re.fullmatch(r"wrote (\d+) events to (.+)\n", printed)
    assert match, printed
    assert len(Path(match[2]).read_text(encoding="utf-8").splitlines()) == int(match[1])


def test_wrong_token_is_one_line_and_exit_1(daemon: DaemonProcess) -> None:
    """A refused token is reported in one line with exit status 1."""
    result = fiefdom(
        "status",
        "--config",
        str(daemon.config),
        env={"FIEFDOM_TOKEN": "wrong-token-0123"},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "token" in result.stderr


TOKEN_WARNING = (
    "fiefdom: warning: --token shows the token to every user of this machine (ps, /proc); "
    "set FIEFDOM_TOKEN or let the command read the token file instead\n"
)


def test_the_token_is_taken_from_fiefdom_token(daemon: DaemonProcess, tmp_path: Path) -> None:
    """FIEFDOM_TOKEN is the token a command presents (no token file to fall back on:
    the command runs where there is no configuration), and nothing is warned."""
    url = ("--url", daemon.url)
    without = fiefdom("status", *url, cwd=tmp_path, check=False)
    assert without.returncode == 1
    assert "pass --token-file or set FIEFDOM_TOKEN" in without.stderr
    result = fiefdom("status", "--json", *url, cwd=tmp_path, env={"FIEFDOM_TOKEN": daemon.token})
    assert json.loads(result.stdout)["name"] == "test-daemon"
    assert result.stderr == ""


def test_token_option_works_but_warns_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    """--token still works, and says on stderr, in one line, that ps shows it and
    what to use instead; the output itself is unchanged."""
    result = fiefdom("status", "--json", "--url", daemon.url, "--token", daemon.token, cwd=tmp_path)
    assert json.loads(result.stdout)["name"] == "test-daemon"
    assert result.stderr == TOKEN_WARNING


def test_unreachable_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """No daemon at the address: one line naming it, exit status 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = fiefdom("status", "--url", url, env={"FIEFDOM_TOKEN": "x" * 20}, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in result.stderr


def test_no_token_anywhere_is_one_line(tmp_path: Path) -> None:
    """Without a token in the options, environment or data folder: a clear line."""
    config = write_config(tmp_path)
    result = fiefdom("status", "--config", str(config), check=False)
    assert result.returncode == 1
    assert "admin.token" in result.stderr


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refused command, without its prefix."""
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("fiefdom: error: ")
    return result.stderr.removeprefix("fiefdom: error: ").rstrip("\n")


def test_a_refused_token_names_where_it_came_from(daemon: DaemonProcess, tmp_path: Path) -> None:
    """When the daemon refuses the token, the one line names where the command found it
    (FIEFDOM_TOKEN, --token-file PATH, a [[control.tokens]] entry of the configuration,
    the admin token file) and what to do."""
    refused = f"{daemon.ws_url}: the token was refused: the token came from"
    url = ("--url", daemon.url)
    wrong = {"FIEFDOM_TOKEN": "wrong-token-0123456789"}
    assert _refusal(fiefdom("status", *url, env=wrong, cwd=tmp_path, check=False)) == (
        f"{refused} FIEFDOM_TOKEN; set FIEFDOM_TOKEN to one of the daemon's tokens, or unset "
        "it to use the configuration's"
    )
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token-0123456789\n")
    by_file = fiefdom("status", *url, "--token-file", str(token_file), cwd=tmp_path, check=False)
    assert _refusal(by_file) == (
        f"{refused} --token-file {token_file}; check that this file holds one of the "
        "daemon's tokens (its [[control.tokens]], or admin.token in its data folder)"
    )
    configured = write_config(
        tmp_path / "tokens",
        control='[[control.tokens]]\nrole = "operate"\ntoken = "wrong-token-0123456789"\n',
    )
    by_config = fiefdom("status", *url, "--config", str(configured), check=False)
    assert _refusal(by_config).startswith(
        f"{refused} the operate token of [[control.tokens]] in {configured}; check that the "
        "daemon at this address runs with this configuration (--config, --url)"
    )
    other = write_config(tmp_path / "other")
    (other.parent / "data").mkdir()
    admin = other.parent / "data" / "admin.token"
    admin.write_text("another-daemons-token-0123456789\n")
    by_admin_file = fiefdom("status", *url, "--config", str(other), check=False)
    assert _refusal(by_admin_file).startswith(
        f"{refused} the admin token file {admin}; check that the daemon at this address uses "
        f"the data folder of {other}"
    )


def test_a_weak_token_names_the_role_needed(tmp_path: Path) -> None:
    """A token whose role is too weak for the command: the line names the role needed,
    where the token came from and how to give another."""
    config = write_config(tmp_path, control=TOKENS_TOML)
    with DaemonProcess(config, token=TOKENS["admin"]) as daemon:
        result = fiefdom(
            "drain", "--url", daemon.url, env={"FIEFDOM_TOKEN": TOKENS["read"]}, check=False
        )
        assert _refusal(result) == (
            "'drain' needs role 'admin', the token has 'read': the token came from "
            "FIEFDOM_TOKEN; this command needs a token of role admin (pass --token-file "
            "PATH or set FIEFDOM_TOKEN)"
        )
        assert json.loads(fiefdom("status", "--json", "--config", str(config)).stdout)["ready"]


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    """migrate applies the migrations to a fresh store and prints the version."""
    config = write_config(tmp_path)
    out = json.loads(fiefdom("migrate", "--json", "--config", str(config)).stdout)
    assert out["schema_version"] >= 1
    assert "schema at version" in fiefdom("migrate", "--config", str(config)).stdout


def test_migrate_store_migrates_that_store_and_makes_no_data_folder(tmp_path: Path) -> None:
    """migrate --store URL migrates the store named, without a configuration, and
    makes no data folder; a SQLite file in a missing folder is one line naming it;
    migrate without a configuration or --store migrates the default store, SQLite in
    ./data (the one folder it makes)."""
    environ = {"FIEFDOM_CONFIG": ""}
    database = tmp_path / "stores" / "jobs.db"
    database.parent.mkdir()
    missing = fiefdom(
        "migrate", "--store", f"sqlite:///{tmp_path}/nowhere/jobs.db", cwd=tmp_path, check=False
    )
    assert _refusal(missing) == (
        f"{tmp_path}/nowhere does not exist: create the SQLite database's folder first"
    )
    url = f"sqlite:///{database}"
    out = fiefdom("migrate", "--store", url, "--json", cwd=tmp_path, env=environ).stdout
    assert json.loads(out)["schema_version"] == SCHEMA_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stores"]
    assert database.is_file()
    fiefdom("migrate", cwd=tmp_path, env=environ)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "stores"]
    assert (tmp_path / "data" / "fiefdom.db").is_file()


@pytest.mark.postgres
def test_migrate_of_a_configured_postgres_store_makes_no_data_folder(
    tmp_path: Path, postgres_server: str
) -> None:
    """migrate with a configuration whose store is PostgreSQL migrates it and makes no
    data folder beside the configuration."""
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "{postgres_server}"\n', encoding="utf-8")
    out = fiefdom("migrate", "--json", "--config", str(config)).stdout
    assert json.loads(out)["schema_version"] == SCHEMA_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


async def test_the_unmigrated_database_hint_is_a_command_that_works(store_url: str) -> None:
    """The error of a store opened on an unmigrated database names a command; run as
    written, it migrates that database, which then opens."""
    with pytest.raises(fiefdom_client.SchemaMismatch) as refused:
        await open_store(store_url).open()
    hint = re.search(r"run '(fiefdom migrate [^']+)'", str(refused.value))
    assert hint, str(refused.value)
    command = shlex.split(hint[1])
    assert command[:3] == ["fiefdom", "migrate", "--store"]
    result = await anyio.run_process([FIEFDOM, *command[1:]], check=False)
    assert result.returncode == 0, result.stderr
    async with open_store(store_url) as store:
        assert await store.schema_version() == SCHEMA_VERSION


def test_drain_then_stop(tmp_path: Path) -> None:
    """drain sums up its drain (nothing was running) and the daemon reports not ready
    and keeps serving; stop says the drain was done and that the daemon closed its
    control channel, and the daemon ends with exit 0."""
    with DaemonProcess(write_config(tmp_path)) as daemon:
        config = ("--config", str(daemon.config))
        drained = fiefdom("drain", "--wait", "30", *config)
        assert re.fullmatch(
            r"drained in [\d.e-]+s: 0 finished, 0 given back unrun, 0 cancelled and given "
            r"back; no new jobs are claimed \(stop the daemon with 'fiefdom stop'\)\n",
            drained.stdout,
        ), drained.stdout
        assert drained.stderr.startswith("draining: no new jobs are claimed; 0 running")
        status = json.loads(fiefdom("status", "--json", *config).stdout)
        assert status["draining"] is True
        assert status["ready"] is False
        assert daemon.http("/readyz")[0] == 503
        assert fiefdom("stop", *config).stdout.splitlines() == [
            "drained: no new jobs are claimed and none is running (the daemon was draining "
            "already: its log has that drain's summary)",
            "stopped: the daemon has closed its control channel",
        ]
        assert daemon.wait(60) == 0


def test_actors_pause_resume_and_stop(daemon: DaemonProcess) -> None:
    """actors pause/resume/stop print what they did to an exposed actor or domain key,
    and ls and status show it paused, then running again."""
    config = ("--config", str(daemon.config))
    assert fiefdom("actors", "pause", "counter", *config).stdout == "counter paused\n"
    targets = json.loads(fiefdom("actors", "ls", "--json", *config).stdout)
    assert {t["name"]: t["paused"] for t in targets}["counter"] is True
    table = fiefdom("actors", "ls", *config).stdout
    assert table.splitlines()[0].split() == ["TARGET", "KIND", "PAUSED", "MESSAGES"]
    status = fiefdom("status", *config).stdout
    assert "running (paused)" in next(line for line in status.splitlines() if "/counter" in line)
    assert fiefdom("actors", "resume", "counter", *config).stdout == "counter resumed\n"
    assert _rows(fiefdom("status", *config).stdout)["test-daemon/counter"][:2] == [
        "actor",
        "running",
    ]
    assert _rows(fiefdom("actors", "ls", *config).stdout)["counter"][:2] == ["actor", "no"]
    resumed = json.loads(fiefdom("actors", "resume", "counter", "--json", *config).stdout)
    assert resumed == {"target": "counter", "key": None, "done": "resumed"}
    assert (
        fiefdom("actors", "pause", "accounts", "--key", "cli", *config).stdout
        == "accounts key cli paused\n"
    )
    status = fiefdom("status", *config).stdout
    assert _rows(status)["test-daemon/accounts"][:5] == ["domain", "0", "live", "(paused", "keys:"]
    assert "(paused keys: cli)" in status
    assert (
        fiefdom("actors", "resume", "accounts", "--key", "cli", *config).stdout
        == "accounts key cli resumed\n"
    )
    assert "paused keys" not in fiefdom("status", *config).stdout
    stopped = fiefdom("actors", "stop", "accounts", "--key", "cli", "--wait", "30", *config)
    assert stopped.stdout == "accounts key cli stopped\n"
    whole = fiefdom("actors", "stop", "accounts", *config).stdout
    assert whole == "accounts: every live activation stopped\n"


@pytest.mark.parametrize(
    "args",
    [("pause", "nobody"), ("resume", "counter", "--key", "k"), ("stop", "nobody")],
    ids=["unknown-target", "key-on-an-actor", "stop-unknown"],
)
def test_actors_errors_are_one_line(daemon: DaemonProcess, args: tuple[str, ...]) -> None:
    """A refused actor command prints one line on stderr and exits 1."""
    result = fiefdom("actors", *args, "--config", str(daemon.config), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("fiefdom: error: ")


def test_jobs_kinds_retry_force_bulk_retry_and_prune(daemon: DaemonProcess) -> None:
    """jobs kinds lists the registered kinds with their options; retrying a completed
    job needs --force and says what it did; a bulk retry counts, needs --yes without
    a terminal, and says how many it retried; prune deletes old final jobs and refuses
    an age that is not one by name, changing nothing."""
    config = ("--config", str(daemon.config))
    kinds = {k["kind"]: k for k in json.loads(fiefdom("jobs", "kinds", "--json", *config).stdout)}
    assert (kinds["nap"]["max_attempts"], kinds["fail"]["max_attempts"]) == (3, 1)
    assert _rows(fiefdom("jobs", "kinds", *config).stdout)["nap"][:3] == ["default", "0", "3"]
    done = _until(daemon, "nap", {"seconds": 0}, JobState.COMPLETED)
    refused = fiefdom("jobs", "retry", str(done), *config, check=False)
    assert refused.returncode == 1
    assert "--force" in refused.stderr or "force" in refused.stderr
    forced = fiefdom("jobs", "retry", str(done), "--force", *config).stdout
    assert forced.startswith(f"job {done} (nap) was completed: retried, now ")
    failed = _until(daemon, "fail", {"reason": "bulk"}, JobState.DISCARDED)
    bulk = ("jobs", "retry", "--state", "discarded", "--kind", "fail", *config)
    unconfirmed = fiefdom(*bulk, check=False)
    assert unconfirmed.returncode == 1
    assert "pass --yes to confirm" in unconfirmed.stderr
    assert json.loads(fiefdom("jobs", "show", str(failed), "--json", *config).stdout)["state"] in (
        "discarded",
        "available",
        "running",
    )
    retried = fiefdom(*bulk, "--yes", *config).stdout
    assert re.fullmatch(r"retried \d+ discarded jobs? of kind fail\n", retried), retried
    bad = fiefdom("jobs", "prune", "--older-than", "7x", "--yes", *config, check=False)
    assert bad.returncode == 2
    assert "'7x' is not a duration" in bad.stderr
    kept = json.loads(
        fiefdom("jobs", "prune", "--older-than", "7d", "--yes", "--json", *config).stdout
    )
    assert kept == {"deleted": 0, "more": False}
    negative = fiefdom("jobs", "ls", "--limit", "-1", *config, check=False)
    assert (negative.returncode, "must be at least 1" in negative.stderr) == (2, True)
    infinite = fiefdom("jobs", "enqueue", "nap", "--delay", "inf", *config, check=False)
    assert infinite.returncode == 2


def test_version_global_options_and_a_closed_pipe(daemon: DaemonProcess) -> None:
    """--version prints the version; --json and --config work before the command as
    after it; output cut short by its reader ends the command quietly, status 0."""
    assert re.fullmatch(r"fiefdom \S+\n", fiefdom("--version").stdout)
    before = json.loads(fiefdom("--json", "--config", str(daemon.config), "status").stdout)
    assert before["name"] == "test-daemon"
    environ = {k: v for k, v in os.environ.items() if k != "FIEFDOM_TOKEN"}
    proc = subprocess.Popen(
        [FIEFDOM, "status", "--config", str(daemon.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )
    assert proc.stdout is not None
    # No reader at all: whenever the command writes, the pipe is closed (EPIPE).
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert stderr == b""
