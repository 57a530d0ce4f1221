"""Storage: one ``Store`` interface over SQLite (the embedded default) and
PostgreSQL, versioned migrations, and the queries of every table. No policy and
no actors: the job engine (``fiefdom.jobs``) decides, the store records.

``Store`` is the application's face (transactions, enqueue, listing, counting,
cancel, retry, queue pauses). The engine's queries (claim, finish, heartbeat,
rescue, promote, prune) sit behind ``EngineQueries``, the internal port
``engine_queries(store)`` returns; only ``fiefdom.jobs`` uses it. ``leases(store)``
gives ``fiefdom.cluster`` its statements of membership and partition leases
(``Leases``); domain keys hash to ``PARTITIONS`` partitions with ``partition_of``.

``SCHEMA_VERSION`` is the database schema version this code reads and writes;
``open_store`` refuses a database at any other version."""

from .._errors import StoreError as StoreError
from ._jobs import PARTITIONS as PARTITIONS
from ._jobs import AttemptError as AttemptError
from ._jobs import ClaimedJob as ClaimedJob
from ._jobs import DomainJob as DomainJob
from ._jobs import Enqueued as Enqueued
from ._jobs import ExponentialBackoff as ExponentialBackoff
from ._jobs import Job as Job
from ._jobs import JobEvent as JobEvent
from ._jobs import JobInfo as JobInfo
from ._jobs import JobOptions as JobOptions
from ._jobs import JobState as JobState
from ._jobs import Lease as Lease
from ._jobs import Outcome as Outcome
from ._jobs import QueueCount as QueueCount
from ._jobs import Unique as Unique
from ._jobs import partition_of as partition_of
from ._open import engine_queries as engine_queries
from ._open import leases as leases
from ._open import open_store as open_store
from ._queries import EngineQueries as EngineQueries
from ._queries import Leases as Leases
from ._rows import NewJob as NewJob
from ._rows import periodic_row as periodic_row
from ._store import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import Notifications as Notifications
from ._store import Store as Store
from ._store import StoreState as StoreState
from ._store import Transaction as Transaction

__all__ = [
    "PARTITIONS",
    "SCHEMA_VERSION",
    "AttemptError",
    "ClaimedJob",
    "DomainJob",
    "EngineQueries",
    "Enqueued",
    "ExponentialBackoff",
    "Job",
    "JobEvent",
    "JobInfo",
    "JobOptions",
    "JobState",
    "Lease",
    "Leases",
    "NewJob",
    "Notifications",
    "Outcome",
    "QueueCount",
    "Store",
    "StoreError",
    "StoreState",
    "Transaction",
    "Unique",
    "engine_queries",
    "leases",
    "open_store",
    "partition_of",
    "periodic_row",
]
