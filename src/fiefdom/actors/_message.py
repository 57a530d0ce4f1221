"""Message base types. ``Request[R]`` is a message whose reply has type ``R``, so
``await ref.ask(GetBalance())`` type-checks as the reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec

R = TypeVar("R")


class Request(msgspec.Struct, Generic[R]):
    """A message that expects a reply of type ``R`` (subclass it: ``class Get(Request[int])``)."""


class Invoke(Request[R]):
    """Internal: run ``fn(actor)`` inside the actor's turn (``ref.call`` / ``domain.call``),
    serialised with its messages and cancellable like any ask."""

    fn: Callable[[Any], Awaitable[R]]
    name: str
