"""``fiefdom vault``: put, get, ls, versions, rm, stats and fsck against a running
daemon's vault over HTTP (its address and token found as for every command).

``put`` uploads resumably (tus): the URL of each upload begun is kept in a small
state file (``$XDG_STATE_HOME/fiefdom/uploads.json``, by the daemon's address, the
file's path, size and modification time, and the name), so running the same
``put`` again after an interruption sends only what is missing. A progress bar
(tqdm) is drawn on stderr when it is a terminal."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from tqdm import tqdm

from .._errors import ControlConnectionError, ControlError
from ..vault import (
    ChecksumMismatch,
    InvalidName,
    QuotaExceeded,
    Stored,
    TooLarge,
    VaultClient,
)
from ._common import (
    CommandError,
    cell,
    config_of,
    emit_json,
    run_interruptibly,
    table,
    tls_of,
    token_of,
    unverified,
    url_of,
    when,
)

_AT_VERSION = re.compile(r"^(?P<name>.+)@(?P<version>[0-9]+)$")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    command: Callable[..., argparse.ArgumentParser],
) -> None:
    """Add ``vault`` and its actions to the command line; ``command(parent, name,
    text)`` makes a parser with the global options."""
    vault_text = "store and fetch files in the daemon's vault"
    vault = sub.add_parser("vault", help=vault_text, description=vault_text)
    actions = vault.add_subparsers(dest="vault_command", required=True, metavar="ACTION")

    put = command(
        actions,
        "put",
        "upload files (resumable: run it again to resume); a file the vault refuses (its "
        "name, its size, the quota) is reported and the others go on, exit status 1",
    )
    put.add_argument("files", nargs="+", metavar="FILE", help="the files to upload")
    put.add_argument("--name", help="the resource's name (one FILE only; default: its name)")
    put.set_defaults(func=_run(_put))

    get = command(actions, "get", "download NAME (its latest version) or NAME@N")
    get.add_argument("target", metavar="NAME[@N]", help="a resource, or one of its versions")
    get.add_argument("-o", "--output", help="the file to write (default: NAME; - for stdout)")
    get.set_defaults(func=_run(_get))

    ls = command(actions, "ls", "the resources, by name")
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    ls.add_argument("--after", help="start after this name")
    ls.set_defaults(func=_run(_ls))

    versions = command(actions, "versions", "the versions of NAME")
    versions.add_argument("name", help="a resource's name")
    versions.set_defaults(func=_run(_versions))

    rm = command(actions, "rm", "delete NAME (every version) or NAME@N")
    rm.add_argument("targets", nargs="+", metavar="NAME[@N]", help="resources, or versions of them")
    rm.set_defaults(func=_run(_rm))

    command(actions, "stats", "counts of resources, versions, blobs and bytes").set_defaults(
        func=_run(_stats)
    )

    fsck = command(actions, "fsck", "reconcile the vault's files and rows (admin token)")
    fsck.add_argument(
        "--repair", action="store_true", help="mark versions whose file is missing as damaged"
    )
    fsck.set_defaults(func=_run(_fsck))


Action = Callable[[VaultClient, argparse.Namespace], Awaitable[int]]


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        config = config_of(args)
        url = url_of(args, config)
        token = token_of(args, config)
        secret = str(getattr(token, "secret", token))
        tls = tls_of(args, url)

        async def run() -> int:
            async with VaultClient(url, token=secret, timeout=args.timeout, ssl=tls) as client:
                return await action(client, args)

        try:
            return run_interruptibly(run)
        except ControlConnectionError as exc:
            error = unverified(exc, url, args)
            if error is None:
                raise
            raise error from exc
        except ControlError as exc:
            if exc.code in ("unauthenticated", "forbidden"):
                source = getattr(token, "source", "the token")
                raise CommandError(f"{exc} (the token came from {source})") from exc
            raise

    return command


def _split(target: str) -> tuple[str, int | None]:
    """``NAME@N`` as (NAME, N); a name with no ``@<digits>`` at its end as (NAME, None)."""
    found = _AT_VERSION.match(target)
    if found is None:
        return target, None
    return found["name"], int(found["version"])


# -- progress and resume state ---------------------------------------------------------


class _Progress:
    """A progress bar (tqdm) on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label: str) -> None:
        self._bar: tqdm[Any] | None = None
        self._label = label
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total,
                desc=self._label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not sys.stderr.isatty(),
                file=sys.stderr,
                leave=True,
            )
        self._bar.update(done - self._done)
        self._done = done

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fiefdom" / "uploads.json"


def _load_state() -> dict[str, str]:
    try:
        loaded = json.loads(_state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _save_state(state: dict[str, str]) -> None:
    path = _state_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".new")
        staging.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(staging, path)


def _upload_key(url: str, file: Path, name: str) -> str:
    info = file.stat()
    return f"{url} {file.resolve()} {info.st_size} {info.st_mtime_ns} {name}"


@contextlib.contextmanager
def _remembered(key: str) -> Iterator[tuple[str | None, Callable[[str], None]]]:
    """The upload URL kept for ``key`` (None: none), and how to keep a new one; the
    entry is dropped once the upload has completed."""
    state = _load_state()

    def keep(url: str) -> None:
        state[key] = url
        _save_state(state)

    yield state.get(key), keep
    current = _load_state()
    if current.pop(key, None) is not None:
        _save_state(current)


# -- the actions -----------------------------------------------------------------------


async def _put(client: VaultClient, args: argparse.Namespace) -> int:
    if args.name is not None and len(args.files) != 1:
        raise CommandError("--name names one resource: give one FILE with it")
    stored: list[Stored] = []
    files = [Path(path) for path in args.files]
    for file in files:
        if not await anyio.to_thread.run_sync(os.path.isfile, file):
            raise CommandError(f"{file}: not a file")
    failed = 0
    for file in files:
        name = args.name or file.name
        progress = _Progress(name)
        try:
            with _remembered(_upload_key(client.url, file, name)) as (resume, keep):
                try:
                    result = await client.upload(
                        file, name, resume=resume, created=keep, progress=progress
                    )
                finally:
                    progress.end()
        except (InvalidName, TooLarge, QuotaExceeded, ChecksumMismatch) as exc:
            # This file's own refusal: the others go on (the exit status says it).
            failed += 1
            print(f"{file}: {exc}", file=sys.stderr)
            continue
        stored.append(result)
        if not args.json:
            print(f"{result.resource}@{result.version}  {result.sha256}  {result.size}")
    if args.json:
        emit_json(stored)
    if failed:
        print(f"{failed} of {len(files)} files were not stored", file=sys.stderr)
        return 1
    return 0


async def _get(client: VaultClient, args: argparse.Namespace) -> int:
    name, version = _split(args.target)
    output = args.output or name
    if output == "-":
        data = await client.read(name, version)
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    progress = _Progress(name)
    try:
        result = await client.get(name, output, version, progress=progress)
    finally:
        progress.end()
    if args.json:
        emit_json({**_fields(result), "path": str(output)})
    else:
        print(f"{result.resource}@{result.version}  {result.sha256}  {result.size}  -> {output}")
    return 0


async def _ls(client: VaultClient, args: argparse.Namespace) -> int:
    rows: list[Any] = []
    after = args.after
    while len(rows) < args.limit:
        page = await client.ls(limit=min(1000, args.limit - len(rows)), after=after)
        rows += page.resources
        if page.next is None:
            break
        after = page.next
    if args.json:
        emit_json(rows)
    else:
        table(
            ["name", "versions", "latest", "size", "created"],
            [[r.name, r.versions, r.latest, r.size, when(r.created_at)] for r in rows],
        )
    return 0


async def _versions(client: VaultClient, args: argparse.Namespace) -> int:
    found = await client.versions(args.name)
    if args.json:
        emit_json(found)
    else:
        table(
            ["version", "size", "sha256", "created", "state"],
            [[v.version, v.size, v.sha256, when(v.created_at), v.state] for v in found],
        )
    return 0


async def _rm(client: VaultClient, args: argparse.Namespace) -> int:
    for target in args.targets:
        name, version = _split(target)
        await client.rm(name, version)
        if not args.json:
            print(f"deleted {target}")
    if args.json:
        emit_json({"deleted": args.targets})
    return 0


async def _stats(client: VaultClient, args: argparse.Namespace) -> int:
    counts = await client.stats()
    if args.json:
        emit_json(counts)
    else:
        table(
            ["resources", "versions", "blobs", "bytes", "pending sweeps"],
            [
                [
                    counts.resources,
                    counts.versions,
                    counts.blobs,
                    counts.bytes,
                    counts.pending_sweeps,
                ]
            ],
        )
    return 0


async def _fsck(client: VaultClient, args: argparse.Namespace) -> int:
    report = await client.fsck(repair=args.repair)
    if args.json:
        emit_json(report)
    else:
        missing = sum(len(m.versions) for m in report.missing)
        damaged = f", {cell(report.damaged)} marked damaged" if args.repair else ""
        print(
            f"checked {report.blobs_checked} blobs: {len(report.missing)} missing "
            f"({missing} versions{damaged}), "
            f"{report.orphans_removed} orphan files removed ({report.orphans_kept} too young), "
            f"{report.temp_removed} temp files removed, {report.swept} blobs swept"
        )
        for blob in report.missing:
            names = ", ".join(f"{n}@{v}" for n, v in blob.versions)
            print(f"missing {blob.sha256} in {blob.location}: {names}")
        for path in report.foreign:
            print(f"foreign file left alone: {path}")
    return 0 if report.clean else 1


def _fields(result: Stored) -> dict[str, Any]:
    return {
        "resource": result.resource,
        "version": result.version,
        "sha256": result.sha256,
        "size": result.size,
    }
