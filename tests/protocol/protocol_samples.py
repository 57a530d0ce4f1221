"""A valid instance of every request type of the control channel, by tag."""

from __future__ import annotations

from typing import Any

# The role check runs before the request, so these need not succeed.
SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {"version": 1},
    "ping": {},
    "status": {},
    "call": {"target": "counter", "message_type": "GetCount", "message": {}},
    "actors.pause": {"target": "counter"},
    "actors.resume": {"target": "counter"},
    "actors.stop": {"target": "accounts", "key": "nobody"},
    "jobs.list": {},
    "jobs.get": {"job_id": 1},
    "jobs.enqueue": {"kind": "sleep", "args": {}},
    "jobs.retry": {"job_id": 1},
    "jobs.cancel": {"job_id": 1},
    "queues.list": {},
    "queues.pause": {"queue": "default"},
    "queues.resume": {"queue": "default"},
    "queues.drain": {"queue": "default"},
    "drain": {},
    "subscribe": {"topics": ["jobs"]},
    "unsubscribe": {"subscription": 1},
    "stop": {},
    "dump": {},
}
