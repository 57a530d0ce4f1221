"""The HTTP endpoints of a real daemon: health, readiness, Prometheus metrics (read
back with prometheus-client's own parser) and the generated JSON Schema."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
from daemon_harness import DaemonProcess, write_config
from hosted_app import GetCount
from prometheus_client.parser import text_string_to_metric_families

import fiefdom
from fiefdom import JobEvent, JobState
from fiefdom.protocol import ClientMessage, ServerMessage, json_schema
from fiefdom.protocol._messages import CLIENT_TYPES
from fiefdom.storage import SCHEMA_VERSION


def test_healthz_and_readyz(daemon: DaemonProcess) -> None:
    """/healthz says alive; /readyz reports each check and is ready on a healthy daemon."""
    status, body = daemon.http("/healthz", token=None)
    assert status == 200
    assert json.loads(body)["status"] == "alive"
    ready = daemon.json("/readyz")
    assert ready["ready"] is True
    assert set(ready["checks"]) >= {"store", "schema", "accepting"}
    assert ready["checks"]["schema"] is True


def _readyz_until(daemon: DaemonProcess, status: int) -> dict[str, Any]:
    """/readyz's checks once it answers ``status`` (polled under a deadline)."""
    deadline = time.monotonic() + 30
    while True:
        code, body = daemon.http("/readyz")
        if code == status:
            return dict(json.loads(body)["checks"])
        assert time.monotonic() < deadline, (code, body)
        # Polling an HTTP endpoint for a condition: the interval only bounds the cost.
        time.sleep(0.05)


def _execute(daemon: DaemonProcess, sql: str, *args: object) -> None:
    """Run one statement on the daemon's SQLite database, committed, then close it."""
    with contextlib.closing(sqlite3.connect(daemon.data / "fiefdom.db")) as db, db:
        db.execute(sql, args)


def test_readyz_reports_a_schema_that_is_not_current(tmp_path: Path) -> None:
    """A schema migrated past this fiefdom's (a newer node on the database) makes /readyz 503."""
    with DaemonProcess(write_config(tmp_path)) as daemon:
        _execute(
            daemon,
            "INSERT INTO fiefdom_schema VALUES (?, 'from a newer fiefdom', 0)",
            SCHEMA_VERSION + 1,
        )
        checks = _readyz_until(daemon, 503)
        assert checks["schema"] is False
        assert checks["store"] is True
        _execute(daemon, "DELETE FROM fiefdom_schema WHERE version = ?", SCHEMA_VERSION + 1)
        assert _readyz_until(daemon, 200)["schema"] is True


async def test_metrics_parse_with_prometheus_parser(daemon: DaemonProcess) -> None:
    """/metrics is valid Prometheus text with actor, websocket and job families, and a
    completed job's time in queue is counted (001/14, 004/6)."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["jobs"]) as events,
    ):
        await client.call("counter", GetCount())
        job = await client.enqueue("nap", {"seconds": 0.0})
        async for event in events:
            if isinstance(event, JobEvent) and (event.job_id, event.state) == (
                job.id,
                JobState.COMPLETED,
            ):
                break
        status, body = daemon.http("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in (
        "fiefdom_actor_mailbox_depth",
        "fiefdom_actor_messages_handled",
        "fiefdom_restarts",
        "fiefdom_ws_connections",
        "fiefdom_ws_frames",
        "fiefdom_jobs",
        "fiefdom_job_duration_seconds",
        "fiefdom_job_time_in_queue_seconds",
        "fiefdom_job_outcomes",
    ):
        assert name in families, name
    handled = {
        s.labels["actor"]: s.value for s in families["fiefdom_actor_messages_handled"].samples
    }
    assert handled["test-daemon/counter"] >= 1
    frames = {
        s.labels["type"]: s.value
        for s in families["fiefdom_ws_frames"].samples
        if s.name == "fiefdom_ws_frames_total"
    }
    assert frames["call"] >= 1
    waited = {
        (s.labels["queue"], s.labels["kind"]): s.value
        for s in families["fiefdom_job_time_in_queue_seconds"].samples
        if s.name == "fiefdom_job_time_in_queue_seconds_count"
    }
    assert waited[("default", "nap")] >= 1


def test_schema_is_valid_json_schema_for_the_frames(daemon: DaemonProcess) -> None:
    """/schema is the generated schema: a valid 2020-12 schema that accepts real frames."""
    schema = daemon.json("/schema")
    assert schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    frames = [
        {"type": "hello", "id": 1, "version": 1, "token": "t"},
        {"type": "call", "id": 2, "target": "a", "message_type": "B", "message": {"x": 1}},
        {"type": "actors.stop", "id": 3, "target": "accounts", "key": "k", "timeout": 1.5},
        {"type": "error", "id": None, "code": "invalid_frame", "message": "m", "details": {}},
        {
            "type": "event",
            "subscription": 1,
            "data": {
                "topic": "jobs",
                "job_id": 1,
                "kind": "k",
                "queue": "q",
                "state": "completed",
                "attempt": 1,
                "at": 1.5,
            },
        },
        {
            "type": "job.reply",
            "id": 4,
            "job": {
                "id": 1,
                "kind": "k",
                "queue": "q",
                "state": "discarded",
                "priority": 0,
                "args": '{"n": 1}',
                "key": None,
                "attempt": 1,
                "max_attempts": 1,
                "errors": [{"attempt": 1, "at": 1.5, "type": "E", "message": "m"}],
                "worker": None,
                "cancel_requested": False,
                "created_at": "2026-01-02T03:04:05Z",
                "run_at": "2026-01-02T03:04:05.250000Z",
                "attempted_at": "2026-01-02T03:04:06Z",
                "finished_at": None,
            },
        },
    ]
    for frame in frames:
        validator.validate(frame)
        msgspec.json.decode(json.dumps(frame), type=ClientMessage | ServerMessage)
    assert not validator.is_valid({"type": "hello", "id": "one"})
    assert not validator.is_valid({"type": "teleport", "id": 1})
    for tag in CLIENT_TYPES:
        assert tag in json.dumps(schema), tag
