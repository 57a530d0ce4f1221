"""The control channel: wire messages, codecs, the aiohttp server (health,
readiness, metrics, schema, websocket) and the Python client.

Constants and type aliases:

- ``PROTOCOL_VERSION``: the version a client's ``hello`` must ask for (the server
  speaks one).
- ``REQUIRED_ROLE``: for each client message type, the token role it needs, read off
  the ``role`` each request type declares beside its fields.
- ``Role``: a token's role, ``"read"``, ``"operate"`` or ``"admin"`` (each allows
  what the ones before it allow).
- ``ClientMessage``: the tagged union of the frames a client sends (``type`` names
  the frame; every request carries an ``id``).
- ``ServerMessage``: the tagged union of the frames the server sends (replies name
  the request's ``id``; ``event`` and ``dropped`` frames name a subscription).
"""

# Jobs travel as the library's own Structs: one JobInfo and one JobEvent everywhere.
from ..storage import JobEvent as JobEvent
from ..storage import JobInfo as JobInfo
from ._channel import EventStream as EventStream
from ._client import Client as Client
from ._client import ClientState as ClientState
from ._client import connect as connect
from ._codec import Encoding as Encoding
from ._codec import json_schema as json_schema
from ._hub import EventHub as EventHub
from ._hub import Subscription as Subscription
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._messages import REQUIRED_ROLE as REQUIRED_ROLE
from ._messages import ClientMessage as ClientMessage
from ._messages import ErrorCode as ErrorCode
from ._messages import Role as Role
from ._metrics import ControlMetrics as ControlMetrics
from ._registry import ControlHost as ControlHost
from ._registry import JobService as JobService
from ._registry import NotFound as NotFound
from ._registry import Registry as Registry
from ._replies import ActorEvent as ActorEvent
from ._replies import ClusterInfo as ClusterInfo
from ._replies import Dropped as Dropped
from ._replies import LogEvent as LogEvent
from ._replies import QueueInfo as QueueInfo
from ._replies import ServerMessage as ServerMessage
from ._replies import StatusReply as StatusReply
from ._replies import TargetInfo as TargetInfo
from ._server import ControlServer as ControlServer
from ._settings import ControlSettings as ControlSettings
from ._settings import Credential as Credential
from ._settings import TokenSpec as TokenSpec
from ._settings import TokenTable as TokenTable

__all__ = [
    "PROTOCOL_VERSION",
    "REQUIRED_ROLE",
    "ActorEvent",
    "Client",
    "ClientMessage",
    "ClientState",
    "ClusterInfo",
    "ControlHost",
    "ControlMetrics",
    "ControlServer",
    "ControlSettings",
    "Credential",
    "Dropped",
    "Encoding",
    "ErrorCode",
    "EventHub",
    "EventStream",
    "JobEvent",
    "JobInfo",
    "JobService",
    "LogEvent",
    "NotFound",
    "QueueInfo",
    "Registry",
    "Role",
    "ServerMessage",
    "StatusReply",
    "Subscription",
    "TargetInfo",
    "TokenSpec",
    "TokenTable",
    "connect",
    "json_schema",
]
