"""Actors, refs, mailboxes, domains (one actor per id) and owned subprocesses.

Defaults: ``DEFAULT_CAPACITY`` messages per mailbox, ``DEFAULT_ASK_TIMEOUT`` seconds
per ask, ``DEFAULT_CANCEL_GRACE`` seconds for a cancelled handler to return before
the actor is reported stuck, ``DEFAULT_MAX_ACTIVE`` live actors per domain (pass
``max_active=None`` for no cap). ``StopMode`` names how a cell's incarnation ends:
``"restart"`` (mailbox kept), ``"drain"`` (handle what is queued, take nothing new),
``"exit"`` (stop after the current message) or ``"cancel"`` (cancel the running
handler, take nothing new).

``RuntimeEvent`` is the union of the runtime events an ``EventBus`` delivers.
"""

from .._lifecycle import StopMode as StopMode
from ._actor import Actor as Actor
from ._actor import ActorContext as ActorContext
from ._cell import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from ._cell import DEFAULT_CANCEL_GRACE as DEFAULT_CANCEL_GRACE
from ._cell import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._cell import ActorState as ActorState
from ._cell import ActorStatistics as ActorStatistics
from ._cell import Cell as Cell
from ._domain import DEFAULT_MAX_ACTIVE as DEFAULT_MAX_ACTIVE
from ._domain import Domain as Domain
from ._domain import DomainStatistics as DomainStatistics
from ._domain import Forwarder as Forwarder
from ._domain import Placement as Placement
from ._events import ActorCrashed as ActorCrashed
from ._events import ActorRestarted as ActorRestarted
from ._events import ChildExited as ChildExited
from ._events import EventBus as EventBus
from ._events import RuntimeEvent as RuntimeEvent
from ._events import SupervisorEscalated as SupervisorEscalated
from ._message import Request as Request
from ._process import ProcessResult as ProcessResult
from ._process import run_process as run_process
from ._ref import ActorRef as ActorRef
from ._ref import CellRef as CellRef

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_ACTIVE",
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorRef",
    "ActorRestarted",
    "ActorState",
    "ActorStatistics",
    "Cell",
    "CellRef",
    "ChildExited",
    "Domain",
    "DomainStatistics",
    "EventBus",
    "Forwarder",
    "Placement",
    "ProcessResult",
    "Request",
    "RuntimeEvent",
    "StopMode",
    "SupervisorEscalated",
    "run_process",
]
