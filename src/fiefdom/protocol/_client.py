"""The Python client of the control channel::

    async with fiefdom.connect("ws://127.0.0.1:8765", token=token) as client:
        status = await client.status()
        async with client.subscribe(["jobs"]) as events:
            async for event in events: ...

A daemon serving TLS is reached at ``wss://`` (or ``https://``): its certificate is
verified against the system's trusted CAs, or against ``cafile`` (a PEM file of the
CA that signed it), or as an ``ssl.SSLContext`` of the caller's says::

    fiefdom.connect("wss://daemon.example:8765", token=token, cafile="ca.pem")

Each typed request builds its frame and reads its reply; a typed ``error`` frame
raises ``ControlError``. The connection under it (``_channel.ClientChannel``) routes
replies and events."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from os import PathLike
from ssl import SSLContext
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import msgspec

from .._lifecycle import State
from ..actors import Request
from ..storage import Enqueued, JobInfo, JobState
from ._channel import ClientChannel, EventStream
from ._codec import Encoding
from ._messages import (
    Call,
    CancelJob,
    Drain,
    DrainQueue,
    Dump,
    EnqueueJob,
    GetJob,
    GetStatus,
    ListJobKinds,
    ListJobs,
    ListQueues,
    LogLevel,
    PauseActor,
    PauseQueue,
    Ping,
    PruneJobs,
    ResumeActor,
    ResumeQueue,
    RetryJob,
    RetryJobs,
    Stop,
    StopActor,
    Topic,
)
from ._replies import (
    Ack,
    CallReply,
    DumpReply,
    EnqueueReply,
    JobReply,
    JobsReply,
    KindInfo,
    KindsReply,
    Pong,
    PrunedReply,
    QueueInfo,
    QueuesReply,
    RetriedReply,
    StatusReply,
)

R = TypeVar("R")


# The client's lifecycle is the one every component shares; the old name stays.
ClientState = State


def reply_type_of(message_type: type[Any]) -> Any:
    """The ``R`` of a ``Request[R]`` subclass, also through generic classes between
    them (``class Get(Lookup[int])`` with ``class Lookup(Request[T])``); ``Any`` when
    it cannot be told (a class still generic in ``R``)."""
    found = _reply_type(message_type, {})
    return Any if found is None or isinstance(found, TypeVar) else found


def _reply_type(klass: type[Any], bound: Mapping[Any, Any]) -> Any:
    for base in getattr(klass, "__orig_bases__", ()):
        origin = typing.get_origin(base) or base
        args = tuple(bound.get(arg, arg) for arg in typing.get_args(base))
        if origin is Request:
            return args[0] if args else None
        if isinstance(origin, type) and issubclass(origin, Request):
            params = getattr(origin, "__parameters__", ())
            found = _reply_type(origin, dict(zip(params, args, strict=False)))
            if found is not None:
                return found
    return None


class Client(ClientChannel):
    """A connection to a daemon's control channel. Create it with ``fiefdom.connect``.

    ``url`` is ``ws://host:port`` (``http://`` and a bare ``host:port`` mean the
    same), or ``wss://host:port`` (``https://``) for a daemon that serves TLS. On a
    ``wss://`` URL the daemon's certificate is verified, its host name included:
    against the system's trusted CAs by default, against the CA certificates of the
    PEM file ``cafile``, or as the ``ssl.SSLContext`` given as ``ssl`` says (one of
    the two at most; either one on a ``ws://`` URL is a ValueError, since nothing
    would be encrypted). A ``cafile`` that cannot be read raises ConfigurationError;
    a certificate that fails verification, ``ControlConnectionError`` on start."""

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop("drain" if exc is None else "cancel")

    # -- typed requests ------------------------------------------------------------

    async def ping(self) -> None:
        await self._request(lambda i: Ping(id=i), Pong)

    async def status(self) -> StatusReply:
        return await self._request(lambda i: GetStatus(id=i), StatusReply)

    # A Request is also a Struct, so the overloads overlap by design: the first,
    # more precise one wins for requests.
    @overload
    async def call(  # type: ignore[overload-overlap]
        self,
        target: str,
        message: Request[R],
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> R: ...

    @overload
    async def call(
        self,
        target: str,
        message: msgspec.Struct,
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> None: ...

    async def call(
        self,
        target: str,
        message: msgspec.Struct,
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> Any:
        """Send ``message`` to the exposed actor ``target`` (``key`` for a domain).
        A ``Request[R]`` returns the actor's reply decoded as ``R``; others return None."""
        payload = msgspec.Raw(self.codec.encode(message))
        reply = await self._request(
            lambda i: Call(
                id=i,
                target=target,
                message_type=type(message).__name__,
                message=payload,
                key=key,
                timeout=timeout,
            ),
            CallReply,
        )
        if not isinstance(message, Request):
            return None
        return self.codec.decode_as(reply.result, reply_type_of(type(message)))

    async def call_by_name(
        self,
        target: str,
        message_type: str,
        fields: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> Any:
        """``call`` without the message's class: the message type as the target
        registered it and its fields; returns the reply as plain values (dicts, lists,
        numbers, strings; None for a tell). The reply may take ``timeout`` seconds
        (the actor's deadline) more than the client's usual timeout."""
        payload = msgspec.Raw(self.codec.encode(dict(fields or {})))
        reply = await self._request(
            lambda i: Call(
                id=i,
                target=target,
                message_type=message_type,
                message=payload,
                key=key,
                timeout=timeout,
            ),
            CallReply,
            timeout=self._waiting(timeout),
        )
        return self.codec.decode_as(reply.result, Any)

    async def pause_actor(self, target: str, *, key: str | None = None) -> None:
        """Pause the exposed actor ``target``: it finishes its current message and
        takes no next one until resumed. For a domain, ``key`` pauses one key (also its
        later activations); without one, the whole domain."""
        await self._request(lambda i: PauseActor(id=i, target=target, key=key), Ack)

    async def resume_actor(self, target: str, *, key: str | None = None) -> None:
        """Resume what ``pause_actor`` paused (a whole domain: every key)."""
        await self._request(lambda i: ResumeActor(id=i, target=target, key=key), Ack)

    async def stop_actor(
        self, target: str, *, key: str | None = None, timeout: float | None = None
    ) -> None:
        """Stop the exposed actor ``target`` once it has handled what is queued (paused
        or not) and return when it has stopped; a domain ``key`` is passivated, a whole
        domain has every live activation passivated."""
        await self._request(
            lambda i: StopActor(id=i, target=target, key=key, timeout=timeout),
            Ack,
            timeout=self._waiting(timeout),
        )

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[JobInfo]:
        """Jobs matching the filters, by id, starting after ``after_id`` (at most
        ``limit``, up to 10000), as the store's ``list_jobs`` returns them (with
        ``newest_first``, ids going down from below ``after_id``)."""
        page = await self.jobs_page(
            queue=queue,
            state=state,
            kind=kind,
            after_id=after_id,
            limit=limit,
            key=key,
            since=since,
            newest_first=newest_first,
        )
        return page.jobs

    async def jobs_page(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
        count: bool = False,
    ) -> JobsReply:
        """``list_jobs`` as the reply it came in: with ``count``, its ``total`` is how
        many jobs the filters match in all pages (counted up to ``total_cap``)."""
        at = None if since is None else since.timestamp()
        return await self._request(
            lambda i: ListJobs(
                id=i,
                queue=queue,
                state=state,
                kind=kind,
                after_id=after_id,
                limit=limit,
                key=key,
                since=at,
                newest_first=newest_first,
                count=count,
            ),
            JobsReply,
        )

    async def get_job(self, job_id: int) -> JobInfo:
        """One job; ``NotFound`` when there is none."""
        return (await self._request(lambda i: GetJob(id=i, job_id=job_id), JobReply)).job

    # The name get_job had before; kept while callers move to get_job.
    job = get_job

    async def enqueue(
        self,
        kind: str,
        args: msgspec.Struct | Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
    ) -> Enqueued:
        """Enqueue a job of ``kind`` (registered in the daemon) with these arguments;
        returns what the store's ``enqueue`` does (``duplicate`` when a unique job
        like it exists: ``id`` is that job's)."""
        payload = msgspec.Raw(self.codec.encode(args if args is not None else {}))
        reply = await self._request(
            lambda i: EnqueueJob(
                id=i, kind=kind, args=payload, queue=queue, priority=priority, delay=delay
            ),
            EnqueueReply,
        )
        return reply.enqueued

    async def retry_job(self, job_id: int, *, force: bool = False) -> JobInfo:
        """Make a discarded or cancelled job available again (a completed one only with
        ``force``: it runs a second time); returns it."""
        return (await self.job_action("retry", job_id, force=force))[0]

    async def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a job (a running one is stopped by its engine); returns it."""
        return (await self.job_action("cancel", job_id))[0]

    async def job_action(
        self, action: Literal["retry", "cancel"], job_id: int, *, force: bool = False
    ) -> tuple[JobInfo, JobState | None]:
        """Retry or cancel a job; returns it as it is now and the state it was in
        before (None from a daemon older than that field)."""
        reply = await self._request(
            lambda i: (
                RetryJob(id=i, job_id=job_id, force=force)
                if action == "retry"
                else CancelJob(id=i, job_id=job_id)
            ),
            JobReply,
        )
        return reply.job, reply.previous

    async def job_kinds(self) -> list[KindInfo]:
        """The job kinds registered in the daemon, with their options."""
        return (await self._request(lambda i: ListJobKinds(id=i), KindsReply)).kinds

    async def retry_jobs(
        self,
        state: JobState,
        *,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = 100_000,
        force: bool = False,
    ) -> tuple[int, int]:
        """Retry every job in ``state`` (discarded, cancelled; completed with
        ``force``) of ``queue`` and ``kind``, at most ``limit``, in one transaction;
        returns how many were retried and how many skipped (a duplicate holds their
        unique key)."""
        reply = await self._request(
            lambda i: RetryJobs(
                id=i, state=state, queue=queue, kind=kind, limit=limit, force=force
            ),
            RetriedReply,
        )
        return reply.retried, reply.skipped

    async def prune_jobs(
        self,
        older_than: float,
        *,
        states: Sequence[JobState] | None = None,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = 100_000,
    ) -> tuple[int, bool]:
        """Delete final jobs (``states``, by default every final one) that finished
        more than ``older_than`` seconds ago; returns how many were deleted and
        whether ``limit`` was reached (more may be left)."""
        chosen = list(states) if states is not None else None
        reply = await self._request(
            lambda i: (
                PruneJobs(id=i, older_than=older_than, queue=queue, kind=kind, limit=limit)
                if chosen is None
                else PruneJobs(
                    id=i, older_than=older_than, states=chosen, queue=queue, kind=kind, limit=limit
                )
            ),
            PrunedReply,
        )
        return reply.deleted, reply.more

    async def queues(self) -> list[QueueInfo]:
        """Every queue: paused or not, and its jobs counted by state."""
        return (await self._request(lambda i: ListQueues(id=i), QueuesReply)).queues

    async def pause(self, queue: str) -> None:
        """Stop claiming from ``queue``, for every daemon on the database."""
        await self._request(lambda i: PauseQueue(id=i, queue=queue), Ack)

    async def resume(self, queue: str) -> None:
        """Claim from ``queue`` again."""
        await self._request(lambda i: ResumeQueue(id=i, queue=queue), Ack)

    async def drain_queue(self, queue: str, *, timeout: float | None = None) -> None:
        await self._request(
            lambda i: DrainQueue(id=i, queue=queue, timeout=timeout),
            Ack,
            timeout=self._waiting(timeout),
        )

    async def drain(self, *, timeout: float | None = None) -> None:
        """Drain the daemon: no new jobs are claimed and running ones finish (within
        the daemon's shutdown deadline); returns once they have, or after ``timeout``."""
        await self._request(
            lambda i: Drain(id=i, timeout=timeout), Ack, timeout=self._waiting(timeout)
        )

    async def stop_daemon(self, mode: Literal["drain", "cancel"] = "drain") -> None:
        """Ask the daemon to stop (as a SIGTERM would, or a second one with
        ``cancel``); returns once it has accepted. ``stop()`` closes this client."""
        await self._request(lambda i: Stop(id=i, mode=mode), Ack)

    async def dump(self) -> DumpReply:
        return await self._request(lambda i: Dump(id=i), DumpReply)

    def subscribe(self, topics: Sequence[Topic], *, level: LogLevel = "info") -> EventStream:
        """Events of ``topics`` (``"jobs"``, ``"actors"``, ``"logs"`` at or above ``level``)."""
        return EventStream(self, topics, level)


def connect(
    url: str,
    *,
    token: str | None,
    encoding: Encoding | Literal["json", "msgpack"] = Encoding.JSON,
    timeout: float = 30.0,
    ssl: SSLContext | None = None,
    cafile: str | PathLike[str] | None = None,
) -> Client:
    """A client of the daemon at ``url`` (``ws://host:port``, ``http://host:port``
    or ``host:port``; ``wss://`` or ``https://`` for TLS, verified against ``cafile``
    or by ``ssl`` when given, see ``Client``); use it as ``async with
    fiefdom.connect(url, token=...) as c``."""
    return Client(url, token=token, encoding=encoding, timeout=timeout, ssl=ssl, cafile=cafile)
