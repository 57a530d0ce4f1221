"""A user module whose setup hook fails: the daemon has opened its store (and written
into its data folder) by then, so the failure writes the flight recorder."""

from __future__ import annotations

from typing import Any


def setup(daemon: Any) -> None:
    raise RuntimeError("setup failed on purpose")
