"""The wire protocol of the control channel: every frame is a msgspec Struct in a
tagged union (``type`` names it). Client requests carry an ``id``; every reply
names it. The role each request needs is declared once, in ``REQUIRED_ROLE``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 1

Role = Literal["read", "operate", "admin"]
ROLE_RANK: Final[Mapping[str, int]] = {"read": 0, "operate": 1, "admin": 2}

Topic = Literal["jobs", "actors", "logs"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVEL_RANK: Final[Mapping[str, int]] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}


def role_allows(held: str, needed: str) -> bool:
    """True when a token with role ``held`` may do what needs ``needed``."""
    return ROLE_RANK[held] >= ROLE_RANK[needed]


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` frame (and of ``ControlError`` in the client)."""

    INVALID_FRAME = "invalid_frame"  # not JSON / MessagePack, or not an object
    INVALID_MESSAGE = "invalid_message"  # a known type with wrong or missing fields
    UNKNOWN_TYPE = "unknown_type"  # a ``type`` the server does not know
    UNAUTHENTICATED = "unauthenticated"  # no hello yet, or a wrong token
    FORBIDDEN = "forbidden"  # the token's role is too weak for this request
    RATE_LIMITED = "rate_limited"  # too many frames per second on this connection
    VERSION_MISMATCH = "version_mismatch"
    NOT_FOUND = "not_found"  # no such actor target, message type, job or subscription
    TIMEOUT = "timeout"  # an actor call's deadline passed
    ACTOR_ERROR = "actor_error"  # the actor's handler raised
    JOB_ERROR = "job_error"  # the job engine refused the request
    UNAVAILABLE = "unavailable"  # the daemon is draining or a component is not running
    INTERNAL = "internal"


class _Frame(msgspec.Struct, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    pass


# -- client to server ---------------------------------------------------------------


class Hello(_Frame, tag="hello"):
    """The first frame: negotiates the protocol version and authenticates."""

    id: int
    version: int = PROTOCOL_VERSION
    token: str | None = None
    client: str = ""


class Ping(_Frame, tag="ping"):
    id: int


class GetStatus(_Frame, tag="status"):
    """The supervisor tree with every actor's statistics, the domains and the queues."""

    id: int


class Call(_Frame, tag="call"):
    """Send a registered message type to a hosted actor (or a domain's key).

    A ``Request`` message is asked and its reply returned; any other message is told."""

    id: int
    target: str
    message_type: str
    message: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    key: str | None = None
    timeout: float | None = 5.0


class PauseActor(_Frame, tag="actors.pause"):
    """Pause an exposed actor: it finishes its current message and takes no next one
    until resumed (its mailbox keeps accepting until full; queued asks keep their
    deadlines). For a domain, ``key`` pauses one key (also its later activations);
    without one, the whole domain (every activation, present and future)."""

    id: int
    target: str
    key: str | None = None


class ResumeActor(_Frame, tag="actors.resume"):
    """Undo ``actors.pause``: queued messages run in the order they were sent. For a
    domain without ``key``, every key is resumed (also those paused on their own)."""

    id: int
    target: str
    key: str | None = None


class StopActor(_Frame, tag="actors.stop"):
    """Stop an exposed actor once it has handled what is queued (a paused one drains
    too), and reply when it has stopped. A single actor is gone for good (until the
    daemon restarts); a domain ``key`` is passivated, and without a key every live
    activation of the domain is: a key comes back with its next message (pause the
    domain to keep it from running). Past ``timeout`` seconds the reply is a
    ``timeout`` error and the stop goes on."""

    id: int
    target: str
    key: str | None = None
    timeout: float | None = None


class ListJobs(_Frame, tag="jobs.list"):
    id: int
    queue: str | None = None
    state: str | None = None
    kind: str | None = None
    limit: int = 100


class GetJob(_Frame, tag="jobs.get"):
    id: int
    job_id: int


class EnqueueJob(_Frame, tag="jobs.enqueue"):
    """Enqueue a job of a registered kind; ``args`` is decoded into the kind's Struct.
    ``queue`` and ``priority`` override the kind's defaults; ``delay`` is in seconds."""

    id: int
    kind: str
    args: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    queue: str | None = None
    priority: int | None = None
    delay: float | None = None


class RetryJob(_Frame, tag="jobs.retry"):
    id: int
    job_id: int


class CancelJob(_Frame, tag="jobs.cancel"):
    id: int
    job_id: int


class ListQueues(_Frame, tag="queues.list"):
    id: int


class PauseQueue(_Frame, tag="queues.pause"):
    id: int
    queue: str


class ResumeQueue(_Frame, tag="queues.resume"):
    id: int
    queue: str


class DrainQueue(_Frame, tag="queues.drain"):
    """Stop claiming new jobs on a queue and wait until its running jobs have ended."""

    id: int
    queue: str
    timeout: float | None = None


class Drain(_Frame, tag="drain"):
    """Drain the whole daemon: its engine stops claiming jobs (other daemons on the
    database go on), it reports not ready, and running jobs finish within the
    shutdown deadline or go back to their queue. It stays up (for inspection) until
    it is stopped."""

    id: int
    timeout: float | None = None


class Subscribe(_Frame, tag="subscribe"):
    """Receive ``event`` frames for these topics (``logs`` at or above ``level``)."""

    id: int
    topics: list[Topic]
    level: LogLevel = "info"


class Unsubscribe(_Frame, tag="unsubscribe"):
    id: int
    subscription: int


class Stop(_Frame, tag="stop"):
    """Stop the daemon: ``drain`` lets running work finish within the shutdown
    deadline; ``cancel`` cancels it at once (cancelled jobs return to their queue)."""

    id: int
    mode: Literal["drain", "cancel"] = "drain"


class Dump(_Frame, tag="dump"):
    """Write the flight recorder (recent log events) to its folder now."""

    id: int


ClientMessage = (
    Hello
    | Ping
    | GetStatus
    | Call
    | PauseActor
    | ResumeActor
    | StopActor
    | ListJobs
    | GetJob
    | EnqueueJob
    | RetryJob
    | CancelJob
    | ListQueues
    | PauseQueue
    | ResumeQueue
    | DrainQueue
    | Drain
    | Subscribe
    | Unsubscribe
    | Stop
    | Dump
)

# The one place where authorisation is declared: what each request needs.
REQUIRED_ROLE: Final[Mapping[type[_Frame], Role]] = {
    Hello: "read",
    Ping: "read",
    GetStatus: "read",
    ListJobs: "read",
    GetJob: "read",
    ListQueues: "read",
    Subscribe: "read",
    Unsubscribe: "read",
    Call: "operate",
    PauseActor: "operate",
    ResumeActor: "operate",
    StopActor: "operate",
    EnqueueJob: "operate",
    RetryJob: "operate",
    CancelJob: "operate",
    PauseQueue: "operate",
    ResumeQueue: "operate",
    DrainQueue: "operate",
    Drain: "admin",
    Stop: "admin",
    Dump: "admin",
}

# And what each HTTP endpoint needs (``/healthz`` needs nothing: it only says the
# process is alive, which a supervisor like systemd must see without a secret).
ENDPOINT_ROLE: Final[Mapping[str, Role]] = {
    "/readyz": "read",
    "/metrics": "read",
    "/schema": "read",
    "/ws": "read",
}

# -- server to client ---------------------------------------------------------------


class JobInfo(msgspec.Struct, kw_only=True):
    """A job as the control channel shows it (times are unix seconds)."""

    id: int
    kind: str
    queue: str
    state: str
    priority: int = 0
    attempt: int
    max_attempts: int
    args: dict[str, Any]
    key: str | None = None
    errors: list[str] = msgspec.field(default_factory=list)
    worker: str | None = None
    cancel_requested: bool = False
    created_at: float | None = None
    scheduled_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duplicate: bool = False  # an enqueue found an existing unique job and returned it


class QueueInfo(msgspec.Struct, kw_only=True):
    """A queue: whether it is paused (in the database, for every daemon on it) and
    its jobs counted by state."""

    name: str
    paused: bool
    counts: dict[str, int]  # jobs by state


class Welcome(_Frame, tag="welcome"):
    id: int
    version: int
    role: Role
    server: str
    topics: list[Topic]


class Pong(_Frame, tag="pong"):
    id: int


class Ack(_Frame, tag="ack"):
    """The request was done (a tell, a pause, a stop...)."""

    id: int


class StatusReply(_Frame, tag="status.reply"):
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


class TargetInfo(msgspec.Struct, kw_only=True):
    """A hosted actor or domain that ``call`` can reach, with its message types."""

    name: str
    kind: Literal["actor", "domain"]
    messages: list[str]
    paused: bool = False  # the actor, or the whole domain (see the tree for its keys)


class CallReply(_Frame, tag="call.reply"):
    id: int
    result: msgspec.Raw  # the actor's reply, encoded like the frame; null for a tell


class JobsReply(_Frame, tag="jobs.reply"):
    id: int
    jobs: list[JobInfo]


class JobReply(_Frame, tag="job.reply"):
    id: int
    job: JobInfo


class QueuesReply(_Frame, tag="queues.reply"):
    id: int
    queues: list[QueueInfo]


class Subscribed(_Frame, tag="subscribed"):
    id: int
    subscription: int


class DumpReply(_Frame, tag="dump.reply"):
    id: int
    path: str
    events: int


class Error(_Frame, tag="error"):
    """A typed error. ``id`` is the request's, or null when the frame had none."""

    id: int | None
    code: ErrorCode
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class JobEvent(msgspec.Struct, kw_only=True, tag="jobs", tag_field="topic"):
    """A job changed state (topic ``jobs``); ``at`` is unix seconds."""

    job_id: int
    kind: str
    queue: str
    state: str
    attempt: int = 0
    detail: str | None = None  # why, when it is not a plain success
    at: float = 0.0


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


EventData = JobEvent | ActorEvent | LogEvent


class Event(_Frame, tag="event"):
    subscription: int
    data: EventData


class Dropped(_Frame, tag="dropped"):
    """This subscriber was too slow: ``count`` events were dropped since the last notice."""

    subscription: int
    count: int


ServerMessage = (
    Welcome
    | Pong
    | Ack
    | StatusReply
    | CallReply
    | JobsReply
    | JobReply
    | QueuesReply
    | Subscribed
    | DumpReply
    | Error
    | Event
    | Dropped
)

CLIENT_TYPES: Final[Mapping[str, type[_Frame]]] = {
    t.__struct_config__.tag: t for t in ClientMessage.__args__
}
