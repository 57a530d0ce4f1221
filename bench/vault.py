"""Vault ingest and download, each beside a baseline measured in the same run.

- ``ingest_large``: ``Vault.put`` of one large file (``--size`` MiB, streamed in 1 MiB
  chunks) against ``cp`` of the same file followed by an ``fsync`` of the copy, in
  ``--rounds`` rounds alternating which goes first; medians, every run, and the
  median of the per-round ratios (goal: ratio >= 0.7).
- ``ingest_rss``: how much the process's resident set grew during those uploads
  (``VmHWM`` after it, reset before it through /proc/self/clear_refs, minus ``VmRSS``
  before it; goal: < 64 MiB).
- ``ingest_small``: ``--files`` puts of ``--file-size`` bytes each, one after the
  other, against writing each to a temp file, ``fsync`` and ``rename`` into place.
- ``download``: reading the large version through ``Vault.open`` against reading the
  blob file directly in 1 MiB chunks (both from the page cache). The comparison with
  an HTTP ``FileResponse`` belongs to the vault's HTTP benchmark.

Prints one JSON object per figure, with the baseline and the ratio.

    .venv/bin/python bench/vault.py [--size 256] [--files 2000] [--file-size 4096]
        [--rounds 3] [--backend sqlite|postgres] [--postgres URL] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog

from fiefdom.storage import open_store
from fiefdom.vault import Location, Vault

MIB = 1 << 20
POSTGRES = os.environ.get("FIEFDOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def emit(backend: str, figure: str, **values: Any) -> None:
    print(json.dumps({"bench": "vault", "backend": backend, "figure": figure, **values}))
    sys.stdout.flush()


def status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def make_file(path: Path, size: int) -> None:
    rng = random.Random(1)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(MIB, left)
            f.write(rng.randbytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def read_all(path: Path) -> int:
    total = 0
    with path.open("rb", buffering=0) as f:
        while block := f.read(MIB):
            total += len(block)
    return total


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        while block := await anyio.to_thread.run_sync(f.read, MIB):
            yield block
    finally:
        f.close()


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def cp_fsync(source: Path, target: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    fsync_file(target)
    return time.perf_counter() - start


def bare_small(directory: Path, bodies: list[bytes]) -> float:
    start = time.perf_counter()
    for i, data in enumerate(bodies):
        temp = directory / f"{i}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, directory / f"{i}.bin")
    return time.perf_counter() - start


async def run(args: argparse.Namespace, url: str, work: Path) -> None:
    backend = args.backend
    size = args.size * MIB
    source = work / "source.bin"
    await anyio.to_thread.run_sync(make_file, source, size)
    await anyio.to_thread.run_sync(read_all, source)  # in the page cache for both

    # -- the large file: cp + fsync and the vault, in alternating order per round ----
    store = open_store(url)
    await store.open(migrate=True)
    try:
        vault = Vault(store, Location("bench", work / "location"), grace=0.0)
        copy = work / "copy.bin"
        cp_runs: list[float] = []
        put_runs: list[float] = []
        growth: list[int] = []
        peak_reset = False
        for round_ in range(args.rounds):
            for what in ("cp", "put") if round_ % 2 == 0 else ("put", "cp"):
                if what == "cp":
                    cp_runs.append(await anyio.to_thread.run_sync(cp_fsync, source, copy))
                    await anyio.to_thread.run_sync(copy.unlink)
                    continue
                rss_before = status_kib("VmRSS")
                peak_reset = reset_peak()
                start = time.perf_counter()
                await vault.put("large.bin", file_chunks(source))
                put_runs.append(time.perf_counter() - start)
                growth.append(status_kib("VmHWM") - rss_before)
                if round_ < args.rounds - 1:
                    await vault.delete("large.bin")
                    await vault.sweep_due()
        info = await vault.info("large.bin")
        cp_mbps = sorted(size / MIB / t for t in cp_runs)
        put_mbps = sorted(size / MIB / t for t in put_runs)
        cp_median = statistics.median(cp_mbps)
        put_median = statistics.median(put_mbps)
        ratios = sorted(cp / put for cp, put in zip(cp_runs, put_runs, strict=True))
        emit(
            backend,
            "ingest_large",
            size_mib=args.size,
            rounds=args.rounds,
            vault_mb_per_s=round(put_median, 1),
            baseline="cp + fsync",
            baseline_mb_per_s=round(cp_median, 1),
            ratio=round(statistics.median(ratios), 3),
            ratio_runs=[round(r, 3) for r in ratios],
            vault_runs=[round(v, 1) for v in put_mbps],
            baseline_runs=[round(v, 1) for v in cp_mbps],
            goal=">= 0.7",
        )
        emit(
            backend,
            "ingest_rss",
            size_mib=args.size,
            growth_mib=round(max(growth) / 1024, 1),
            runs_mib=[round(g / 1024, 1) for g in growth],
            measured=(
                "VmHWM after the put minus VmRSS before it (VmHWM reset before the put)"
                if peak_reset
                else "VmHWM of the process minus VmRSS before the put"
            ),
            goal="< 64 MiB",
        )

        # -- download: Vault.open against reading the blob file ------------------------
        blob = vault.locations["bench"].blob_path(info.sha256)
        await anyio.to_thread.run_sync(read_all, blob)
        start = time.perf_counter()
        direct = await anyio.to_thread.run_sync(read_all, blob)
        direct_seconds = time.perf_counter() - start
        start = time.perf_counter()
        got = 0
        async with await vault.open("large.bin") as download:
            async for chunk in download:
                got += len(chunk)
        open_seconds = time.perf_counter() - start
        assert got == direct == size
        emit(
            backend,
            "download",
            size_mib=args.size,
            vault_mb_per_s=round(size / MIB / open_seconds, 1),
            baseline="reading the blob file in 1 MiB chunks",
            baseline_mb_per_s=round(size / MIB / direct_seconds, 1),
            ratio=round(direct_seconds / open_seconds, 3),
            note="HTTP (aiohttp FileResponse) is compared by the HTTP benchmark",
        )
        await vault.delete("large.bin")
        await anyio.to_thread.run_sync(source.unlink)

        # -- small files: bare write + fsync + rename, then the vault ------------------
        rng = random.Random(2)
        bodies = [rng.randbytes(args.file_size) for _ in range(args.files)]
        bare = work / "bare"
        bare.mkdir()
        bare_seconds = await anyio.to_thread.run_sync(bare_small, bare, bodies)
        await anyio.to_thread.run_sync(shutil.rmtree, bare)
        start = time.perf_counter()
        for i, data in enumerate(bodies):
            await vault.put(f"small-{i:06}", one(data))
        put_seconds = time.perf_counter() - start
        emit(
            backend,
            "ingest_small",
            files=args.files,
            file_size=args.file_size,
            vault_files_per_s=round(args.files / put_seconds, 1),
            baseline="write + fsync + rename",
            baseline_files_per_s=round(args.files / bare_seconds, 1),
            ratio=round(bare_seconds / put_seconds, 3),
        )
    finally:
        await store.close()


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fiefdom-vault-bench-", dir=args.dir))
    try:
        if args.backend == "sqlite":
            await run(args, f"sqlite:///{work / 'bench.db'}", work)
        else:
            import asyncpg

            name = f"fiefdom_bench_{uuid.uuid4().hex[:10]}"
            admin = await asyncpg.connect(args.postgres)
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            try:
                await run(args, f"{args.postgres.rsplit('/', 1)[0]}/{name}", work)
            finally:
                admin = await asyncpg.connect(args.postgres)
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await admin.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB of the large file")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the large ingest")
    parser.add_argument("--files", type=int, default=2000, help="how many small files")
    parser.add_argument("--file-size", type=int, default=4096, help="bytes of each small file")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default=POSTGRES)
    parser.add_argument("--dir", default=None, help="where to work (a temp dir is made in it)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(parser.parse_args()))
