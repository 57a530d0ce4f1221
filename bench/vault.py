"""Vault ingest and download, each beside a baseline measured in the same run.

- ``ingest_large``: ``Vault.put`` of one large file (``--size`` MiB) against ``cp`` of
  the same file followed by an ``fsync`` of the copy, in ``--rounds`` rounds
  alternating which goes first; every round in order, the medians, and the median of
  the per-round ratios (goal: >= 0.7). The put's source reads the file in 1 MiB chunks
  on the event loop's thread, as an HTTP body arrives (each chunk a new ``bytes``
  copied out of the kernel, no thread hop per chunk); the file is in the page cache
  for both sides.
- ``ingest_rss``: how much the process's resident set grew during those uploads
  (``VmHWM`` after it, reset before it through /proc/self/clear_refs, minus ``VmRSS``
  before it; goal: < 64 MiB).
- ``download``: ``GET /vault/resources/{name}`` of that version, served by a minimal
  aiohttp app mounting ``VaultHttp``'s routes the way the daemon does (without its
  token check and admission middleware), against an aiohttp ``web.FileResponse`` of
  the same blob file on the same server (another process, on the daemon's event loop:
  uvloop when installed, ``--loop`` to choose), both over HTTP on loopback, read by
  the same aiohttp client (a 4 MiB read buffer) in 1 MiB chunks, one warm-up each,
  then ``--rounds`` rounds alternating which goes first, the blob file in the page
  cache (goal: >= 0.9).
- ``ingest_small``: ``--files`` puts of ``--file-size`` bytes each, one after the
  other, against writing each to a temp file, ``fsync`` and ``rename`` into place,
  in ``--rounds`` rounds alternating which goes first (the ratio is reported).

Prints one JSON object per figure, with the baseline and the ratio. The issue's
figures are ``--size 1024 --files 10000``.

    .venv/bin/python bench/vault.py [--size 1024] [--files 1000] [--file-size 4096]
        [--rounds 3] [--backend sqlite|postgres] [--postgres URL] [--dir DIR]
        [--loop auto|asyncio|uvloop] [--figures ingest,download,small]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio.to_thread
import structlog
from aiohttp import web

from fiefdom.storage import open_store
from fiefdom.vault import Location, Vault, VaultHttp, VersionInfo

MIB = 1 << 20
POSTGRES = os.environ.get("FIEFDOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def emit(backend: str, figure: str, **values: Any) -> None:
    print(json.dumps({"bench": "vault", "backend": backend, "figure": figure, **values}))
    sys.stdout.flush()


def rounds_figure(
    size_mb: float, baseline: list[float], vault: list[float], unit: str = "mb_per_s"
) -> dict[str, Any]:
    """Every round in order: the rates and the ratio (the baseline's time over the
    vault's, that is the vault's rate over the baseline's); the medians of each."""
    ratios = [b / v for b, v in zip(baseline, vault, strict=True)]
    return {
        f"vault_{unit}": round(statistics.median(size_mb / t for t in vault), 1),
        f"baseline_{unit}": round(statistics.median(size_mb / t for t in baseline), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_runs": [round(r, 3) for r in ratios],
        "vault_runs": [round(size_mb / t, 1) for t in vault],
        "baseline_runs": [round(size_mb / t, 1) for t in baseline],
    }


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


async def body_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB chunks read on the loop's thread, as a body arrives from a
    socket (the file is in the page cache: a read does not block)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, MIB):
            yield block
            await asyncio.sleep(0)
    finally:
        os.close(fd)


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


def ordered(round_: int) -> tuple[str, str]:
    """Which goes first in a round: the baseline in even rounds, the vault in odd."""
    return ("baseline", "vault") if round_ % 2 == 0 else ("vault", "baseline")


async def run(args: argparse.Namespace, url: str, work: Path) -> None:
    location = Location("bench", work / "location")
    if args.figures & {"ingest", "download"}:
        source = work / "source.bin"
        await anyio.to_thread.run_sync(make_file, source, args.size * MIB)
        await anyio.to_thread.run_sync(read_all, source)  # in the page cache for both
        store = open_store(url)
        await store.open(migrate=True)
        try:
            vault = Vault(store, location, grace=0.0)
            if "ingest" in args.figures:
                info = await ingest_large(args, vault, source, work / "copy.bin")
            else:
                info = await vault.put("large.bin", body_chunks(source))
            await anyio.to_thread.run_sync(source.unlink)
        finally:
            await store.close()
        if "download" in args.figures:
            await http_download(args, url, location, info.sha256)
    if "small" in args.figures:
        await ingest_small(args, url, location, work)


async def ingest_large(
    args: argparse.Namespace, vault: Vault, source: Path, copy: Path
) -> VersionInfo:
    """The large file: cp + fsync and the vault, in alternating order per round; the
    version the last round stored."""
    cp_runs: list[float] = []
    put_runs: list[float] = []
    growth: list[int] = []
    peak_reset = False
    for round_ in range(args.rounds):
        for what in ordered(round_):
            if what == "baseline":
                cp_runs.append(await anyio.to_thread.run_sync(cp_fsync, source, copy))
                await anyio.to_thread.run_sync(copy.unlink)
                continue
            rss_before = status_kib("VmRSS")
            peak_reset = reset_peak()
            start = time.perf_counter()
            await vault.put("large.bin", body_chunks(source))
            put_runs.append(time.perf_counter() - start)
            growth.append(status_kib("VmHWM") - rss_before)
            if round_ < args.rounds - 1:
                await vault.delete("large.bin")
                await vault.sweep_due()
    emit(
        args.backend,
        "ingest_large",
        size_mib=args.size,
        rounds=args.rounds,
        baseline="cp + fsync",
        **rounds_figure(args.size, cp_runs, put_runs),
        goal=">= 0.7",
    )
    emit(
        args.backend,
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
    return await vault.info("large.bin")


async def http_download(
    args: argparse.Namespace, url: str, location: Location, sha256: str
) -> None:
    """VaultHttp's GET against FileResponse of the blob file, over HTTP."""
    blob = location.blob_path(sha256)
    await anyio.to_thread.run_sync(read_all, blob)  # in the page cache for both
    loop_name, vault_runs, file_runs = await http_downloads(args, url, location, sha256)
    emit(
        args.backend,
        "download",
        size_mib=args.size,
        rounds=args.rounds,
        server_loop=loop_name,
        baseline="aiohttp web.FileResponse of the blob file",
        **rounds_figure(args.size, file_runs, vault_runs),
        goal=">= 0.9",
    )


async def ingest_small(args: argparse.Namespace, url: str, location: Location, work: Path) -> None:
    """Small files: bare write + fsync + rename against the vault, alternating."""
    store = open_store(url)
    await store.open(migrate=True)
    try:
        vault = Vault(store, location, grace=0.0)
        bare_runs: list[float] = []
        small_runs: list[float] = []
        for round_ in range(args.rounds):
            rng = random.Random(2 + round_)
            bodies = [rng.randbytes(args.file_size) for _ in range(args.files)]
            for what in ordered(round_):
                if what == "baseline":
                    bare = work / "bare"
                    bare.mkdir()
                    bare_runs.append(await anyio.to_thread.run_sync(bare_small, bare, bodies))
                    await anyio.to_thread.run_sync(shutil.rmtree, bare)
                    continue
                start = time.perf_counter()
                for i, data in enumerate(bodies):
                    await vault.put(f"small-{round_}-{i:06}", one(data))
                small_runs.append(time.perf_counter() - start)
        emit(
            args.backend,
            "ingest_small",
            files=args.files,
            file_size=args.file_size,
            rounds=args.rounds,
            baseline="write + fsync + rename",
            **rounds_figure(args.files, bare_runs, small_runs, unit="files_per_s"),
        )
    finally:
        await store.close()


async def http_downloads(
    args: argparse.Namespace, url: str, location: Location, sha256: str
) -> tuple[str, list[float], list[float]]:
    """Time ``GET /vault/resources/large.bin`` and ``GET /file/<sha256>`` from a server
    process, alternating; (the server's loop, the vault's times, FileResponse's)."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        url,
        str(location.path),
        "--loop",
        args.loop,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(await server.stdout.readline())
        base = f"http://127.0.0.1:{ready['port']}"
        paths = {"vault": "/vault/resources/large.bin", "baseline": f"/file/{sha256}"}
        runs: dict[str, list[float]] = {"vault": [], "baseline": []}
        async with aiohttp.ClientSession(read_bufsize=4 * MIB) as session:
            for what in ("vault", "baseline"):  # one of each first: connections, caches
                await download(session, base + paths[what], args.size * MIB)
            for round_ in range(args.rounds):
                for what in ordered(round_):
                    seconds = await download(session, base + paths[what], args.size * MIB)
                    runs[what].append(seconds)
        return str(ready["loop"]), runs["vault"], runs["baseline"]
    finally:
        server.terminate()
        await server.wait()


async def download(session: aiohttp.ClientSession, url: str, size: int) -> float:
    start = time.perf_counter()
    got = 0
    async with session.get(url) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(MIB):
            got += len(chunk)
    seconds = time.perf_counter() - start
    if got != size:
        raise AssertionError(f"{url}: {got} bytes, expected {size}")
    return seconds


async def serve(url: str, path: Path) -> None:
    """The download benchmark's server: the vault's routes, mounted as the daemon
    mounts them (no token checked), and ``/file/{sha256}``, a FileResponse of the blob
    file; prints {"port", "loop"} once listening, then serves until terminated."""
    store = open_store(url)
    await store.open()
    location = Location("bench", path)
    vault = Vault(store, location, grace=0.0)
    http = VaultHttp(vault, max_upload=None)
    app = web.Application()

    def no_check(request: web.Request, role: str) -> web.StreamResponse | None:
        return None

    http.mount(app, no_check)

    async def file(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(location.blob_path(request.match_info["sha256"]))

    app.router.add_get("/file/{sha256}", file)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(json.dumps({"port": port, "loop": loop}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await store.close()


def event_loop_factory(wanted: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The daemon's choice: uvloop when installed (``auto``) or asked for."""
    if wanted in ("auto", "uvloop"):
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if wanted == "uvloop":
                raise
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return None


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
    parser.add_argument("--size", type=int, default=1024, help="MiB of the large file")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each comparison")
    parser.add_argument("--files", type=int, default=1000, help="small files per round")
    parser.add_argument("--file-size", type=int, default=4096, help="bytes of each small file")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres", default=POSTGRES, help="a database to create one in")
    parser.add_argument("--dir", default=None, help="where to work (a temp dir is made in it)")
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="the download server's event loop (auto: uvloop when installed, as the daemon)",
    )
    parser.add_argument(
        "--figures",
        type=lambda text: set(text.split(",")),
        default={"ingest", "download", "small"},
        help="which of ingest,download,small to measure (all by default)",
    )
    parser.add_argument("--serve", nargs=2, metavar=("URL", "PATH"), help=argparse.SUPPRESS)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parsed = parser.parse_args()
    if parsed.serve:
        with asyncio.Runner(loop_factory=event_loop_factory(parsed.loop)) as runner:
            runner.run(serve(parsed.serve[0], Path(parsed.serve[1])))
    else:
        asyncio.run(main(parsed))
