"""Storage: one ``Store`` interface over SQLite (the embedded default) and
PostgreSQL, versioned migrations, and the durable job engine.

``SCHEMA_VERSION`` is the database schema version this code reads and writes;
``open_store`` refuses a database at any other version."""

from ._engine import EngineState as EngineState
from ._engine import EngineStatistics as EngineStatistics
from ._engine import JobEngine as JobEngine
from ._engine import PruneJobs as PruneJobs
from ._engine import QueueStatistics as QueueStatistics
from ._engine import Retention as Retention
from ._jobs import AttemptError as AttemptError
from ._jobs import Cancel as Cancel
from ._jobs import ClaimedJob as ClaimedJob
from ._jobs import Discard as Discard
from ._jobs import Enqueued as Enqueued
from ._jobs import ExponentialBackoff as ExponentialBackoff
from ._jobs import Job as Job
from ._jobs import JobContext as JobContext
from ._jobs import JobEvent as JobEvent
from ._jobs import JobInfo as JobInfo
from ._jobs import JobOptions as JobOptions
from ._jobs import JobOutcome as JobOutcome
from ._jobs import JobState as JobState
from ._jobs import Lease as Lease
from ._jobs import Outcome as Outcome
from ._jobs import QueueCount as QueueCount
from ._jobs import Snooze as Snooze
from ._jobs import Unique as Unique
from ._store import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import Notifications as Notifications
from ._store import Store as Store
from ._store import StoreState as StoreState
from ._store import Transaction as Transaction
from ._store import open_store as open_store

__all__ = [
    "SCHEMA_VERSION",
    "AttemptError",
    "Cancel",
    "ClaimedJob",
    "Discard",
    "EngineState",
    "EngineStatistics",
    "Enqueued",
    "ExponentialBackoff",
    "Job",
    "JobContext",
    "JobEngine",
    "JobEvent",
    "JobInfo",
    "JobOptions",
    "JobOutcome",
    "JobState",
    "Lease",
    "Notifications",
    "Outcome",
    "PruneJobs",
    "QueueCount",
    "QueueStatistics",
    "Retention",
    "Snooze",
    "Store",
    "StoreState",
    "Transaction",
    "Unique",
    "open_store",
]
