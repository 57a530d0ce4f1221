"""What the control channel can reach: hosted actors and domains exposed by name,
each with the message types a remote caller may send, and the daemon-side
interface (``ControlHost``) the server drives."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from ..actors import ActorRef, Domain, Request
from ..supervisors import ActorSystem
from ._hub import EventHub
from ._messages import JobInfo, QueueInfo, TargetInfo


@dataclass(frozen=True, slots=True)
class Target:
    """An exposed actor or domain and the message types it accepts from the wire."""

    name: str
    ref: ActorRef[Any] | None
    domain: Domain[Any, Any] | None
    messages: Mapping[str, type[msgspec.Struct]]

    @property
    def kind(self) -> Literal["actor", "domain"]:
        return "actor" if self.ref is not None else "domain"

    def info(self) -> TargetInfo:
        return TargetInfo(
            name=self.name, kind=self.kind, messages=sorted(self.messages), paused=self.paused
        )

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
            self._targets[name] = Target(name, target, None, by_name)

    def get(self, name: str) -> Target | None:
        return self._targets.get(name)

    def targets(self) -> Sequence[Target]:
        return list(self._targets.values())


def is_request(message_type: type[msgspec.Struct]) -> bool:
    return issubclass(message_type, Request)


class JobService(Protocol):
    """The job operations the control channel offers, backed by the job engine.
    Lookups of a missing job raise ``LookupError``; refused operations ``JobError``."""

    async def list_jobs(
        self, *, queue: str | None, state: str | None, kind: str | None, limit: int
    ) -> list[JobInfo]: ...

    async def get_job(self, job_id: int) -> JobInfo: ...

    async def enqueue(
        self,
        kind: str,
        args: Mapping[str, Any],
        *,
        queue: str | None,
        priority: int | None,
        delay: float | None,
    ) -> JobInfo: ...

    async def retry(self, job_id: int) -> JobInfo: ...

    async def cancel(self, job_id: int) -> JobInfo: ...

    async def queues(self) -> list[QueueInfo]: ...

    async def pause(self, queue: str) -> None: ...

    async def resume(self, queue: str) -> None: ...

    async def drain(self, queue: str | None, timeout: float | None) -> None: ...


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
