"""The HTTP endpoints of a real daemon: health, readiness, Prometheus metrics (read
back with prometheus-client's own parser) and the generated JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import msgspec
from daemon_harness import DaemonProcess
from hosted_app import GetCount
from prometheus_client.parser import text_string_to_metric_families

import fiefdom
from fiefdom.protocol import ClientMessage, ServerMessage, json_schema
from fiefdom.protocol import JobEvent as WireJobEvent
from fiefdom.protocol._messages import CLIENT_TYPES


def test_healthz_and_readyz(daemon: DaemonProcess) -> None:
    """/healthz says alive; /readyz reports each check and is ready on a healthy daemon."""
    status, body = daemon.http("/healthz", token=None)
    assert status == 200
    assert json.loads(body)["status"] == "alive"
    ready = daemon.json("/readyz")
    assert ready["ready"] is True
    assert set(ready["checks"]) >= {"store", "accepting"}


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
            if isinstance(event, WireJobEvent) and (event.job_id, event.state) == (
                job.id,
                "completed",
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
            "data": {"topic": "jobs", "job_id": 1, "kind": "k", "queue": "q", "state": "completed"},
        },
    ]
    for frame in frames:
        validator.validate(frame)
        msgspec.json.decode(json.dumps(frame), type=ClientMessage | ServerMessage)
    assert not validator.is_valid({"type": "hello", "id": "one"})
    assert not validator.is_valid({"type": "teleport", "id": 1})
    for tag in CLIENT_TYPES:
        assert tag in json.dumps(schema), tag
