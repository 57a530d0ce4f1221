"""A module the error tests' daemon hosts besides the test app: an actor whose message
type has a bug in its own decoding (a KeyError), and one whose handler raises one."""

from __future__ import annotations

from typing import Any

import fiefdom

KNOWN: dict[str, str] = {}


class Lookup(fiefdom.Request[str]):
    """Looks ``key`` up while it is decoded: a KeyError for any key, as a bug would."""

    key: str

    def __post_init__(self) -> None:
        KNOWN[self.key]  # raises: the lookup is the bug


class Fetch(fiefdom.Request[str]):
    """Looked up by the handler: a KeyError inside the actor."""

    key: str


class Faulty(fiefdom.Actor[Lookup | Fetch]):
    async def receive(self, msg: Lookup | Fetch) -> str:
        return KNOWN[msg.key]


async def setup(daemon: Any) -> None:
    faulty = await daemon.system.spawn(Faulty, name="faulty")
    daemon.expose("faulty", faulty, [Lookup, Fetch])
