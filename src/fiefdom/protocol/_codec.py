"""Codecs of the control channel: JSON in text frames, MessagePack in binary frames.
One reusable decoder per direction; a frame that fails to decode becomes a typed
``Error`` naming what was wrong (and the request id when one can be read)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import Any, Final, Generic, TypeVar

import msgspec

from ._depth import json_too_deep, msgpack_too_deep
from ._messages import CLIENT_TYPES, ClientMessage, ErrorCode
from ._replies import Error, ServerMessage

T = TypeVar("T")
S = TypeVar("S")


class Encoding(enum.StrEnum):
    """How frames are encoded on the wire."""

    JSON = "json"  # text frames
    MSGPACK = "msgpack"  # binary frames


class _Probe(msgspec.Struct):
    """Reads only ``id`` and ``type`` of a frame that failed to decode, as they are: a
    number out of a float's range (``1e400``) fails the frame, not the probe."""

    id: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    type: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class Codec(Generic[T]):
    """Encodes frames, and decodes the frames of one direction (``T``), in one encoding."""

    __slots__ = ("_decoder", "_encoder", "_probe", "decode", "decoders", "encode", "encoding")

    def __init__(self, encoding: Encoding, decode_type: Any) -> None:
        self.encoding = encoding
        self._decoder: msgspec.json.Decoder[T] | msgspec.msgpack.Decoder[T]
        self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder
        self._probe: msgspec.json.Decoder[_Probe] | msgspec.msgpack.Decoder[_Probe]
        if encoding is Encoding.JSON:
            self._decoder = msgspec.json.Decoder(decode_type)
            self._encoder = msgspec.json.Encoder()
            self._probe = msgspec.json.Decoder(_Probe)
        else:
            self._decoder = msgspec.msgpack.Decoder(decode_type)
            self._encoder = msgspec.msgpack.Encoder()
            self._probe = msgspec.msgpack.Decoder(_Probe)
        # The encoder's and decoder's own methods: no Python call around them, on the
        # path of every frame.
        self.encode: Callable[[object], bytes] = self._encoder.encode
        self.decode: Callable[[bytes], T] = self._decoder.decode
        # decode_as's decoders by type (their decode methods), looked up without
        # _decoder_for's cache (whose key hashes the encoding, an enum, with a Python
        # call). A call decodes its message with one, read from here directly once
        # decode_as has added it (see _requests.start_call).
        self.decoders: dict[Hashable, Callable[[bytes], Any]] = {}

    def decode_as(self, data: bytes, type_: type[S]) -> S:
        """Decode ``data`` (a ``msgspec.Raw`` field of a frame) as ``type_``."""
        # Types are hashable; mypy cannot tell for a type variable's.
        key: Hashable = type_  # type: ignore[assignment]
        decode = self.decoders.get(key)
        if decode is None:
            decode = _decoder_for(self.encoding, key).decode
            if len(self.decoders) < _DECODERS:
                self.decoders[key] = decode
        decoded: S = decode(data)
        return decoded

    def too_deep(self, data: bytes, limit: int) -> bool:
        """True when ``data`` nests arrays or objects more than ``limit`` deep (checked
        before decoding it: the decoders recurse)."""
        if self.encoding is Encoding.JSON:
            return json_too_deep(data, limit)
        return msgpack_too_deep(data, limit)

    def depth_error(self, limit: int) -> Error:
        """The error answering a frame that nests more than ``limit`` deep."""
        return Error(
            id=None,
            code=ErrorCode.INVALID_FRAME,
            message=f"frame nests arrays or objects more than {limit} deep "
            "(control.max_frame_depth)",
            details={"encoding": str(self.encoding), "max_depth": limit},
        )

    def explain(self, data: bytes, exc: msgspec.DecodeError) -> Error:
        """Turn a decoding failure of a client frame into the typed error to send back."""
        try:
            probe = self._probe.decode(data)
        except msgspec.DecodeError:
            return Error(
                id=None,
                code=ErrorCode.INVALID_FRAME,
                message=f"frame is not a valid {self.encoding} object: {exc}",
                details={"encoding": str(self.encoding)},
            )
        frame_id = request_id(self._field(probe.id))
        tag = self._field(probe.type)
        if not isinstance(tag, str) or tag not in CLIENT_TYPES:
            return Error(
                id=frame_id,
                code=ErrorCode.UNKNOWN_TYPE,
                message=f"unknown message type {tag!r}",
                details={"known": sorted(CLIENT_TYPES)},
            )
        return Error(
            id=frame_id,
            code=ErrorCode.INVALID_MESSAGE,
            message=f"invalid {tag!r} message: {exc}",
            details=path_of(exc),
        )

    def _field(self, raw: msgspec.Raw) -> object:
        """A probed field's value when it is a string or an integer, else None."""
        if not raw:
            return None
        try:
            return _decoder_for(self.encoding, str | int).decode(raw)
        except msgspec.DecodeError:
            return None


def request_id(value: object) -> int | None:
    """The ``id`` an error names for a frame that failed to decode: its own ``id``
    when that is a valid one (a signed 64-bit integer), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


_DECODERS: Final = 512  # decoders kept per codec, as _decoder_for's cache keeps


@lru_cache(maxsize=_DECODERS)
def _decoder_for(
    encoding: Encoding, type_: Hashable
) -> msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]:
    if encoding is Encoding.JSON:
        return msgspec.json.Decoder(type_)
    return msgspec.msgpack.Decoder(type_)


def path_of(exc: msgspec.DecodeError, within: str = "$") -> dict[str, str]:
    """The ``path`` detail of a validation error (``{"path": "$.job_id"}``), with the
    path rooted at ``within`` when the value decoded was a field of the frame."""
    # msgspec ends validation messages with " - at `$.field`"; the path is the detail
    # a client needs to point at its own bug.
    text = str(exc)
    marker = " - at `"
    if marker in text:
        path = text.rsplit(marker, 1)[1].rstrip("`")
        return {"path": within + path.removeprefix("$")}
    return {"path": within} if within != "$" else {}


SERVER_JSON: Final[Codec[ClientMessage]] = Codec(Encoding.JSON, ClientMessage)
SERVER_MSGPACK: Final[Codec[ClientMessage]] = Codec(Encoding.MSGPACK, ClientMessage)
CLIENT_JSON: Final[Codec[ServerMessage]] = Codec(Encoding.JSON, ServerMessage)
CLIENT_MSGPACK: Final[Codec[ServerMessage]] = Codec(Encoding.MSGPACK, ServerMessage)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of every frame, generated from the Structs."""
    (client_ref, server_ref), components = msgspec.json.schema_components(
        [ClientMessage, ServerMessage], ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fiefdom.invalid/protocol/v1",
        "title": "fiefdom control channel",
        "description": (
            "Frames of the websocket control channel: JSON in text frames, "
            "MessagePack (same structure) in binary frames."
        ),
        "anyOf": [client_ref, server_ref],
        "$defs": {
            **components,
            "ClientMessage": client_ref,
            "ServerMessage": server_ref,
        },
    }
