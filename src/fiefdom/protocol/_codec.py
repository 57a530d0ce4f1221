"""Codecs of the control channel: JSON in text frames, MessagePack in binary frames.
One reusable decoder per direction; a frame that fails to decode becomes a typed
``Error`` naming what was wrong (and the request id when one can be read)."""

from __future__ import annotations

import enum
from functools import lru_cache
from typing import Any, Final

import msgspec

from ._messages import (
    CLIENT_TYPES,
    ClientMessage,
    Error,
    ErrorCode,
    ServerMessage,
)


class Encoding(enum.StrEnum):
    """How frames are encoded on the wire."""

    JSON = "json"  # text frames
    MSGPACK = "msgpack"  # binary frames


class _Probe(msgspec.Struct):
    """Reads only ``id`` and ``type`` of a frame that failed to decode."""

    id: Any = None
    type: Any = None


class Codec:
    """Encodes and decodes frames of one direction in one encoding."""

    __slots__ = ("_decoder", "_encoder", "_probe", "encoding")

    def __init__(self, encoding: Encoding, decode_type: Any) -> None:
        self.encoding = encoding
        if encoding is Encoding.JSON:
            self._decoder: Any = msgspec.json.Decoder(decode_type)
            self._encoder: Any = msgspec.json.Encoder()
            self._probe: Any = msgspec.json.Decoder(_Probe)
        else:
            self._decoder = msgspec.msgpack.Decoder(decode_type)
            self._encoder = msgspec.msgpack.Encoder()
            self._probe = msgspec.msgpack.Decoder(_Probe)

    def encode(self, obj: object) -> bytes:
        return self._encoder.encode(obj)  # type: ignore[no-any-return]

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)

    def decode_as(self, data: bytes, type_: Any) -> Any:
        return _decoder_for(self.encoding, type_).decode(data)

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
        frame_id = (
            probe.id if isinstance(probe.id, int) and not isinstance(probe.id, bool) else None
        )
        if not isinstance(probe.type, str) or probe.type not in CLIENT_TYPES:
            return Error(
                id=frame_id,
                code=ErrorCode.UNKNOWN_TYPE,
                message=f"unknown message type {probe.type!r}",
                details={"known": sorted(CLIENT_TYPES)},
            )
        return Error(
            id=frame_id,
            code=ErrorCode.INVALID_MESSAGE,
            message=f"invalid {probe.type!r} message: {exc}",
            details=_path_of(exc),
        )


@lru_cache(maxsize=512)
def _decoder_for(encoding: Encoding, type_: Any) -> Any:
    if encoding is Encoding.JSON:
        return msgspec.json.Decoder(type_)
    return msgspec.msgpack.Decoder(type_)


def _path_of(exc: msgspec.DecodeError) -> dict[str, Any]:
    # msgspec ends validation messages with " - at `$.field`"; the path is the detail
    # a client needs to point at its own bug.
    text = str(exc)
    marker = " - at `"
    if marker in text:
        return {"path": text.rsplit(marker, 1)[1].rstrip("`")}
    return {}


SERVER_JSON: Final = Codec(Encoding.JSON, ClientMessage)
SERVER_MSGPACK: Final = Codec(Encoding.MSGPACK, ClientMessage)
CLIENT_JSON: Final = Codec(Encoding.JSON, ServerMessage)
CLIENT_MSGPACK: Final = Codec(Encoding.MSGPACK, ServerMessage)


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
