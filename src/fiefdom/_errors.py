"""The exception tree of fiefdom. Every error the library raises derives from
:class:`FiefdomError`; where a standard exception fits the meaning it is a base too.

    FiefdomError
    ├── ActorError
    │   ├── ActorStopped              the actor is stopped; the message was not taken
    │   ├── MailboxFull               tell_nowait on a full mailbox (also BufferError)
    │   ├── AskTimeout                deadline passed, queued or running (also TimeoutError)
    │   ├── CallCycleError            an ask would wait on an actor already waiting on it
    │   ├── ActivationFailed          a domain actor's on_start raised
    │   ├── OwnerUnavailable          the key is owned by another node of the cluster
    │   │                             that cannot be reached (or by none while its
    │   │                             lease changes hands)
    │   └── RemoteHandlerError        a handler run on another node (a forwarded ask)
    │                                 raised
    ├── ProcessFailed                 run_process(check=True) saw a non-zero exit
    ├── SupervisorError
    │   └── RestartIntensityExceeded  too many restarts within the period: escalated
    ├── LifecycleError                a component used out of its lifecycle: started
    │                                 twice, used before start or after stop
    │                                 (also RuntimeError)
    ├── ConfigurationError            invalid configuration (also ValueError)
    ├── StoreError                    storage failures (wrapped driver errors)
    │   ├── StoreNotOpen              used before open or after close (also LifecycleError)
    │   ├── StaleOwner                a write made under an epoch that has moved on
    │   ├── SchemaMismatch            the database schema is not the one the code knows
    │   └── StoreUnavailable          the database cannot be reached right now
    ├── JobError                      job-engine misuse and failures
    │   ├── UnknownJobKind            a job kind that has no registration or handler
    │   ├── StaleLease                an outcome reported with a fencing token that lost its lease
    │   └── UniqueConflict            a retry would take a unique key another job holds
    ├── ControlError                  the control channel refused a request (code, details)
    │   └── ControlConnectionError    the control channel cannot be reached or was lost
    │                                 (also ConnectionError)
    └── VaultError                    the vault refused or failed an operation; nothing
        │                             was committed
        ├── InvalidName               a resource name that is not allowed (also ValueError)
        ├── TooLarge                  an upload past its size limit
        ├── QuotaExceeded             a new blob would take a location past its quota
        ├── ChecksumMismatch          the bytes do not have the checksum the caller gave
        ├── BadRange                  a byte range outside the version (also ValueError)
        ├── NotFound                  no such resource or version (also LookupError)
        ├── LocationUnavailable       a storage location cannot be written or read
        │   │                         (also OSError)
        │   └── LocationMismatch      the folder is not the location the store knows
        │                             under that name
        └── BlobMissing               a version's blob file is gone from its location
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal


class FiefdomError(Exception):
    """Root of every error fiefdom raises."""


class ActorError(FiefdomError):
    """An error about an actor or a message to one."""


class ActorStopped(ActorError):
    """The actor is stopped (or stopping) and does not take new messages."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        text = f"actor {path} is stopped and takes no new messages"
        super().__init__(f"{text}: {detail}" if detail else text)


class MailboxFull(ActorError, BufferError):
    """``tell_nowait`` found the mailbox at capacity; use ``await tell(...)`` to wait."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        super().__init__(
            f"mailbox of {path} is full ({capacity} messages); "
            "use 'await ref.tell(msg)' to wait for space instead of tell_nowait"
        )


AskPhase = Literal["queued", "running"]


class AskTimeout(ActorError, TimeoutError):
    """An ask's deadline passed.

    ``phase`` says what happened to the message: ``"queued"`` means it was removed
    from the mailbox and never ran; ``"running"`` means its handler was cancelled.
    ``handler_exited`` is False only when the handler ignored its cancellation past
    the actor's grace period (the actor then shows as stuck in its statistics).
    """

    def __init__(
        self,
        path: str,
        message_type: str,
        timeout: float,
        phase: AskPhase,
        *,
        handler_exited: bool = True,
    ) -> None:
        self.path = path
        self.message_type = message_type
        self.timeout = timeout
        self.phase: AskPhase = phase
        self.handler_exited = handler_exited
        if phase == "queued":
            what = "while queued: the message was removed and never ran"
        elif handler_exited:
            what = "while running: its handler was cancelled and has returned"
        else:
            what = (
                "while running: its handler was cancelled but has not returned "
                "within the grace period (the actor is reported as stuck)"
            )
        super().__init__(f"ask {message_type} to {path} timed out after {timeout:g}s {what}")


class CallCycleError(ActorError):
    """An ask would close a cycle of actors waiting on each other."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(
            "call cycle: "
            + " -> ".join(self.cycle)
            + "; an actor cannot wait on an actor that is waiting on it "
            "(use tell, or reply from outside the handler)"
        )


class ActivationFailed(ActorError):
    """A domain actor failed in its constructor or ``on_start``; queued asks get this."""


class OwnerUnavailable(ActorError):
    """A message for a domain key this node does not own: another node of the store's
    cluster does (or none does, while its lease changes hands). Nothing was run."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        text = f"{path} is owned by another node of the cluster, not this one"
        super().__init__(f"{text}: {detail}" if detail else text)


class RemoteHandlerError(ActorError):
    """The handler of a forwarded ask raised on the node that owns the key: its
    exception's type name and message (the exception itself stayed there)."""

    def __init__(self, path: str, node: str, error_type: str, message: str) -> None:
        self.path = path
        self.node = node
        self.error_type = error_type
        self.error = message
        super().__init__(f"the handler of {path} on node {node} raised {error_type}: {message}")


class ProcessFailed(FiefdomError):
    """A process run with ``check=True`` exited with a non-zero status."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: bytes) -> None:
        self.command = tuple(command)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.decode(errors="replace").strip()[-500:]
        super().__init__(
            f"process {self.command[0]!r} exited with status {returncode}"
            + (f": {tail}" if tail else "")
        )


class SupervisorError(FiefdomError):
    """An error about a supervisor or its children."""


class RestartIntensityExceeded(SupervisorError):
    """A supervisor's children restarted too often; the supervisor gave up and escalated."""

    def __init__(self, path: str, restarts: int, within: float) -> None:
        self.path = path
        super().__init__(
            f"supervisor {path} exceeded its restart intensity "
            f"({restarts} restarts within {within:g}s) and escalated to its parent"
        )


class LifecycleError(FiefdomError, RuntimeError):
    """A component was used out of its lifecycle; the message says how to fix it."""


class ConfigurationError(FiefdomError, ValueError):
    """Invalid configuration; the message names the key and what was expected."""


class StoreError(FiefdomError):
    """A storage operation failed; the driver's error is the ``__cause__``."""


class StoreNotOpen(StoreError, LifecycleError):
    """The store was used before ``open()`` or after ``close()``."""


class StaleOwner(StoreError):
    """A write made on behalf of a key under an ownership epoch that has moved on:
    another node owns the key now. The transaction does not commit."""

    def __init__(self, partition: int, epoch: int, current: object) -> None:
        self.partition = partition
        self.epoch = epoch
        self.current = current
        super().__init__(
            f"partition {partition} is owned under epoch {current} now, not {epoch}: "
            "another node took the key over; this write was refused"
        )


class SchemaMismatch(StoreError):
    """The database schema version differs from the one this code knows."""


class StoreUnavailable(StoreError):
    """The database cannot be reached at the moment (the store retries with backoff)."""


class JobError(FiefdomError):
    """An error about a job kind or a job."""


class UnknownJobKind(JobError):
    """A job kind that is not registered, or has no handler."""


class StaleLease(JobError):
    """An outcome was reported with a fencing token whose lease was taken over."""


class UniqueConflict(JobError):
    """Retrying a job would take back its unique key, which another job now holds.

    ``job_id`` is the job that was to be retried, ``holder_id`` the job holding the
    key (None when it let go of the key before it could be named)."""

    def __init__(self, job_id: int, holder_id: int | None) -> None:
        self.job_id = job_id
        self.holder_id = holder_id
        holder = "another job" if holder_id is None else f"job {holder_id}"
        super().__init__(
            f"job {job_id} was not retried: its unique key is held by {holder}, a "
            "duplicate enqueued since it finished; let that job finish (or cancel it) "
            "and retry again"
        )


class ControlError(FiefdomError):
    """The control channel refused or failed a request.

    ``code`` is the wire error code (``"forbidden"``, ``"not_found"``, ...), and
    ``details`` the structured details the server sent with it."""

    def __init__(self, code: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or {}


class ControlConnectionError(ControlError, ConnectionError):
    """The control channel cannot be reached, or the connection was lost."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class VaultError(FiefdomError):
    """The vault refused or failed an operation; nothing was committed."""


class InvalidName(VaultError, ValueError):
    """A resource name the vault does not allow; the message says what is wrong."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        shown = repr(name)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid resource name {shown}: {reason}")


class TooLarge(VaultError):
    """An upload passed its size limit; it was stopped there and nothing was kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the upload is larger than the limit of {limit} bytes; it was stopped and "
            "nothing was stored"
        )


class QuotaExceeded(VaultError):
    """A new blob does not fit its storage location's quota (the bytes its blobs may
    take, each counted once however many versions share it); nothing was committed."""

    def __init__(self, location: str, quota: int, used: int, size: int) -> None:
        self.location = location
        self.quota = quota
        self.used = used
        self.size = size
        super().__init__(
            f"storage location {location!r} holds {used} of its quota of {quota} bytes; "
            f"{size} more do not fit, so nothing was stored (raise the location's quota, "
            "or delete versions: their blobs stop counting once swept)"
        )


class ChecksumMismatch(VaultError):
    """The bytes received do not hash to the checksum the caller announced."""

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the bytes received have sha256 {actual}, not the {expected} announced; "
            "nothing was stored"
        )


class BadRange(VaultError, ValueError):
    """A byte range that does not fit the version (``size`` is the version's size)."""

    def __init__(self, message: str, size: int) -> None:
        self.size = size
        super().__init__(message)


class NotFound(VaultError, LookupError):
    """No such resource, or no such version of it (deleted ones included)."""


class LocationUnavailable(VaultError, OSError):
    """A storage location cannot be written or read (missing, read-only, full); the
    operating system's error is the ``__cause__``."""


class LocationMismatch(LocationUnavailable):
    """A storage location's folder is not the one the store knows under the
    location's name (its marker file says another location, or it has none while the
    store knows one): reading or writing it would take another folder's blobs for
    missing. ``location`` is the location's name."""

    location: str = ""


class BlobMissing(VaultError):
    """The file of a version's blob is missing from its location (``fsck`` reports and,
    with ``repair``, marks such versions damaged)."""
