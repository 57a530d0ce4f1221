"""The frames the server sends: the reply to each request (naming its ``id``), the
typed ``error``, and the events of a subscription. Jobs travel as the library's own
Structs (``JobInfo``, ``JobEvent``, ``Enqueued``, ``JobState``)."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from ..jobs._ownership import ClusterCounters, ClusterEvent, ClusterMember
from ..storage import Enqueued, JobEvent, JobInfo, JobState
from ._messages import ErrorCode, Role, Topic, _Frame


class _ServerFrame(_Frame, forbid_unknown_fields=False):
    """A frame the server sends. Unlike a request, it may carry fields this client
    does not know (a newer daemon's): they are ignored, so that a client keeps
    working with a daemon upgraded before it. A request's unknown field is an error."""


class QueueInfo(msgspec.Struct, kw_only=True):
    """A queue: whether it is paused (in the database, for every daemon on it) and
    its jobs counted by state."""

    name: str
    paused: bool
    counts: dict[JobState, int]  # jobs by state (states with none are left out)


class Welcome(_ServerFrame, tag="welcome"):
    """The reply to ``hello``: the role the token carries and the server's name."""

    id: int
    version: int
    role: Role
    server: str
    topics: list[Topic]


class Pong(_ServerFrame, tag="pong"):
    """The reply to ``ping``."""

    id: int


class Ack(_ServerFrame, tag="ack"):
    """The request was done (a tell, a pause, a stop...)."""

    id: int


class TargetInfo(msgspec.Struct, kw_only=True):
    """A hosted actor or domain that ``call`` can reach, with its message types."""

    name: str
    kind: Literal["actor", "domain"]
    messages: list[str]
    paused: bool = False  # the actor, or the whole domain (see the tree for its keys)


class ClusterInfo(msgspec.Struct, kw_only=True):
    """This daemon's place in the store's cluster: its node id, the partitions it
    holds (of ``total``) under epochs ``min_epoch`` to ``max_epoch``, and the live
    nodes; ``members``, every node with its partitions and epochs as this node's
    last round read the partition table (``as_of``, unix seconds), ``unowned`` the
    partitions no node holds a live lease on; its ``counters`` and last ``events``
    (oldest first). A daemon older than these fields sends only the first four."""

    node: str
    partitions: int
    total: int
    nodes: int
    min_epoch: int | None = None
    max_epoch: int | None = None
    members: list[ClusterMember] = msgspec.field(default_factory=list)
    unowned: int = 0
    as_of: float | None = None
    counters: ClusterCounters | None = None
    events: list[ClusterEvent] = msgspec.field(default_factory=list)


class StatusReply(_ServerFrame, tag="status.reply"):
    """The daemon's state: readiness, the supervisor tree (actors, domains, services
    and supervisors with their statistics), the callable targets and the queues."""

    id: int
    name: str
    version: str
    pid: int
    uptime: float
    ready: bool
    draining: bool
    loop: str
    tree: dict[str, Any]  # SupervisorStatistics, as msgspec encodes it
    targets: list[TargetInfo]
    queues: list[QueueInfo]
    connections: int
    cluster: ClusterInfo | None = None  # None: its engine serves no domain


class CallReply(_ServerFrame, tag="call.reply"):
    """The reply to ``call``."""

    id: int
    result: msgspec.Raw  # the actor's reply, encoded like the frame; null for a tell


class JobsReply(_ServerFrame, tag="jobs.reply"):
    """The reply to ``jobs.list``: a page of jobs and, when the request asked to
    ``count``, how many jobs its filters match in all (``total``, counted up to
    ``total_cap``: a total equal to it means at least that many)."""

    id: int
    jobs: list[JobInfo]
    total: int | None = None
    total_cap: int | None = None


class JobReply(_ServerFrame, tag="job.reply"):
    """The reply to ``jobs.get``, ``jobs.retry`` and ``jobs.cancel``: the job as it is
    now, and (retry, cancel) the state it was in before (what the request found)."""

    id: int
    job: JobInfo
    previous: JobState | None = None


class KindInfo(msgspec.Struct, kw_only=True):
    """A job kind registered in the daemon and its options (``JobOptions``):
    ``unique`` describes its uniqueness, ``fields`` are its arguments."""

    kind: str
    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
    unique: str | None
    domain: str | None
    key: str | None
    ordered: bool
    fields: list[str]


class KindsReply(_ServerFrame, tag="kinds.reply"):
    """The reply to ``jobs.kinds``, sorted by kind."""

    id: int
    kinds: list[KindInfo]


class RetriedReply(_ServerFrame, tag="retried.reply"):
    """The reply to ``jobs.retry_many``: jobs made available again, and those left
    as they were because a duplicate enqueued since holds their unique key."""

    id: int
    retried: int
    skipped: int


class PrunedReply(_ServerFrame, tag="pruned.reply"):
    """The reply to ``jobs.prune``: how many jobs were deleted, and whether the limit
    was reached (more may match: prune again)."""

    id: int
    deleted: int
    more: bool


class EnqueueReply(_ServerFrame, tag="enqueue.reply"):
    """The reply to ``jobs.enqueue``: what the store's ``enqueue`` returned."""

    id: int
    enqueued: Enqueued


class QueuesReply(_ServerFrame, tag="queues.reply"):
    """The reply to ``queues.list``."""

    id: int
    queues: list[QueueInfo]


class Subscribed(_ServerFrame, tag="subscribed"):
    """The reply to ``subscribe``: the subscription that ``event`` frames name."""

    id: int
    subscription: int


class DumpReply(_ServerFrame, tag="dump.reply"):
    """The reply to ``dump``: the file written and how many events it holds."""

    id: int
    path: str
    events: int


class Error(_ServerFrame, tag="error"):
    """A typed error. ``id`` is the request's, or null when the frame had none."""

    id: int | None
    code: ErrorCode
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ActorEvent(msgspec.Struct, kw_only=True, tag="actors", tag_field="topic"):
    """A runtime event of the supervisor tree (topic ``actors``), from the system's
    event bus: ``crashed`` (an actor's handler or start raised; ``key`` names a domain
    key, ``error_type`` and ``error`` say what), ``restarted`` (``restarts`` counts
    them), ``exited`` (a child that is not restarted ended; ``reason``) and
    ``escalated`` (a supervisor exceeded ``restarts`` within ``within`` seconds).
    ``error`` reads ``Type: message``; ``at`` is unix seconds."""

    path: str
    event: Literal["crashed", "restarted", "exited", "escalated"]
    key: str | None = None
    error_type: str | None = None
    error: str | None = None
    restarts: int | None = None
    reason: str | None = None
    within: float | None = None
    at: float = 0.0


class LogEvent(msgspec.Struct, kw_only=True, tag="logs", tag_field="topic"):
    """A log event at or above the subscriber's level (topic ``logs``)."""

    level: str
    logger: str
    event: str
    at: float
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


# What the daemon publishes to subscribers, what the wire carries (each is tagged
# with its topic), and what the client hands out: the same types.
EventData: TypeAlias = JobEvent | ActorEvent | LogEvent


def topic_of(event: EventData) -> Topic:
    """The topic an event is published under."""
    if isinstance(event, JobEvent):
        return "jobs"
    if isinstance(event, ActorEvent):
        return "actors"
    return "logs"


class Event(_ServerFrame, tag="event"):
    """An event of a subscription."""

    subscription: int
    data: EventData


class Dropped(_ServerFrame, tag="dropped"):
    """This subscriber was too slow: ``count`` events were dropped since the last notice."""

    subscription: int
    count: int


# The frames that answer a request.
Reply: TypeAlias = (
    Welcome
    | Pong
    | Ack
    | StatusReply
    | CallReply
    | JobsReply
    | JobReply
    | KindsReply
    | RetriedReply
    | PrunedReply
    | EnqueueReply
    | QueuesReply
    | Subscribed
    | DumpReply
    | Error
)

ServerMessage: TypeAlias = Reply | Event | Dropped
