"""fiefdom: an event-driven actor system on asyncio for daemons that own resources.

Every resource id has exactly one owning actor, so mutual exclusion and
cancellation come from ownership instead of lock timeouts.
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
from ._errors import MailboxFull as MailboxFull
from ._errors import ProcessFailed as ProcessFailed
from ._errors import RestartIntensityExceeded as RestartIntensityExceeded
from ._errors import SchemaMismatch as SchemaMismatch
from ._errors import StaleLease as StaleLease
from ._errors import StoreError as StoreError
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import SupervisorError as SupervisorError
from ._errors import UnknownJobKind as UnknownJobKind
from .actors import Actor as Actor
from .actors import ActorContext as ActorContext
from .actors import ActorRef as ActorRef
from .actors import ActorState as ActorState
from .actors import ActorStatistics as ActorStatistics
from .actors import Domain as Domain
from .actors import DomainStatistics as DomainStatistics
from .actors import ProcessResult as ProcessResult
from .actors import Request as Request
from .actors import run_process as run_process
from .protocol import connect as connect
from .supervisors import ActorSpec as ActorSpec
from .supervisors import ActorSystem as ActorSystem
from .supervisors import Backoff as Backoff
from .supervisors import DomainSpec as DomainSpec
from .supervisors import Restart as Restart
from .supervisors import Strategy as Strategy
from .supervisors import SupervisorRef as SupervisorRef
from .supervisors import SupervisorSpec as SupervisorSpec
from .supervisors import SupervisorStatistics as SupervisorStatistics

__version__ = "0.1.0"

__all__ = [
    "ActivationFailed",
    "Actor",
    "ActorContext",
    "ActorError",
    "ActorRef",
    "ActorSpec",
    "ActorState",
    "ActorStatistics",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "CallCycleError",
    "ConfigurationError",
    "ControlConnectionError",
    "ControlError",
    "Domain",
    "DomainSpec",
    "DomainStatistics",
    "FiefdomError",
    "JobError",
    "MailboxFull",
    "ProcessFailed",
    "ProcessResult",
    "Request",
    "Restart",
    "RestartIntensityExceeded",
    "SchemaMismatch",
    "StaleLease",
    "StoreError",
    "StoreUnavailable",
    "Strategy",
    "SupervisorError",
    "SupervisorRef",
    "SupervisorSpec",
    "SupervisorStatistics",
    "UnknownJobKind",
    "connect",
    "run_process",
]
