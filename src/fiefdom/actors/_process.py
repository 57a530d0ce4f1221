"""Subprocesses owned by the actor that starts them. The process runs in its own
process group; when the handler is cancelled (a deadline, a caller giving up, the
actor stopping) the group is sent SIGTERM, then SIGKILL after a grace period, and
the process is reaped before the cancellation goes on. No child is left behind, not
even when the cancellation comes while the process is still being started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, Process

from .._errors import ProcessFailed
from .._shielded import to_the_end
from ._cell import current_cell


class ProcessResult(msgspec.Struct, frozen=True):
    """What ``run_process`` returns: the exit status and the captured output."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes


async def run_process(
    command: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    grace: float = 2.0,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run ``command`` to completion, owned by the calling actor (if any).

    Raises ProcessFailed when ``check`` and the exit status is not zero. On
    cancellation the process group is terminated, killed after ``grace`` seconds,
    and reaped before the cancellation propagates.
    """
    args = tuple(os.fspath(a) for a in command)
    if not args:
        raise ValueError("run_process needs a command: got an empty sequence")
    cell = current_cell.get()
    process = await _start(
        anyio.open_process(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        ),
        grace,
    )
    if cell is not None:
        cell.processes.add(process.pid)
    try:
        stdout = bytearray()
        stderr = bytearray()
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            assert process.stderr is not None
            tg.start_soon(_collect, process.stdout, stdout)
            tg.start_soon(_collect, process.stderr, stderr)
            if input is not None and process.stdin is not None:
                async with process.stdin:
                    await process.stdin.send(input)
            returncode = await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _terminate(process, grace)
        raise
    finally:
        if cell is not None:
            cell.processes.discard(process.pid)
        with anyio.CancelScope(shield=True):
            await process.aclose()
    result = ProcessResult(args, returncode, bytes(stdout), bytes(stderr))
    if check and returncode != 0:
        raise ProcessFailed(args, returncode, result.stderr)
    return result


async def _start(starting: Coroutine[Any, Any, Process], grace: float) -> Process:
    """Start the process in a task no cancellation reaches. The child exists from the
    fork on, before the start returns: a start cancelled half way would leave it to
    the event loop's own clean-up, which kills the leader but not its group and may
    not wait for it. A caller cancelled meanwhile (through anyio or natively) waits
    for the start to end, terminates and reaps the group, then gets its cancellation."""
    started, cancelled = await to_the_end(starting)
    process = started.result()  # a start that failed (no such command) raises its error
    if cancelled is not None:
        with anyio.CancelScope(shield=True):
            try:
                await _terminate(process, grace)
            finally:
                await process.aclose()
        raise cancelled
    return process


async def _collect(stream: ByteReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into.extend(chunk)


async def _terminate(process: Process, grace: float) -> None:
    # The whole group is signalled even when the leader has already exited: a
    # background child it left behind (``sh -c 'work &'``) still holds our pipes and
    # must not outlive the handler. The group id stays reserved while any member
    # lives, so it cannot name someone else's processes.
    _signal_group(process.pid, signal.SIGTERM)
    if process.returncode is None:
        with anyio.move_on_after(grace):
            await process.wait()
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the process leads its own group (start_new_session)
