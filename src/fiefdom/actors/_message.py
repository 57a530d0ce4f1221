"""Message base types. ``Request[R]`` is a message whose reply has type ``R``, so
``await ref.ask(GetBalance())`` type-checks as the reply."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

R = TypeVar("R")


class Request(msgspec.Struct, Generic[R]):
    """A message that expects a reply of type ``R`` (subclass it: ``class Get(Request[int])``)."""
