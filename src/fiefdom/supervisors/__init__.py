"""Supervisors, child specifications, restart strategies and the ActorSystem root.

``ChildSpec`` is what a supervisor can supervise: an ``ActorSpec``, a ``DomainSpec``
or a nested ``SupervisorSpec``.
"""

from ._spec import ActorSpec as ActorSpec
from ._spec import Backoff as Backoff
from ._spec import ChildSpec as ChildSpec
from ._spec import DomainSpec as DomainSpec
from ._spec import Restart as Restart
from ._spec import Service as Service
from ._spec import ServiceSpec as ServiceSpec
from ._spec import Strategy as Strategy
from ._spec import SupervisorSpec as SupervisorSpec
from ._supervisor import ServiceStatistics as ServiceStatistics
from ._supervisor import SupervisorRef as SupervisorRef
from ._supervisor import SupervisorStatistics as SupervisorStatistics
from ._system import ActorSystem as ActorSystem

__all__ = [
    "ActorSpec",
    "ActorSystem",
    "Backoff",
    "ChildSpec",
    "DomainSpec",
    "Restart",
    "Service",
    "ServiceSpec",
    "ServiceStatistics",
    "Strategy",
    "SupervisorRef",
    "SupervisorSpec",
    "SupervisorStatistics",
]
