"""The wire protocol of the control channel: every frame is a msgspec Struct in a
tagged union (``type`` names it). This module holds what both directions share
(versions, roles, error codes, bounds) and the frames a client sends: each request
carries an ``id`` and declares, beside its fields, the role it needs (``role``);
``REQUIRED_ROLE`` is read off the union. The server's frames are in ``_replies``."""

from __future__ import annotations

import enum
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias

import msgspec

from ..storage import JobState

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

# Bounds checked when a frame is decoded, so that a request the store or the engine
# would refuse (or overflow on) is an ``invalid_message`` naming the field.
# Every other integer of a request (its id, a subscription, a version) is a signed
# 64-bit one: JSON carries integers of any size, and a reply must not echo one that
# a client in another language could not hold.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
JobId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]  # the store's ids: 64-bit, from 1
AfterId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
QueueName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Priority = Annotated[int, msgspec.Meta(ge=-32768, le=32767)]  # a 16-bit column
Limit = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
BulkLimit = Annotated[int, msgspec.Meta(ge=1, le=100_000)]  # the store's BULK_LIMIT
# A moment as unix seconds: from 1970 to the year 5138 (a finite number).
UnixTime = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
# At most about 31 years: a deadline past that is no deadline, and event loops
# overflow on huge ones. None (where allowed) means no limit.
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e9)]


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
    NOT_FOUND = "not_found"  # no such actor target, message type, job kind, job or subscription
    TIMEOUT = "timeout"  # an actor call's deadline passed, or a wait's
    ACTOR_ERROR = "actor_error"  # the actor's handler raised
    JOB_ERROR = "job_error"  # the job engine refused the request
    UNAVAILABLE = "unavailable"  # the daemon is draining or a component is not running
    INTERNAL = "internal"  # a bug in the daemon (it logs the traceback)


class _Frame(msgspec.Struct, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    pass


# -- client to server ---------------------------------------------------------------


# What a request that reads the store or walks every actor (status, jobs.list,
# queues.list) counts as against a connection's rate: a flood of them is held to
# messages_per_second / HEAVY, as they cost the daemon that much more than a ping.
HEAVY: Final = 5


class _Request(_Frame):
    """A frame a client sends. Each request type declares ``role``, the weakest token
    role allowed to send it; a type without one is refused when it is defined. A
    request that costs the daemon much more than a ping (it reads the store or walks
    every actor) declares its ``cost``: it counts as that many frames against the
    connection's rate."""

    role: ClassVar[Role]
    cost: ClassVar[int] = 1
    id: Int64

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("role") not in typing.get_args(Role):
            raise TypeError(
                f"request {cls.__name__} declares no role: add "
                "role: ClassVar[Role] = 'read' (or 'operate', 'admin') to its class"
            )


class Hello(_Request, tag="hello"):
    """The first frame: negotiates the protocol version and authenticates."""

    role: ClassVar[Role] = "read"
    version: Int64 = PROTOCOL_VERSION
    token: str | None = None
    client: str = ""


class Ping(_Request, tag="ping"):
    """Answered with ``pong`` (in order with the frames around it)."""

    role: ClassVar[Role] = "read"


class GetStatus(_Request, tag="status"):
    """The supervisor tree with every actor's statistics, the domains and the queues."""

    role: ClassVar[Role] = "read"
    cost: ClassVar[int] = HEAVY


class Call(_Request, tag="call"):
    """Send a registered message type to a hosted actor (or a domain's key).

    A ``Request`` message is asked and its reply returned; any other message is told."""

    role: ClassVar[Role] = "operate"
    target: str
    message_type: str
    message: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    key: str | None = None
    timeout: Seconds | None = 5.0


class PauseActor(_Request, tag="actors.pause"):
    """Pause an exposed actor: it finishes its current message and takes no next one
    until resumed (its mailbox keeps accepting until full; queued asks keep their
    deadlines). For a domain, ``key`` pauses one key (also its later activations);
    without one, the whole domain (every activation, present and future)."""

    role: ClassVar[Role] = "operate"
    target: str
    key: str | None = None


class ResumeActor(_Request, tag="actors.resume"):
    """Undo ``actors.pause``: queued messages run in the order they were sent. For a
    domain without ``key``, every key is resumed (also those paused on their own)."""

    role: ClassVar[Role] = "operate"
    target: str
    key: str | None = None


class StopActor(_Request, tag="actors.stop"):
    """Stop an exposed actor once it has handled what is queued (a paused one drains
    too), and reply when it has stopped. A single actor is gone for good (until the
    daemon restarts); a domain ``key`` is passivated, and without a key every live
    activation of the domain is: a key comes back with its next message (pause the
    domain to keep it from running). Past ``timeout`` seconds the reply is a
    ``timeout`` error and the stop goes on."""

    role: ClassVar[Role] = "operate"
    target: str
    key: str | None = None
    timeout: Seconds | None = None


class ListJobs(_Request, tag="jobs.list"):
    """Jobs matching the filters (the store's ``list_jobs``): ``key`` is a domain
    job's key, ``since`` (unix seconds) keeps the jobs created at or after it. By
    id, starting after ``after_id``; with ``newest_first`` the ids go down and a
    non-zero ``after_id`` is the last id of the page before (the jobs below it).
    With ``count`` the reply's ``total`` says how many jobs the filters match in
    all pages (counted up to ``total_cap``)."""

    role: ClassVar[Role] = "read"
    cost: ClassVar[int] = HEAVY
    queue: QueueName | None = None
    state: JobState | None = None
    kind: str | None = None
    after_id: AfterId = 0
    limit: Limit = 100
    key: str | None = None
    since: UnixTime | None = None
    newest_first: bool = False
    count: bool = False


class GetJob(_Request, tag="jobs.get"):
    """One job (the store's ``get_job``); ``not_found`` when there is none."""

    role: ClassVar[Role] = "read"
    job_id: JobId


class EnqueueJob(_Request, tag="jobs.enqueue"):
    """Enqueue a job of a registered kind; ``args`` is decoded into the kind's Struct.
    ``queue`` and ``priority`` override the kind's defaults; ``delay`` is in seconds."""

    role: ClassVar[Role] = "operate"
    kind: str
    args: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    queue: QueueName | None = None
    priority: Priority | None = None
    delay: Seconds | None = None


class RetryJob(_Request, tag="jobs.retry"):
    """Make a discarded or cancelled job available again (``retry_job``); a
    completed one only with ``force`` (it would run a second time). Refused
    (``job_error``) for a job that is waiting or running, or completed without
    ``force``."""

    role: ClassVar[Role] = "operate"
    job_id: JobId
    force: bool = False


class CancelJob(_Request, tag="jobs.cancel"):
    """Cancel a job (``cancel_job``): a waiting one at once, a running one is stopped.
    A job already completed, cancelled or discarded is left as it is: the reply's
    ``previous`` state says so."""

    role: ClassVar[Role] = "operate"
    job_id: JobId


class ListJobKinds(_Request, tag="jobs.kinds"):
    """The job kinds registered in the daemon, with their options."""

    role: ClassVar[Role] = "read"


class RetryJobs(_Request, tag="jobs.retry_many"):
    """Retry every job in ``state`` (discarded, cancelled, or completed with
    ``force``) of ``queue`` and ``kind`` (when given), oldest first, at most
    ``limit``, in one transaction: an error reply means none was retried."""

    role: ClassVar[Role] = "operate"
    state: JobState
    queue: QueueName | None = None
    kind: str | None = None
    limit: BulkLimit = 100_000
    force: bool = False


class PruneJobs(_Request, tag="jobs.prune"):
    """Delete final jobs (of ``states``: by default completed, cancelled and
    discarded) that finished more than ``older_than`` seconds ago, of ``queue`` and
    ``kind`` when given, at most ``limit``, in one statement."""

    role: ClassVar[Role] = "admin"
    older_than: Seconds
    states: list[JobState] = msgspec.field(
        default_factory=lambda: [JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED]
    )
    queue: QueueName | None = None
    kind: str | None = None
    limit: BulkLimit = 100_000


class ListQueues(_Request, tag="queues.list"):
    """The queues, paused or not, with their jobs counted by state."""

    role: ClassVar[Role] = "read"
    cost: ClassVar[int] = HEAVY


class PauseQueue(_Request, tag="queues.pause"):
    """Stop claiming from a queue, for every daemon on the database (kept there)."""

    role: ClassVar[Role] = "operate"
    queue: QueueName


class ResumeQueue(_Request, tag="queues.resume"):
    """Claim from a paused queue again."""

    role: ClassVar[Role] = "operate"
    queue: QueueName


class DrainQueue(_Request, tag="queues.drain"):
    """Stop claiming new jobs on a queue and wait until its running jobs have ended."""

    role: ClassVar[Role] = "operate"
    queue: QueueName
    timeout: Seconds | None = None


class Drain(_Request, tag="drain"):
    """Drain the whole daemon: its engine stops claiming jobs (other daemons on the
    database go on), it reports not ready, and running jobs finish within the
    shutdown deadline or go back to their queue. It stays up (for inspection) until
    it is stopped."""

    role: ClassVar[Role] = "admin"
    timeout: Seconds | None = None


class Subscribe(_Request, tag="subscribe"):
    """Receive ``event`` frames for these topics (``logs`` at or above ``level``)."""

    role: ClassVar[Role] = "read"
    topics: list[Topic]
    level: LogLevel = "info"


class Unsubscribe(_Request, tag="unsubscribe"):
    """End a subscription of this connection."""

    role: ClassVar[Role] = "read"
    subscription: Int64


class Stop(_Request, tag="stop"):
    """Stop the daemon: ``drain`` lets running work finish within the shutdown
    deadline; ``cancel`` cancels it at once (cancelled jobs return to their queue)."""

    role: ClassVar[Role] = "admin"
    mode: Literal["drain", "cancel"] = "drain"


class Dump(_Request, tag="dump"):
    """Write the flight recorder (recent log events) to its folder now."""

    role: ClassVar[Role] = "admin"


ClientMessage: TypeAlias = (
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
    | ListJobKinds
    | RetryJobs
    | PruneJobs
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

CLIENT_TYPES: Final[Mapping[str, type[_Request]]] = {
    str(t.__struct_config__.tag): t for t in typing.get_args(ClientMessage)
}

# What each request needs, read off the union (each type declares its own).
REQUIRED_ROLE: Final[Mapping[type[_Request], Role]] = {
    t: t.role for t in typing.get_args(ClientMessage)
}

# And what each HTTP endpoint needs when it is guarded. The probes (``/healthz``,
# ``/readyz``) need nothing: load balancers and supervisors carry no secret.
# ``/metrics`` is guarded unless the daemon listens on loopback (``metrics_auth``).
ENDPOINT_ROLE: Final[Mapping[str, Role]] = {
    "/metrics": "read",
    "/schema": "read",
    "/ws": "read",
}
