"""A user module whose service crashes on its first ``crash_runs`` runs, then serves
until cancelled; each run adds a line to ``service-runs`` in the data folder, so a
test sees every restart. ``max_restarts`` is its supervisor's intensity."""

from __future__ import annotations

import asyncio

import msgspec

import fiefdom


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    crash_runs: int = 1
    max_restarts: int = 3


async def setup(daemon: fiefdom.ModuleHost) -> None:
    settings = daemon.settings(Settings)
    runs = daemon.data_dir / "service-runs"

    async def consume() -> None:
        with runs.open("a") as file:
            file.write("run\n")
        if len(runs.read_text().splitlines()) <= settings.crash_runs:
            raise RuntimeError("the consumer crashed on purpose")
        await asyncio.Event().wait()  # until cancelled

    await daemon.run_service("consumer", consume, max_restarts=settings.max_restarts, within=60.0)
