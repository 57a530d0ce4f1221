"""Transforms on both dialects, with real images (Pillow), real subprocesses and real
jobs run in the resource's actor: a transform reads a version and writes the next
version with its own hash, in the source's storage location (GUARANTEES 000/4a,
000/4b); a cancelled command is killed and reaped and commits nothing; a version that
does not exist is a typed error."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image
from vault_helpers import chunks, files_under, wait_until

from fiefdom import ActorSystem, ConfigurationError, JobEngine, JobState
from fiefdom.storage import Store
from fiefdom.vault import (
    VAULT_DOMAIN,
    Command,
    Location,
    NotFound,
    Thumbnail,
    Transforms,
    Vault,
)
from fiefdom.vault._transforms import DERIVED_FROM, DERIVED_SHA256, TRANSFORM

UPPER = ["sh", "-c", 'tr a-z A-Z < "$IN" > "$OUT"']


def png(width: int, height: int, seed: int = 3) -> bytes:
    """A real PNG of random pixels."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@contextlib.asynccontextmanager
async def running(
    store: Store, tmp_path: Path, transforms: dict[str, Thumbnail | Command]
) -> AsyncIterator[tuple[Vault, Transforms, JobEngine]]:
    """A vault with two locations run in its actors, its transforms, and an engine
    running their jobs (started)."""
    locations = [Location("main", tmp_path / "main"), Location("other", tmp_path / "other")]
    async with ActorSystem(name="transforms") as system:
        vault = Vault(store, locations, system=system)
        assert vault.domain is not None
        configured = Transforms(
            vault, transforms, workdir=tmp_path / "work", progress_interval=0.05
        )
        engine = JobEngine(
            store,
            queues={"fiefdom": 2},
            domains={VAULT_DOMAIN: vault.domain},
            poll_interval=0.02,
            retention=None,
        )
        vault.register(engine)
        configured.register(engine)
        async with engine:
            yield vault, configured, engine


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie not yet reaped counts)."""
    return Path(f"/proc/{pid}").exists()


async def job_state(store: Store, job_id: int) -> JobState:
    info = await store.get_job(job_id)
    assert info is not None
    return info.state


async def reaches(store: Store, job_id: int, state: JobState) -> None:
    async def check() -> bool:
        return await job_state(store, job_id) == state

    await wait_until(check, what=f"job {job_id} to be {state}")


async def test_a_thumbnail_job_writes_a_smaller_image_as_the_next_version_in_its_location(
    store: Store, tmp_path: Path
) -> None:
    """A 640x480 PNG in the second location, transformed by a job: version 2 is a PNG
    that fits 64x64 with the aspect kept, with its own sha256, stored in the same
    (non-default) location as its source, and the resource's metadata says what it was
    derived from (GUARANTEES 000/4a, 000/4b)."""
    data = png(640, 480)
    async with running(store, tmp_path, {"thumb": Thumbnail(64, 64)}) as (vault, tf, _):
        source = await vault.put(
            "photo.png", chunks(data), location="other", metadata={"owner": "ana"}
        )
        job_id = await tf.enqueue("photo.png", 1, "thumb")
        await reaches(store, job_id, JobState.COMPLETED)
        versions = await vault.versions("photo.png")
        assert [v.version for v in versions] == [1, 2]
        derived = versions[1]
        async with await vault.open("photo.png", 2) as download:
            thumb = await download.read()
        page = await vault.list()
    assert derived.sha256 == hashlib.sha256(thumb).hexdigest() != source.sha256
    assert derived.location == "other"
    assert derived.size == len(thumb) < len(data)
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.format == "PNG"
        assert image.size == (64, 48)
    assert (tmp_path / "other" / "blobs" / derived.sha256[:2] / derived.sha256[2:4]).is_dir()
    assert not (tmp_path / "main" / "blobs").exists() or files_under(tmp_path / "main") == []
    [resource] = page.resources
    assert resource.metadata == {
        "owner": "ana",
        DERIVED_FROM: "1",
        TRANSFORM: "thumb",
        DERIVED_SHA256: derived.sha256,
    }
    assert files_under(tmp_path / "work") == []


async def test_a_command_transform_runs_a_real_subprocess_on_the_version(
    store: Store, tmp_path: Path
) -> None:
    """``tr a-z A-Z`` reads $IN and writes $OUT: version 2 holds exactly the uppercased
    bytes of version 1, with their hash; applying it again to version 1 finds its result
    already the latest version and commits nothing new."""
    text = b"hello, vault: a transform writes a new version\n" * 1000
    async with running(store, tmp_path, {"upper": Command(UPPER)}) as (vault, tf, _):
        await vault.put("notes.txt", chunks(text, 7000))
        made = await tf.apply("notes.txt", 1, "upper")
        again = await tf.apply("notes.txt", 1, "upper")
        async with await vault.open("notes.txt") as download:
            latest = await download.read()
        versions = await vault.versions("notes.txt")
    assert latest == text.upper()
    assert (made.version, made.sha256) == (2, hashlib.sha256(text.upper()).hexdigest())
    assert again == made
    assert [v.version for v in versions] == [1, 2]
    assert files_under(tmp_path / "main" / "tmp") == []


async def test_cancelling_a_long_command_transform_kills_and_reaps_it_and_commits_nothing(
    store: Store, tmp_path: Path
) -> None:
    """A transform running ``sleep 60`` reports progress while it runs; cancelling its
    job ends the job cancelled, the child is gone from /proc (killed and reaped), no
    version is added, and no work or temp file is left."""
    pidfile = tmp_path / "child.pid"
    slow = Command(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], grace=0.5, poll=0.05)
    async with running(store, tmp_path, {"slow": slow}) as (vault, tf, engine):
        await vault.put("clip.raw", chunks(b"raw bytes" * 100))
        job_id = await tf.enqueue("clip.raw", 1, "slow")

        async def sleeping() -> bool:
            return pidfile.exists() and pidfile.read_text().strip().isdigit()

        await wait_until(sleeping, what="the transform's command to start")
        pid = int(pidfile.read_text())
        assert alive(pid)

        async def reported() -> bool:
            return any(p.job_id == job_id and p.phase == "run" for p in tf.progress())

        await wait_until(reported, what="the transform to report its progress")
        [progress] = tf.progress()
        assert (progress.resource, progress.version, progress.transform) == ("clip.raw", 1, "slow")

        await engine.cancel_job(job_id)
        await reaches(store, job_id, JobState.CANCELLED)
        assert not alive(pid), "the command outlived its cancelled job"
        assert tf.progress() == []
        assert [v.version for v in await vault.versions("clip.raw")] == [1]
    assert files_under(tmp_path / "work") == []
    assert files_under(tmp_path / "main" / "tmp") == []


async def test_a_transform_of_a_missing_version_fails_with_not_found(
    store: Store, tmp_path: Path
) -> None:
    """``apply`` of a version that does not exist raises NotFound; its job is discarded
    (not retried) naming NotFound; a source that is no image is discarded naming why;
    an unknown transform is refused before anything is enqueued; nothing is committed."""
    async with running(store, tmp_path, {"thumb": Thumbnail()}) as (vault, tf, _):
        await vault.put("doc", chunks(b"not an image at all"))
        with pytest.raises(NotFound):
            await tf.apply("doc", 2, "thumb")
        with pytest.raises(NotFound):
            await tf.apply("nothing-here", 1, "thumb")
        with pytest.raises(ConfigurationError, match="no transform named 'rotate'"):
            await tf.enqueue("doc", 1, "rotate")
        missing = await tf.enqueue("doc", 7, "thumb")
        not_image = await tf.enqueue("doc", 1, "thumb")
        await reaches(store, missing, JobState.DISCARDED)
        await reaches(store, not_image, JobState.DISCARDED)
        infos = [await store.get_job(missing), await store.get_job(not_image)]
        assert [v.version for v in await vault.versions("doc")] == [1]
    messages = [info.errors[-1].message for info in infos if info is not None]
    assert messages[0].startswith("NotFound: resource 'doc' has no version 7")
    assert messages[1].startswith("VaultError: not an image Pillow can scale")
    assert [info.attempt for info in infos if info is not None] == [1, 1]


async def test_transforms_refuse_a_vault_without_actors_and_bad_configuration(
    store: Store, tmp_path: Path
) -> None:
    """Transform jobs run in the resource's actor: registering them for a vault without
    an actor system says how to fix it; bad transform names, commands and sizes are
    refused when configured."""
    vault = Vault(store, Location("main", tmp_path / "main"))
    with pytest.raises(ConfigurationError, match="give the Vault an ActorSystem"):
        Transforms(vault, {"upper": Command(UPPER)}).register(JobEngine(store, retention=None))
    with pytest.raises(ConfigurationError, match="1-64 letters"):
        Transforms(vault, {"../up": Command(UPPER)})
    with pytest.raises(ConfigurationError, match="list of str"):
        Command("tr a-z A-Z")
    with pytest.raises(ConfigurationError, match="list of str"):
        Command([])
    with pytest.raises(ConfigurationError, match="positive"):
        Thumbnail(0, 10)
