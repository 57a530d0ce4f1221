"""examples/app.py, the module the README points to, runs in a real daemon: its
domain answers calls and its job runs inside the document's actor."""

from __future__ import annotations

import pathlib
from typing import Any

import anyio
import pytest
from daemon_harness import DaemonProcess, write_config

import fiefdom
from fiefdom.storage import JobState

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
async def test_the_example_module_is_hosted_by_the_daemon(tmp_path: pathlib.Path) -> None:
    """A call appends to a document, a wordcount job completes, and the actor saw it."""
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        import app  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLES))
    config = write_config(tmp_path, modules=("app",))
    env = {"FIEFDOM_DAEMON__PYTHON_PATH": f'["{EXAMPLES}"]'}
    with DaemonProcess(config, env=env) as daemon:
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            await client.call("documents", app.Append(text="one two three"), key="readme")
            job = await client.enqueue("wordcount", {"doc_id": "readme"})
            with anyio.fail_after(30):
                while (info := await client.job(job.id)).state != JobState.COMPLETED:
                    assert info.state not in (JobState.DISCARDED, JobState.RETRYABLE), info
                    await anyio.sleep(0.05)
            words: Any = await client.call("documents", app.Words(), key="readme")
            assert words == 3
