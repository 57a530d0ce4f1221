"""Transforms: a job that reads one version of a resource and writes the result as a
new version of that resource, with its own hash, in the source version's storage
location (GUARANTEES 000/4a, 000/4b). The job kind is keyed by the resource's name
in the vault's domain: the cluster gives each resource one owner and the engine
runs the job inside the resource's actor, serialised with its commits and deletes.

The source is copied out of the vault (its hash checked), the transform writes its
output file in a private work directory, and the output goes in through ``put``'s
own path (streamed to a temp file, hashed, fsynced, published, committed with the
next gapless number). ``Thumbnail`` scales an image with Pillow; ``Command`` runs
an owned subprocess (``run_process``: cancelled with its job, its process group
terminated and reaped). Progress is kept per running transform (``progress()``)
and logged at intervals."""

from __future__ import annotations

import abc
import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import msgspec

from .._errors import (
    BlobMissing,
    ConfigurationError,
    LocationUnavailable,
    NotFound,
    VaultError,
)
from .._log import get_logger
from ..actors import run_process
from ..jobs import Discard, JobContext, JobEngine
from ..storage import Job, JobOptions, Transaction
from ._disk import CHUNK
from ._model import VersionInfo
from ._names import validate_name
from ._vault import VAULT_DOMAIN, Vault

log = get_logger("fiefdom.vault")

_TRANSFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

DERIVED_FROM = "fiefdom.derived_from"
"""Resource metadata key: the version the latest transform of the resource read."""
TRANSFORM = "fiefdom.transform"
"""Resource metadata key: the name of the latest transform of the resource."""
DERIVED_SHA256 = "fiefdom.derived_sha256"
"""Resource metadata key: the sha256 of the version that transform wrote."""

Phase = Literal["read", "run", "ingest"]


class TransformVersion(Job):
    """Transform version ``version`` of resource ``name`` with the transform
    configured as ``transform``; the result becomes the resource's next version.
    Runs in the resource's actor (domain ``VAULT_DOMAIN``, keyed by ``name``)."""

    options = JobOptions(
        kind="fiefdom.vault.transform",
        queue="fiefdom",
        max_attempts=3,
        domain=VAULT_DOMAIN,
        key="name",
    )
    name: str
    version: int
    transform: str


class TransformProgress(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a running transform is: ``phase`` ``read`` (copying the source out of the
    vault), ``run`` (the transform itself) or ``ingest`` (storing the result);
    ``done`` of ``total`` bytes (``total`` None when not known: a command's output
    grows to a size nobody announced); seconds since it started. ``job_id`` is
    None for a transform run with ``Transforms.apply``."""

    job_id: int | None
    resource: str
    version: int
    transform: str
    phase: Phase
    done: int
    total: int | None
    started_at: float
    elapsed: float


class Progress:
    """What a transform reports its progress to: ``update`` as often as convenient;
    it is kept for ``Transforms.progress()`` and logged at most once per interval."""

    def __init__(
        self, job_id: int | None, resource: str, version: int, transform: str, interval: float
    ) -> None:
        self.job_id = job_id
        self.resource = resource
        self.version = version
        self.transform = transform
        self.interval = interval
        self.phase: Phase = "read"
        self.done = 0
        self.total: int | None = None
        self.started_at = time.time()
        self._start = time.monotonic()
        self._logged = self._start

    def update(self, phase: Phase, done: int, total: int | None = None) -> None:
        """The transform is in ``phase`` with ``done`` of ``total`` bytes."""
        self.phase, self.done, self.total = phase, done, total
        now = time.monotonic()
        if now - self._logged >= self.interval:
            self._logged = now
            log.info(
                "transform progress",
                job_id=self.job_id,
                resource=self.resource,
                version=self.version,
                transform=self.transform,
                phase=phase,
                done=done,
                total=total,
                elapsed=round(now - self._start, 1),
            )

    def snapshot(self) -> TransformProgress:
        return TransformProgress(
            job_id=self.job_id,
            resource=self.resource,
            version=self.version,
            transform=self.transform,
            phase=self.phase,
            done=self.done,
            total=self.total,
            started_at=self.started_at,
            elapsed=time.monotonic() - self._start,
        )


class Transform(abc.ABC):
    """A transform: reads the file ``source`` and writes the file ``target`` (both in
    a private work directory removed afterwards), reporting to ``progress``. A
    ``VaultError`` means the source cannot be transformed (the job is discarded,
    not retried); any other error fails the attempt (retried)."""

    @abc.abstractmethod
    async def run(self, source: Path, target: Path, progress: Progress) -> None: ...


class Thumbnail(Transform):
    """An image scaled down (never up) to fit ``width`` x ``height``, its aspect kept,
    with Pillow; written in ``format`` (None: the source's own format). A source
    Pillow cannot read, or one of more than Pillow's pixel limit (a decompression
    bomb), is a ``VaultError``."""

    def __init__(self, width: int = 256, height: int = 256, *, format: str | None = None) -> None:
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise ConfigurationError(
                f"Thumbnail width and height must be positive, got {width}x{height}"
            )
        self.width = width
        self.height = height
        self.format = format

    async def run(self, source: Path, target: Path, progress: Progress) -> None:
        size = await _size(source) or 0
        progress.update("run", 0, size)
        await anyio.to_thread.run_sync(self._scale, source, target)
        progress.update("run", size, size)

    def _scale(self, source: Path, target: Path) -> None:
        import warnings

        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                # Past the pixel limit Pillow only warns; past twice the limit it
                # raises. Both are a bomb here.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(source) as image:
                    fmt = self.format or image.format or "PNG"
                    image.thumbnail((self.width, self.height))
                    scaled: Image.Image = image
                    if fmt.upper() in ("JPEG", "JPG") and image.mode not in ("RGB", "L"):
                        scaled = image.convert("RGB")
                    scaled.save(target, format=fmt)
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise VaultError(f"not an image Pillow can scale: {exc}") from exc
        except Image.DecompressionBombWarning as exc:
            raise VaultError(f"not an image Pillow can scale: {exc}") from exc
        except (SyntaxError, ValueError, KeyError) as exc:
            # What Pillow raises for a truncated or malformed file, or an unknown format.
            raise VaultError(f"not an image Pillow can scale: {exc}") from exc


class Command(Transform):
    """An owned subprocess: ``command`` runs with ``$IN`` (the source file) and
    ``$OUT`` (where it must write the result) in its environment, in the work
    directory, with ``PATH`` and ``env`` and nothing else of this process's
    environment. It is cancelled with its job (its process group gets SIGTERM,
    SIGKILL after ``grace`` seconds, and is reaped); past ``timeout`` seconds the
    same happens and the attempt fails. A non-zero exit is ``ProcessFailed`` (the
    attempt fails and is retried); no output file is a ``VaultError``. Its
    progress is the size of ``$OUT`` so far, looked at every ``poll`` seconds."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        grace: float = 2.0,
        poll: float = 1.0,
    ) -> None:
        if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
            raise ConfigurationError(
                f"Command takes the program and its arguments as a list of str, got {command!r}"
            )
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"Command timeout must be positive seconds, got {timeout}")
        if not (math.isfinite(grace) and grace >= 0):
            raise ConfigurationError(f"Command grace must be finite seconds >= 0, got {grace}")
        if not (math.isfinite(poll) and poll > 0):
            raise ConfigurationError(f"Command poll must be positive seconds, got {poll}")
        self.command = tuple(command)
        self.env = dict(env or {})
        self.timeout = timeout
        self.grace = grace
        self.poll = poll

    async def run(self, source: Path, target: Path, progress: Progress) -> None:
        env = {"PATH": os.environ.get("PATH", os.defpath), **self.env}
        env.update(IN=str(source), OUT=str(target))
        progress.update("run", 0)
        failure: Exception | None = None
        with anyio.fail_after(self.timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, target, progress)
                try:
                    await run_process(self.command, env=env, cwd=source.parent, grace=self.grace)
                except Exception as exc:
                    # Raised as itself, not in the task group's ExceptionGroup (the
                    # watcher never fails); a cancellation goes through untouched.
                    failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        size = await _size(target)
        if size is None:
            raise VaultError(f"command {self.command[0]!r} exited 0 without writing $OUT")
        progress.update("run", size)

    async def _watch(self, target: Path, progress: Progress) -> None:
        while True:
            await anyio.sleep(self.poll)
            progress.update("run", await _size(target) or 0)


class Transforms:
    """The transforms configured for ``vault``, by name (1-64 letters, digits,
    ``_.-``). ``register(engine)`` runs their jobs (``TransformVersion``, queue
    ``fiefdom``); ``enqueue`` adds one; ``apply`` runs one at once.

    A transform runs inside its resource's actor when the vault has an actor
    system (always, for a job): the resource's puts and deletes in this process
    wait for it. Its work directory is made in ``workdir`` (None: the system's
    temp directory) and removed when it ends, cancelled or not. Progress is
    logged at most every ``progress_interval`` seconds."""

    def __init__(
        self,
        vault: Vault,
        transforms: Mapping[str, Transform],
        *,
        workdir: Path | None = None,
        progress_interval: float = 5.0,
    ) -> None:
        for name, transform in transforms.items():
            if not isinstance(name, str) or not _TRANSFORM_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"a transform's name must be 1-64 letters, digits, '_', '.' or '-' "
                    f"(starting with a letter or digit), got {name!r}"
                )
            if not isinstance(transform, Transform):
                raise ConfigurationError(
                    f"transform {name!r} must be a Transform (Thumbnail, Command ...), "
                    f"got {transform!r}"
                )
        if not (math.isfinite(progress_interval) and progress_interval > 0):
            raise ConfigurationError(
                f"progress_interval must be positive seconds, got {progress_interval}"
            )
        self.vault = vault
        self.transforms: Mapping[str, Transform] = dict(transforms)
        self.workdir = workdir
        self.progress_interval = progress_interval
        self._running: dict[int, Progress] = {}

    def register(self, engine: JobEngine) -> None:
        """Run transform jobs on ``engine``. The engine must have the vault's domain:
        ``JobEngine(store, domains={VAULT_DOMAIN: vault.domain})``."""
        if self.vault.domain is None:
            raise ConfigurationError(
                "transform jobs run in the resource's actor: give the Vault an ActorSystem "
                "(Vault(..., system=system)) and the engine its domain "
                "(JobEngine(..., domains={VAULT_DOMAIN: vault.domain}))"
            )
        engine.register(TransformVersion, self._job)

    async def enqueue(
        self, name: str, version: int, transform: str, *, tx: Transaction | None = None
    ) -> int:
        """Enqueue the job transforming version ``version`` of ``name`` with
        ``transform`` (inside ``tx`` when given); returns the job's id."""
        job = self._check(name, version, transform)
        queued = await self.vault.store.enqueue(job, tx=tx)
        assert queued.id is not None
        return queued.id

    async def apply(self, name: str, version: int, transform: str) -> VersionInfo:
        """Transform version ``version`` of ``name`` with ``transform`` now (in the
        resource's actor when the vault has one) and return the new version.
        ``NotFound`` when there is no such version; ``VaultError`` when the transform
        cannot read it."""
        job = self._check(name, version, transform)
        domain = self.vault.domain
        if domain is None:
            return await self._transform(job, None)

        async def run(actor: Any) -> VersionInfo:
            return await self._transform(job, None)

        return await domain.call(job.name, run, timeout=None, name=f"transform:{transform}")

    def progress(self) -> list[TransformProgress]:
        """The transforms running in this process and how far they are."""
        return [p.snapshot() for p in list(self._running.values())]

    # -- running ---------------------------------------------------------------------

    def _check(self, name: str, version: int, transform: str) -> TransformVersion:
        name = validate_name(name)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
            raise NotFound(f"version must be a number from 1, got {version!r}")
        if transform not in self.transforms:
            raise ConfigurationError(
                f"no transform named {transform!r}; configured: "
                + (", ".join(repr(n) for n in self.transforms) or "none")
            )
        return TransformVersion(name=name, version=version, transform=transform)

    async def _job(self, job: TransformVersion, ctx: JobContext[Any]) -> None:
        try:
            self._check(job.name, job.version, job.transform)
            await self._transform(job, ctx.id)
        except LocationUnavailable:
            raise  # a disk that may come back: the attempt fails and is retried
        except (VaultError, ConfigurationError) as exc:
            # No attempt will find another version or make the image readable; the
            # job stays listed and can be retried by hand.
            raise Discard(f"{type(exc).__name__}: {exc}") from exc

    async def _transform(self, job: TransformVersion, job_id: int | None) -> VersionInfo:
        transform = self.transforms[job.transform]
        source = await self.vault.info(job.name, job.version)
        progress = Progress(job_id, job.name, job.version, job.transform, self.progress_interval)
        token = id(progress)
        self._running[token] = progress
        work = await anyio.to_thread.run_sync(self._make_workdir)
        try:
            src = work / "source"
            target = work / "output"
            await self._copy_out(source, src, progress)
            await transform.run(src, target, progress)
            return await self._store(job, source, target, progress)
        finally:
            del self._running[token]
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, work, True)

    def _make_workdir(self) -> Path:
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="fiefdom-transform-", dir=self.workdir))

    async def _copy_out(self, info: VersionInfo, path: Path, progress: Progress) -> None:
        """The source's bytes into ``path``, checked against its hash: the transform
        gets a copy it may do anything with, never the blob file itself."""
        digest = hashlib.sha256()
        done = 0
        progress.update("read", 0, info.size)
        fd = await anyio.to_thread.run_sync(_create, path)
        try:
            async with await self.vault.open(info.resource, info.version) as download:
                async for chunk in download:
                    digest.update(chunk)
                    await anyio.to_thread.run_sync(_write_all, fd, chunk)
                    done += len(chunk)
                    progress.update("read", done, info.size)
        finally:
            os.close(fd)
        if digest.hexdigest() != info.sha256:
            raise BlobMissing(
                f"the file of version {info.version} of {info.resource!r} does not hash to "
                f"its sha256 {info.sha256} (it was damaged on disk); run fsck"
            )

    async def _store(
        self, job: TransformVersion, source: VersionInfo, target: Path, progress: Progress
    ) -> VersionInfo:
        size = await _size(target) or 0
        progress.update("ingest", 0, size)
        sha256 = await anyio.to_thread.run_sync(_hash_file, target)
        latest = await self.vault.info(job.name)
        metadata = await self._metadata(job.name)
        if (
            latest.sha256 == sha256
            and metadata.get(DERIVED_FROM) == str(job.version)
            and metadata.get(TRANSFORM) == job.transform
        ):
            # This transform's result is the latest version already: a retry after
            # its commit (the process died before the job's outcome was written).
            return latest
        metadata.update(
            {DERIVED_FROM: str(job.version), TRANSFORM: job.transform, DERIVED_SHA256: sha256}
        )
        # The transform runs in the resource's actor (or where no actor exists): the
        # commit runs here, fenced as every commit is.
        info = await self.vault._put(
            job.name,
            _read_chunks(target, progress, size),
            expected_sha256=sha256,
            max_size=None,
            location=source.location,
            metadata=metadata,
            in_actor=True,
        )
        log.info(
            "transform committed",
            job_id=progress.job_id,
            resource=job.name,
            source=job.version,
            version=info.version,
            transform=job.transform,
            sha256=info.sha256,
            size=info.size,
        )
        return info

    async def _metadata(self, name: str) -> dict[str, str]:
        cast = "::text" if self.vault.store.backend == "postgres" else ""
        async with self.vault.store.transaction() as tx:
            text = await tx.fetchval(
                f"SELECT metadata{cast} FROM fiefdom_resources "
                "WHERE name = $1 AND deleted_at IS NULL",
                name,
            )
        if text is None:
            raise NotFound(f"no resource named {name!r}")
        return msgspec.json.decode(text, type=dict[str, str])


async def _size(path: Path) -> int | None:
    """The size of the file at ``path``, None if there is none."""

    def size() -> int | None:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    return await anyio.to_thread.run_sync(size)


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


async def _read_chunks(path: Path, progress: Progress, size: int) -> AsyncIterator[bytes]:
    done = 0
    f = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        while block := await anyio.to_thread.run_sync(f.read, CHUNK):
            done += len(block)
            progress.update("ingest", done, size)
            yield block
    finally:
        f.close()
