"""The vault: resources with validated names and gapless versions (1, 2, 3 ...),
each version pointing at a blob of bytes addressed by its sha256 in a storage
``Location`` (``blobs/ab/cd/<sha256>``: paths come from hashes, never from names).

``Vault.put`` streams bytes to a temp file (hashed, size-limited, fsynced),
publishes the blob file, then commits the version in one transaction (inside the
resource's actor and under its partition's epoch, when given a system and a
cluster ownership): acknowledged means committed. ``Vault.delete`` marks rows and
enqueues the ``SweepBlobs`` job in the same transaction; the sweep removes files
only once unreferenced for the grace period. ``Vault.fsck`` reconciles files and
rows. ``validate_name`` is the one rule for names (``MAX_NAME_BYTES`` bytes at
most). ``VAULT_DOMAIN`` names the vault's domain of per-resource actors.
``VersionState`` is a version's state: ``"live"`` or ``"damaged"``.

``Transforms`` runs transforms (``Thumbnail`` with Pillow, ``Command``: an owned
subprocess, or any ``Transform``) as ``TransformVersion`` jobs in the resource's
actor: each reads a version and writes the resource's next version, its progress
kept as ``TransformProgress``.

Over HTTP: ``VaultHttp`` mounts the vault's routes (and tus 1.0 resumable uploads,
``TusUploads``) on an aiohttp application, as the daemon does on its control
server; ``VaultClient`` is their Python client (``Stored``: a committed version).
See docs/vault.md."""

from .._errors import BadRange as BadRange
from .._errors import BlobMissing as BlobMissing
from .._errors import ChecksumMismatch as ChecksumMismatch
from .._errors import InvalidName as InvalidName
from .._errors import LocationMismatch as LocationMismatch
from .._errors import LocationUnavailable as LocationUnavailable
from .._errors import NotFound as NotFound
from .._errors import QuotaExceeded as QuotaExceeded
from .._errors import TooLarge as TooLarge
from .._errors import VaultError as VaultError
from ._client import Stored as Stored
from ._client import VaultClient as VaultClient
from ._disk import Download as Download
from ._http import VaultHttp as VaultHttp
from ._model import FsckReport as FsckReport
from ._model import Location as Location
from ._model import MissingBlob as MissingBlob
from ._model import PutResult as PutResult
from ._model import ResourceInfo as ResourceInfo
from ._model import ResourcePage as ResourcePage
from ._model import VaultStats as VaultStats
from ._model import VersionInfo as VersionInfo
from ._model import VersionState as VersionState
from ._names import MAX_NAME_BYTES as MAX_NAME_BYTES
from ._names import validate_name as validate_name
from ._transforms import Command as Command
from ._transforms import Progress as Progress
from ._transforms import Thumbnail as Thumbnail
from ._transforms import Transform as Transform
from ._transforms import TransformProgress as TransformProgress
from ._transforms import Transforms as Transforms
from ._transforms import TransformVersion as TransformVersion
from ._tus import TusUploads as TusUploads
from ._vault import VAULT_DOMAIN as VAULT_DOMAIN
from ._vault import SweepBlobs as SweepBlobs
from ._vault import Vault as Vault

__all__ = [
    "MAX_NAME_BYTES",
    "VAULT_DOMAIN",
    "BadRange",
    "BlobMissing",
    "ChecksumMismatch",
    "Command",
    "Download",
    "FsckReport",
    "InvalidName",
    "Location",
    "LocationMismatch",
    "LocationUnavailable",
    "MissingBlob",
    "NotFound",
    "Progress",
    "PutResult",
    "QuotaExceeded",
    "ResourceInfo",
    "ResourcePage",
    "Stored",
    "SweepBlobs",
    "Thumbnail",
    "TooLarge",
    "Transform",
    "TransformProgress",
    "TransformVersion",
    "Transforms",
    "TusUploads",
    "Vault",
    "VaultClient",
    "VaultError",
    "VaultHttp",
    "VaultStats",
    "VersionInfo",
    "VersionState",
    "validate_name",
]
