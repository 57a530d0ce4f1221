"""The job engine: job kinds' handlers and outcomes, and ``JobEngine``, which
claims jobs from a store, runs them (inside the owning actor for a kind that names
a domain), keeps their leases, records outcomes in batches, and runs the
maintenance services (rescuer, promoter, queue watcher, listener, periodic
enqueuer, pruning). The store's engine-side queries are reached through its
internal port (``fiefdom.storage.engine_queries``), never its public face.
``Ownership`` is the port through which an engine serving a domain learns the
partitions it may run (``fiefdom.cluster`` registers its implementation with
``register_ownership``)."""

from .._durations import StoreTimes as StoreTimes
from ._engine import EngineStatistics as EngineStatistics
from ._engine import JobEngine as JobEngine
from ._engine import QueueStatistics as QueueStatistics
from ._kinds import Cancel as Cancel
from ._kinds import Discard as Discard
from ._kinds import DomainJobContext as DomainJobContext
from ._kinds import JobContext as JobContext
from ._kinds import JobOutcome as JobOutcome
from ._kinds import Snooze as Snooze
from ._kinds import is_snooze as is_snooze
from ._ownership import Ownership as Ownership
from ._ownership import register_ownership as register_ownership
from ._pruner import PruneJobs as PruneJobs
from ._pruner import Retention as Retention

__all__ = [
    "Cancel",
    "Discard",
    "DomainJobContext",
    "EngineStatistics",
    "JobContext",
    "JobEngine",
    "JobOutcome",
    "Ownership",
    "PruneJobs",
    "QueueStatistics",
    "Retention",
    "Snooze",
    "StoreTimes",
    "is_snooze",
    "register_ownership",
]
