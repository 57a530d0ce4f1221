"""fiefdom: an event-driven actor system on asyncio for daemons that own resources.

Every resource id has exactly one owning actor, so mutual exclusion and
cancellation come from ownership instead of lock timeouts.

``RuntimeEvent`` is the union of the events ``system.events`` delivers:
``ActorCrashed``, ``ActorRestarted``, ``ChildExited`` and ``SupervisorEscalated``.

Every long-lived component (actor system, store, job engine, control server,
client, daemon) has one lifecycle: its ``state`` is a ``State`` (new, starting,
running, stopping, stopped), and ``stop(mode)`` takes a ``StopMode``: ``"drain"``
(finish the work in hand, take nothing new), ``"cancel"`` (cancel what runs now,
give unstarted work back), and for actors ``"exit"`` and ``"restart"``.
"""

from ._errors import ActivationFailed as ActivationFailed
from ._errors import ActorError as ActorError
from ._errors import ActorStopped as ActorStopped
from ._errors import AskTimeout as AskTimeout
from ._errors import CallCycleError as CallCycleError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ControlConnectionError as ControlConnectionError
from ._errors import ControlError as ControlError
from ._errors import FiefdomError as FiefdomError
from ._errors import JobError as JobError
from ._errors import LifecycleError as LifecycleError
from ._errors import MailboxFull as MailboxFull
from ._errors import OwnerUnavailable as OwnerUnavailable
from ._errors import ProcessFailed as ProcessFailed
from ._errors import RemoteHandlerError as RemoteHandlerError
from ._errors import RestartIntensityExceeded as RestartIntensityExceeded
from ._errors import SchemaMismatch as SchemaMismatch
from ._errors import StaleLease as StaleLease
from ._errors import StaleOwner as StaleOwner
from ._errors import StoreError as StoreError
from ._errors import StoreNotOpen as StoreNotOpen
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import SupervisorError as SupervisorError
from ._errors import UniqueConflict as UniqueConflict
from ._errors import UnknownJobKind as UnknownJobKind
from ._lifecycle import State as State
from ._lifecycle import StopMode as StopMode
from .actors import Actor as Actor
from .actors import ActorContext as ActorContext
from .actors import ActorCrashed as ActorCrashed
from .actors import ActorRef as ActorRef
from .actors import ActorRestarted as ActorRestarted
from .actors import ActorState as ActorState
from .actors import ActorStatistics as ActorStatistics
from .actors import ChildExited as ChildExited
from .actors import Domain as Domain
from .actors import DomainStatistics as DomainStatistics
from .actors import EventBus as EventBus
from .actors import ProcessResult as ProcessResult
from .actors import Request as Request
from .actors import RuntimeEvent as RuntimeEvent
from .actors import SupervisorEscalated as SupervisorEscalated
from .actors import run_process as run_process
from .cluster import ClusterSettings as ClusterSettings
from .daemon import ModuleHost as ModuleHost
from .jobs import Cancel as Cancel
from .jobs import Discard as Discard
from .jobs import DomainJobContext as DomainJobContext
from .jobs import EngineStatistics as EngineStatistics
from .jobs import JobContext as JobContext
from .jobs import JobEngine as JobEngine
from .jobs import Retention as Retention
from .jobs import Snooze as Snooze
from .protocol import connect as connect
from .storage import AttemptError as AttemptError
from .storage import DomainJob as DomainJob
from .storage import Enqueued as Enqueued
from .storage import ExponentialBackoff as ExponentialBackoff
from .storage import Job as Job
from .storage import JobEvent as JobEvent
from .storage import JobInfo as JobInfo
from .storage import JobOptions as JobOptions
from .storage import JobState as JobState
from .storage import QueueCount as QueueCount
from .storage import Store as Store
from .storage import Transaction as Transaction
from .storage import Unique as Unique
from .storage import open_store as open_store
from .supervisors import ActorSpec as ActorSpec
from .supervisors import ActorSystem as ActorSystem
from .supervisors import Backoff as Backoff
from .supervisors import DomainSpec as DomainSpec
from .supervisors import Restart as Restart
from .supervisors import Service as Service
from .supervisors import ServiceSpec as ServiceSpec
from .supervisors import ServiceStatistics as ServiceStatistics
from .supervisors import Strategy as Strategy
from .supervisors import SupervisorRef as SupervisorRef
from .supervisors import SupervisorSpec as SupervisorSpec
from .supervisors import SupervisorStatistics as SupervisorStatistics

__version__ = "0.1.0"

__all__ = [
    "ActivationFailed",
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorError",
    "ActorRef",
    "ActorRestarted",
    "ActorSpec",
    "ActorState",
    "ActorStatistics",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "AttemptError",
    "Backoff",
    "CallCycleError",
    "Cancel",
    "ChildExited",
    "ClusterSettings",
    "ConfigurationError",
    "ControlConnectionError",
    "ControlError",
    "Discard",
    "Domain",
    "DomainJob",
    "DomainJobContext",
    "DomainSpec",
    "DomainStatistics",
    "EngineStatistics",
    "Enqueued",
    "EventBus",
    "ExponentialBackoff",
    "FiefdomError",
    "Job",
    "JobContext",
    "JobEngine",
    "JobError",
    "JobEvent",
    "JobInfo",
    "JobOptions",
    "JobState",
    "LifecycleError",
    "MailboxFull",
    "ModuleHost",
    "OwnerUnavailable",
    "ProcessFailed",
    "ProcessResult",
    "QueueCount",
    "RemoteHandlerError",
    "Request",
    "Restart",
    "RestartIntensityExceeded",
    "Retention",
    "RuntimeEvent",
    "SchemaMismatch",
    "Service",
    "ServiceSpec",
    "ServiceStatistics",
    "Snooze",
    "StaleLease",
    "StaleOwner",
    "State",
    "StopMode",
    "Store",
    "StoreError",
    "StoreNotOpen",
    "StoreUnavailable",
    "Strategy",
    "SupervisorError",
    "SupervisorEscalated",
    "SupervisorRef",
    "SupervisorSpec",
    "SupervisorStatistics",
    "Transaction",
    "Unique",
    "UniqueConflict",
    "UnknownJobKind",
    "connect",
    "open_store",
    "run_process",
]
