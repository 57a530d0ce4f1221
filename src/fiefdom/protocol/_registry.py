"""What the control channel can reach: hosted actors and domains exposed by name,
each with the message types a remote caller may send, and the daemon-side
interface (``ControlHost``) the server drives."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import msgspec

from .._errors import ControlError
from ..actors import ActorRef, Cell, CellRef, Domain
from ..storage import Enqueued, Job, JobInfo, JobState
from ..supervisors import ActorSystem
from ._hub import EventHub
from ._messages import ErrorCode
from ._replies import ClusterInfo, QueueInfo, TargetInfo


class NotFound(ControlError):
    """What a request names does not exist: a target, a message type, a job or a
    subscription (the ``not_found`` error). The server answers it as such, and the
    client raises it for a ``not_found`` reply. ``details`` may list what exists."""

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(ErrorCode.NOT_FOUND, message, details)


@dataclass(frozen=True, slots=True)
class Target:
    """An exposed actor or domain and the message types it accepts from the wire."""

    name: str
    ref: ActorRef[Any] | None
    domain: Domain[Any, Any] | None
    messages: Mapping[str, type[msgspec.Struct]]
    # The actor's cell, for a spawned actor's ref: a call to it is started without
    # a task (see _requests.start_call).
    cell: Cell[Any] | None = None

    @property
    def kind(self) -> Literal["actor", "domain"]:
        return "actor" if self.ref is not None else "domain"

    def info(self) -> TargetInfo:
        return TargetInfo(
            name=self.name, kind=self.kind, messages=sorted(self.messages), paused=self.paused
        )

    def message_type(self, name: str) -> type[msgspec.Struct]:
        """The message type registered as ``name``; ``NotFound`` (listing them) if none."""
        message_type = self.messages.get(name)
        if message_type is None:
            raise NotFound(
                f"{self.name!r} accepts no message type {name!r}", {"known": sorted(self.messages)}
            )
        return message_type

    @property
    def paused(self) -> bool:
        """Whether the actor, or the whole domain, is paused."""
        if self.domain is not None:
            return self.domain.is_paused()
        assert self.ref is not None
        return self.ref.paused


class Registry:
    """Names under which actors and domains are callable over the control channel."""

    def __init__(self) -> None:
        self._targets: dict[str, Target] = {}
        # The target exposed as a name, or None: the dict's own method, without a
        # Python call around it (every call to an actor looks its target up).
        self.get: Callable[[str], Target | None] = self._targets.get

    def expose(
        self,
        name: str,
        target: ActorRef[Any] | Domain[Any, Any],
        messages: Iterable[type[msgspec.Struct]],
    ) -> None:
        """Make ``target`` callable as ``name`` with these message types (named by
        their class name on the wire). A ``Request`` type is asked, others told."""
        if name in self._targets:
            raise ValueError(f"a target named {name!r} is already exposed")
        by_name: dict[str, type[msgspec.Struct]] = {}
        for message_type in messages:
            if not (isinstance(message_type, type) and issubclass(message_type, msgspec.Struct)):
                raise TypeError(
                    f"expose({name!r}): {message_type!r} is not a msgspec.Struct subclass; "
                    "only Struct messages can be decoded from the wire"
                )
            by_name[message_type.__name__] = message_type
        if isinstance(target, Domain):
            self._targets[name] = Target(name, None, target, by_name)
        else:
            cell = target._cell() if isinstance(target, CellRef) else None
            self._targets[name] = Target(name, target, None, by_name, cell)

    def target(self, name: str) -> Target:
        """The target exposed as ``name``; ``NotFound`` (listing the known ones) if none."""
        target = self._targets.get(name)
        if target is None:
            raise NotFound(
                f"no exposed actor or domain named {name!r}", {"known": sorted(self._targets)}
            )
        return target

    def targets(self) -> Sequence[Target]:
        return list(self._targets.values())


class JobService(Protocol):
    """The job operations the control channel offers, backed by the job engine, with
    the store's names and types. A job that does not exist raises ``NotFound``, a
    kind that is not registered ``UnknownJobKind``, a refused operation ``JobError``."""

    def job_kind(self, kind: str) -> type[Job]:
        """The registered Struct of job kind ``kind`` (its arguments are decoded into it)."""
        ...

    async def list_jobs(
        self,
        *,
        queue: str | None,
        state: JobState | None,
        kind: str | None,
        after_id: int,
        limit: int,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[JobInfo]: ...

    async def count_listed(
        self,
        *,
        queue: str | None,
        state: JobState | None,
        kind: str | None,
        key: str | None,
        since: datetime | None,
    ) -> tuple[int, int]:
        """How many jobs these filters match, counted up to a cap; and the cap."""
        ...

    async def get_job(self, job_id: int) -> JobInfo: ...

    async def enqueue(
        self,
        job: Job,
        *,
        queue: str | None,
        priority: int | None,
        delay: float | None,
    ) -> Enqueued: ...

    async def retry_job(self, job_id: int, *, force: bool = False) -> JobInfo:
        """Retry a discarded or cancelled job; a completed one only with ``force``."""
        ...

    async def cancel_job(self, job_id: int) -> JobInfo: ...

    def kinds(self) -> list[type[Job]]:
        """The registered job kinds."""
        ...

    async def retry_jobs(
        self, *, state: JobState, queue: str | None, kind: str | None, limit: int, force: bool
    ) -> tuple[int, int]:
        """Retry the jobs in ``state``; how many were retried and skipped."""
        ...

    async def prune_jobs(
        self,
        *,
        older_than: float,
        states: Sequence[JobState],
        queue: str | None,
        kind: str | None,
        limit: int,
    ) -> int:
        """Delete old final jobs; how many were deleted."""
        ...

    async def queues(self) -> list[QueueInfo]: ...

    def cluster(self) -> ClusterInfo | None:
        """The engine's cluster membership, or None (it serves no domain)."""
        ...

    async def pause(self, queue: str) -> None: ...

    async def resume(self, queue: str) -> None: ...

    async def drain(self, queue: str | None, timeout: float | None) -> None:
        """Pause ``queue`` and wait until none of its jobs runs; ``TimeoutError``
        after ``timeout`` seconds."""
        ...


class ControlHost(Protocol):
    """What the control server needs from the daemon that runs it."""

    name: str
    loop_name: str
    started_at: float  # time.time() at start
    system: ActorSystem
    registry: Registry
    hub: EventHub

    @property
    def jobs(self) -> JobService | None: ...

    @property
    def draining(self) -> bool: ...

    async def readiness(self) -> dict[str, bool]:
        """Named checks; the daemon is ready when all are true."""
        ...

    def request_stop(self, mode: Literal["drain", "cancel"]) -> None: ...

    async def drain(self, timeout: float | None) -> None: ...

    async def dump(self) -> tuple[str, int]:
        """Write the flight recorder; returns the file and how many events it holds."""
        ...
