"""The frames nodes of one cluster exchange to forward a message to the owner of
its key (MessagePack over a websocket), and how a message's type travels: by its
module and qualified name, resolved on the owner only among the modules it has
already imported (nothing is imported on a peer's say) and only to a
``msgspec.Struct``. A reply is decoded as the ``R`` of the request's ``Request[R]``."""

from __future__ import annotations

import functools
import sys
import typing
from typing import Any

import msgspec

from ..actors import Request

# The path peers connect to on a node's peer server.
PEER_PATH = "/fiefdom/peer"
# Keys that can be forwarded: they must come back equal (and hash to the same
# partition) on the owner.
Key = str | int


class AskFrame(msgspec.Struct, tag="ask", tag_field="frame", kw_only=True):
    """Ask ``key`` of ``domain`` on the owner; ``timeout`` is what is left of the
    caller's deadline; ``chain``: the paths of the actors waiting on this ask."""

    id: int
    domain: str
    key: Key
    type: str
    body: bytes
    timeout: float | None
    chain: list[str]


class TellFrame(msgspec.Struct, tag="tell", tag_field="frame", kw_only=True):
    """Tell ``key`` of ``domain`` on the owner (acknowledged once it is queued)."""

    id: int
    domain: str
    key: Key
    type: str
    body: bytes


class CancelFrame(msgspec.Struct, tag="cancel", tag_field="frame", kw_only=True):
    """The caller of ask ``id`` was cancelled: cancel it on the owner too."""

    id: int


class ReplyFrame(msgspec.Struct, tag="reply", tag_field="frame", kw_only=True):
    """The reply to frame ``id`` (the encoded result of an ask; empty for a tell)."""

    id: int
    body: bytes


class ErrorFrame(msgspec.Struct, tag="error", tag_field="frame", kw_only=True):
    """Frame ``id`` failed on the owner. ``code``: ``not_owner`` (nothing ran: the
    node no longer owns the key), ``timeout`` (``phase`` says queued or running),
    ``cycle``, ``stopped``, ``invalid`` (unknown domain or type, undecodable
    message), ``raised`` (the handler raised ``error_type``)."""

    id: int
    code: str
    message: str
    node: str = ""
    path: str = ""
    phase: str = ""
    error_type: str = ""
    cycle: list[str] = []
    handler_exited: bool = True


PeerFrame = AskFrame | TellFrame | CancelFrame | ReplyFrame | ErrorFrame

ENCODER = msgspec.msgpack.Encoder()
# A websocket message holds the frames queued within one turn of its sender's loop.
DECODER: msgspec.msgpack.Decoder[list[PeerFrame]] = msgspec.msgpack.Decoder(list[PeerFrame])


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_type(name: str) -> type[msgspec.Struct]:
    """The Struct class named ``module:qualname`` in a module already imported here;
    ``LookupError`` (saying why) otherwise."""
    module_name, _, qualname = name.partition(":")
    found: object = sys.modules.get(module_name)
    if found is None:
        raise LookupError(f"module {module_name!r} is not loaded on this node")
    for part in qualname.split("."):
        if part.startswith("__") or not part:
            raise LookupError(f"{name!r} is not a message type")
        found = getattr(found, part, None)
    if not (isinstance(found, type) and issubclass(found, msgspec.Struct)):
        raise LookupError(f"{name!r} is not a message type (a msgspec.Struct) on this node")
    return found


@functools.cache
def reply_type(cls: type) -> Any:
    """The ``R`` of the ``Request[R]`` that ``cls`` derives from (``Any`` if unknown)."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Request):
                (arg,) = typing.get_args(base) or (Any,)
                return Any if isinstance(arg, typing.TypeVar) else arg
    return Any
