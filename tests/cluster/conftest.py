"""Fixtures of the cluster tests: the figures each test prints."""

from __future__ import annotations

import json
import sys

import pytest
from cluster_helpers import Report


@pytest.fixture
def figures(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Report:
    """``figures(**values)`` prints one JSON line naming the test, so that runs (before
    and after a change) can be compared; written past pytest's capture, so it shows
    without ``-s``."""

    def report(**values: object) -> None:
        line = json.dumps({"test": request.node.nodeid, **values})
        with capsys.disabled():
            # The figures are this suite's output, not a debugging print.
            sys.stdout.write(f"\nCLUSTER {line}\n")
            sys.stdout.flush()

    return report
