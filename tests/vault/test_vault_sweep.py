"""Deletes, sweeps and fsck on both dialects, with real files and a real job engine:
mark-then-sweep (GUARANTEES 000/1b, 001/8), a re-upload during the sweep keeps its blob,
and fsck reconciles temp files, missing blob files and orphans (001/1, 001/5)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import anyio
import pytest
from vault_helpers import chunks, files_under, read_only, wait_until

from fiefdom import JobEngine, JobState
from fiefdom.storage import Store
from fiefdom.vault import BlobMissing, Location, SweepBlobs, Vault, _disk
from fiefdom.vault._vault import _Commit

SWEEP = SweepBlobs.options.kind


@pytest.fixture
def location(tmp_path: Path) -> Location:
    return Location("main", tmp_path / "store-a")


async def sweep_jobs(store: Store, state: JobState | None = None) -> int:
    return len(await store.list_jobs(kind=SWEEP, state=state))


async def test_a_delete_marks_rows_and_enqueues_its_sweep_and_files_go_only_after_grace(
    store: Store, location: Location
) -> None:
    """A delete commits a sweep job with it; before the grace period the sweep keeps the
    file (the blob is pending), after it the file and the blob's row go (GUARANTEES
    000/1b: files are removed after the delete commits, by a durable job)."""
    patient = Vault(store, location, grace=3600.0)
    info = await patient.put("doc", chunks(b"bytes to delete"))
    path = location.blob_path(info.sha256)
    await patient.delete("doc")
    [job] = await store.list_jobs(kind=SWEEP)
    assert job.state is JobState.SCHEDULED  # due after the grace period
    assert await patient.sweep_due() == 0
    assert path.exists()
    assert (await patient.stats()).pending_sweeps == 1

    eager = Vault(store, location, grace=0.0)
    assert await eager.sweep_due() == 1
    assert not path.exists()
    stats = await eager.stats()
    assert (stats.blobs, stats.bytes, stats.pending_sweeps) == (0, 0, 0)


async def test_a_reupload_of_deleted_bytes_while_the_sweep_runs_keeps_the_blob(
    store: Store, location: Location
) -> None:
    """With no grace at all and the engine sweeping as fast as it can: 12 rounds of put,
    delete, and an immediate put of the same bytes under another name. Every version
    acknowledged reads back its bytes, and the blob ends referenced and unmarked
    (GUARANTEES 001/8: never sweep a blob referenced again meanwhile)."""
    vault = Vault(store, location, grace=0.0)
    engine = JobEngine(store, queues={"fiefdom": 2}, poll_interval=0.02, retention=None)
    vault.register(engine)
    data = b"the same bytes, again and again" * 1000
    async with engine:
        for i in range(12):
            await vault.put(f"first-{i}", chunks(data, 4000))
            await vault.delete(f"first-{i}")
            await vault.put(f"again-{i}", chunks(data, 4000))

        async def swept() -> bool:
            return await sweep_jobs(store, JobState.COMPLETED) == await sweep_jobs(store)

        await wait_until(swept, what="every sweep job completing")
    for i in range(12):
        async with await vault.open(f"again-{i}") as download:
            assert await download.read() == data
    stats = await vault.stats()
    assert (stats.resources, stats.versions, stats.blobs, stats.pending_sweeps) == (12, 12, 1, 0)
    report = await vault.fsck()
    assert report.missing == []


async def test_a_sweep_between_publish_and_commit_is_undone_by_the_commit(
    store: Store, location: Location
) -> None:
    """The narrowest interleaving, forced: an upload finds the blob file present (so it
    publishes nothing), then a sweep removes that file and its row, then the upload
    commits. The commit sees the file gone under its lock and links it again from its
    own temp file: the acknowledged version has its bytes (GUARANTEES 001/1, 001/8)."""
    vault = Vault(store, location, grace=0.0)
    data = b"raced" * 10_000
    await vault.put("old", chunks(data))
    await vault.delete("old")
    temp = await _disk.receive(location, chunks(data), max_size=None, expected_sha256=None)
    try:
        assert not _disk.publish(location, temp.sha256, temp.path)  # already there
        assert await vault.sweep_due() == 1  # ... and now gone, row and file
        assert not location.blob_path(temp.sha256).exists()
        info = await vault._commit(
            _Commit(
                name="new", location="main", sha256=temp.sha256, size=temp.size, temp=temp.path.name
            )
        )
    finally:
        temp.discard()
    async with await vault.open("new") as download:
        assert await download.read() == data
    assert info.version == 1
    assert files_under(location.tmp) == []


async def test_a_failing_sweep_is_retried_with_backoff_until_it_succeeds(
    store: Store, location: Location
) -> None:
    """A sweep that cannot remove the file (its directory refuses changes) fails, keeps
    the blob's row (its transaction rolls back) and is retried by the engine with
    backoff; once the directory is writable again the next attempt removes it
    (GUARANTEES 001/8)."""
    vault = Vault(store, location, grace=0.0)
    info = await vault.put("doc", chunks(b"stuck for a while"))
    path = location.blob_path(info.sha256)
    engine = JobEngine(store, queues={"fiefdom": 1}, poll_interval=0.02, retention=None)
    vault.register(engine)
    async with engine:
        with read_only(path.parent):
            await vault.delete("doc")

            async def failed_once() -> bool:
                jobs = await store.list_jobs(kind=SWEEP)
                return bool(jobs) and bool(jobs[0].errors)

            await wait_until(failed_once, what="the sweep failing")
            [job] = await store.list_jobs(kind=SWEEP)
            assert job.state in (JobState.RETRYABLE, JobState.AVAILABLE, JobState.RUNNING)
            assert "LocationUnavailable" in job.errors[0].type
            assert path.exists()
            assert (await vault.stats()).pending_sweeps == 1

        async def completed() -> bool:
            return await sweep_jobs(store, JobState.COMPLETED) == 1

        await wait_until(completed, what="the retried sweep completing")
    assert not path.exists()
    assert (await vault.stats()).blobs == 0


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_fsck_finds_missing_files_orphans_and_temp_files_and_repairs(
    store: Store, location: Location
) -> None:
    """fsck reports a version whose blob file was deleted behind the vault's back (and with
    repair marks it damaged: reading it is BlobMissing, and uploading the same bytes
    again heals it); removes a blob file without a row and a temp file once older than
    the grace period, keeps younger ones; leaves foreign files alone and names them
    (GUARANTEES 001/1, 001/5)."""
    vault = Vault(store, location, grace=600.0)
    lost = await vault.put("lost", chunks(b"these bytes will vanish"))
    kept = await vault.put("kept", chunks(b"these stay"))
    location.blob_path(lost.sha256).unlink()

    def orphan(content: bytes) -> Path:
        sha = hashlib.sha256(content).hexdigest()
        path = location.blob_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    old_orphan, young_orphan = orphan(b"old orphan"), orphan(b"young orphan")
    age(old_orphan, 3600)
    old_temp, young_temp = location.tmp / "old.part", location.tmp / "young.part"
    old_temp.write_bytes(b"half an upload")
    young_temp.write_bytes(b"an upload going on")
    age(old_temp, 3600)
    (location.blobs / "README").write_text("not a blob")

    report = await vault.fsck()
    assert report.blobs_checked == 2
    assert [(m.sha256, m.versions) for m in report.missing] == [(lost.sha256, [("lost", 1)])]
    assert report.damaged == 0
    assert (report.orphans_removed, report.orphans_kept) == (1, 1)
    assert (report.temp_removed, report.temp_kept) == (1, 1)
    assert report.foreign == ["blobs/README"]
    assert not old_orphan.exists()
    assert young_orphan.exists()
    assert not old_temp.exists()
    assert young_temp.exists()
    assert [v.state for v in await vault.versions("lost")] == ["live"]  # only reported

    report = await vault.fsck(repair=True)
    assert report.damaged == 1
    assert [v.state for v in await vault.versions("lost")] == ["damaged"]
    with pytest.raises(BlobMissing, match="run fsck"):
        await vault.open("lost")
    async with await vault.open("kept") as download:
        assert await download.read() == b"these stay"
    assert kept.version == 1

    await vault.put("again", chunks(b"these bytes will vanish"))
    assert [v.state for v in await vault.versions("lost")] == ["live"]
    async with await vault.open("lost") as download:
        assert await download.read() == b"these bytes will vanish"
    assert (await vault.fsck()).missing == []


async def test_fsck_while_uploads_go_on_loses_nothing(store: Store, location: Location) -> None:
    """fsck with no grace period, run again and again while uploads of a few repeated
    bodies go on, never removes the file of a version that was acknowledged."""
    vault = Vault(store, location, grace=0.0)
    bodies = [bytes([i]) * 20_000 for i in range(3)]
    acknowledged: list[tuple[str, bytes]] = []
    done = anyio.Event()

    async def upload() -> None:
        for i in range(30):
            data = bodies[i % 3]
            await vault.put(f"doc-{i}", chunks(data, 5000))
            acknowledged.append((f"doc-{i}", data))
            if i % 4 == 0:
                await vault.delete(f"doc-{i}")
                acknowledged.pop()
        done.set()

    async def check() -> None:
        while not done.is_set():
            await vault.fsck()

    async with anyio.create_task_group() as tg:
        tg.start_soon(upload)
        tg.start_soon(check)
    for name, data in acknowledged:
        async with await vault.open(name) as download:
            assert await download.read() == data
    assert (await vault.fsck()).missing == []


async def test_a_blob_in_a_location_a_vault_lacks_is_left_to_one_that_has_it(
    store: Store, tmp_path: Path
) -> None:
    """Two vaults on one store: ``both`` has locations ``main`` and ``old``, ``main_only``
    only ``main``. A version stored in ``old`` is deleted; the sweep job, run by an
    engine of ``main_only``, completes without touching it (the blob stays marked,
    its file in place), and ``main_only``'s sweep_due and fsck do not fail on it. Then
    ``both``'s sweep_due removes it: row and file."""
    main, old = Location("main", tmp_path / "main"), Location("old", tmp_path / "old")
    both = Vault(store, [old, main], grace=0.0)
    main_only = Vault(store, main, grace=0.0)
    info = await both.put("doc", chunks(b"kept in old"))
    assert info.location == "old"
    blob = old.blob_path(info.sha256)
    engine = JobEngine(store, queues={"fiefdom": 1}, poll_interval=0.02, retention=None)
    main_only.register(engine)
    async with engine:
        await both.delete("doc")

        async def swept_by_the_job() -> bool:
            return await sweep_jobs(store, JobState.COMPLETED) == 1

        await wait_until(swept_by_the_job, what="the sweep job completed")
    assert blob.exists()
    assert (await main_only.stats()).pending_sweeps == 1
    assert await main_only.sweep_due() == 0
    assert (await main_only.fsck()).swept == 0
    assert blob.exists()
    assert await both.sweep_due() == 1
    assert not blob.exists()
    assert (await both.stats()).pending_sweeps == 0
