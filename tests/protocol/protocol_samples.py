"""What the tests expect of each request type of the control channel, by tag: a valid
instance, the role it needs, and how it is answered."""

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
    "jobs.kinds": {},
    "jobs.retry_many": {"state": "discarded", "kind": "nothing-of-this-kind"},
    "jobs.prune": {"older_than": 86400.0, "kind": "nothing-of-this-kind"},
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

# The role each request needs, written out by hand from what the request does (the
# tests compare the server's own table against it).
ROLES: dict[str, str] = {
    "hello": "read",
    "ping": "read",
    "status": "read",
    "jobs.list": "read",
    "jobs.get": "read",
    "jobs.kinds": "read",
    "queues.list": "read",
    "subscribe": "read",
    "unsubscribe": "read",
    "call": "operate",
    "actors.pause": "operate",
    "actors.resume": "operate",
    "actors.stop": "operate",
    "jobs.enqueue": "operate",
    "jobs.retry": "operate",
    "jobs.cancel": "operate",
    "jobs.retry_many": "operate",
    "queues.pause": "operate",
    "queues.resume": "operate",
    "queues.drain": "operate",
    "jobs.prune": "admin",
    "drain": "admin",
    "stop": "admin",
    "dump": "admin",
}
RANK = {"read": 0, "operate": 1, "admin": 2}

# The frame that answers each request when it succeeds, and the error codes it may
# get instead when it is well formed and allowed (what it names may not exist, a
# wait may time out...). "internal" is never among them.
REPLIES: dict[str, tuple[str, frozenset[str]]] = {
    "hello": ("welcome", frozenset({"version_mismatch", "unauthenticated"})),
    "ping": ("pong", frozenset()),
    "status": ("status.reply", frozenset()),
    "call": (
        "call.reply",
        frozenset({"not_found", "invalid_message", "timeout", "actor_error", "unavailable"}),
    ),
    "actors.pause": ("ack", frozenset({"not_found", "invalid_message"})),
    "actors.resume": ("ack", frozenset({"not_found", "invalid_message"})),
    "actors.stop": ("ack", frozenset({"not_found", "invalid_message", "timeout"})),
    "jobs.list": ("jobs.reply", frozenset()),
    "jobs.get": ("job.reply", frozenset({"not_found"})),
    "jobs.enqueue": ("enqueue.reply", frozenset({"not_found", "invalid_message", "unavailable"})),
    "jobs.retry": ("job.reply", frozenset({"not_found", "job_error"})),
    "jobs.cancel": ("job.reply", frozenset({"not_found"})),
    "jobs.kinds": ("kinds.reply", frozenset()),
    "jobs.retry_many": ("retried.reply", frozenset()),
    "jobs.prune": ("pruned.reply", frozenset()),
    "queues.list": ("queues.reply", frozenset()),
    "queues.pause": ("ack", frozenset({"job_error"})),
    "queues.resume": ("ack", frozenset({"job_error"})),
    "queues.drain": ("ack", frozenset({"job_error", "timeout"})),
    "drain": ("ack", frozenset({"timeout"})),
    "subscribe": ("subscribed", frozenset()),
    "unsubscribe": ("ack", frozenset({"not_found"})),
    "stop": ("ack", frozenset()),
    "dump": ("dump.reply", frozenset()),
}
