"""Which half of the slow tests ``--slow=half`` runs (see conftest.py): a module of its
own, so that the suite's test of it imports the very rule the conftest applies."""

from __future__ import annotations

import zlib


def in_slow_half(nodeid: str) -> bool:
    """Whether ``--slow=half`` runs the slow test ``nodeid``: the same half on every run
    and machine (a CRC of the id, not Python's salted hash)."""
    return zlib.crc32(nodeid.encode()) % 2 == 0
