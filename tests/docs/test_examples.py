"""The runnable examples work as shown: each is imported and its ``main`` run."""

from __future__ import annotations

import importlib.util
import pathlib
import types

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_jobs_example_runs_each_job_inside_its_documents_actor(
    tmp_path: pathlib.Path,
) -> None:
    """examples/jobs.py: outbox enqueues commit with their rows, and every job runs in
    the actor owning its document (two for "a", one for "b")."""
    assert await load("jobs").main(tmp_path) == {"a": 2, "b": 1}
