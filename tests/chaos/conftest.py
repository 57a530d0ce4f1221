"""Fixtures of the chaos suite: the figures each attack prints, and the daemon harness
shared from the daemon tests (real daemon subprocesses, real websockets)."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))

from daemon_harness import APP_DIR

# The hosted test app is imported by the tests too (its job kinds).
sys.path.insert(0, str(APP_DIR))

Report = Callable[..., None]


@pytest.fixture
def figures(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Report:
    """``figures(**values)`` prints one JSON line, ``{"chaos": <test id>, ...values}``,
    so that runs can be compared (``grep '^{"chaos"'``); written past pytest's capture,
    so it shows without ``-s``."""

    def report(**values: object) -> None:
        line = json.dumps({"chaos": request.node.nodeid, **values})
        with capsys.disabled():
            # The figures are this suite's output, not a debugging print.
            sys.stdout.write(f"\n{line}\n")
            sys.stdout.flush()

    return report


@pytest.fixture
def seed() -> int:
    """The seed of the test's random choices (kill instants, clients, outages); each test
    prints it with its figures, and ``FIEFDOM_CHAOS_SEED=<seed>`` replays a run."""
    return int(os.environ.get("FIEFDOM_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
