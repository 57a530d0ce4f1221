"""docs/modules.md stays true: its example module, taken from the guide as written,
runs in a real daemon subprocess. Webhooks posted to its HTTP service are stored and
enqueued in one transaction, their jobs run inside the source's actor (asked over the
control channel), the count is read back through store.read(), and SIGTERM closes
its port with exit status 0."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import socket
import sys
import time
import types
import urllib.request
from pathlib import Path
from typing import Any

import anyio
from daemon_harness import DaemonProcess, write_config

import fiefdom

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "modules.md"
DEADLINE = 30.0


def guide_module(folder: Path) -> types.ModuleType:
    """Write the guide's example to ``folder/webhooks.py`` and import it here too (the
    test sends its message types)."""
    found = re.search(
        r"<!-- module-example -->\n```python\n(.*?)```\n<!-- /module-example -->",
        GUIDE.read_text(),
        flags=re.S,
    )
    assert found is not None, "docs/modules.md lost its example module"
    folder.mkdir(parents=True)
    path = folder / "webhooks.py"
    path.write_text(found.group(1))
    spec = importlib.util.spec_from_file_location("guide_webhooks", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec and dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def listening_port(daemon: DaemonProcess) -> int:
    """The port the module logged, waited for under a hang guard."""
    deadline = time.monotonic() + DEADLINE
    while (found := re.search(r"webhooks listening .*port=(\d+)", daemon.log())) is None:
        assert time.monotonic() < deadline, f"no 'webhooks listening' line:\n{daemon.log()}"
        time.sleep(0.02)
    return int(found.group(1))


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=10) as response:
        data = response.read()
        return response.status, json.loads(data) if data else None


async def test_the_guides_example_module_runs_in_a_daemon(tmp_path: Path) -> None:
    """The example's service, domain, job kind and tables work together as the guide
    describes, and the daemon stops cleanly with it."""
    module = guide_module(tmp_path / "modules")
    config = write_config(
        tmp_path / "daemon", modules=("webhooks",), extra="[app.webhooks]\nport = 0\n"
    )
    env = {"FIEFDOM_DAEMON__PYTHON_PATH": json.dumps([str(tmp_path / "modules")])}
    try:
        with DaemonProcess(config, env=env) as daemon:
            port = listening_port(daemon)
            for source in ("github", "github", "github", "gitlab"):
                status, _ = await anyio.to_thread.run_sync(
                    request, port, "POST", f"/hooks/{source}", b'{"event": "push"}'
                )
                assert status == 202
            async with fiefdom.connect(daemon.url, token=daemon.token) as client:
                # Each source's jobs run in its actor; wait (under a hang guard) until
                # all four have, and never more than were posted.
                with anyio.fail_after(DEADLINE):
                    while (
                        counts := [
                            await client.call("sources", module.Processed(), key=key)
                            for key in ("github", "gitlab")
                        ]
                    ) != [3, 1]:
                        assert counts[0] <= 3, counts
                        assert counts[1] <= 1, counts
                        await anyio.sleep(0.02)
            _, counted = await anyio.to_thread.run_sync(request, port, "GET", "/hooks/github")
            assert counted == {"source": "github", "received": 3}
            daemon.signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(daemon.wait) == 0, daemon.log()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
            except ConnectionRefusedError:
                pass
            else:
                raise AssertionError("the module's port is still open after the stop")
    finally:
        sys.modules.pop("guide_webhooks", None)
