"""The vault's records: what it hands back (msgspec Structs, one type everywhere:
the HTTP API serves these), and its storage locations. A record read from a newer
daemon may carry fields this code does not know: they are ignored."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import msgspec

from .._errors import (
    BadRange,
    BlobMissing,
    ChecksumMismatch,
    ConfigurationError,
    FiefdomError,
    InvalidName,
    LocationMismatch,
    LocationUnavailable,
    NotFound,
    QuotaExceeded,
    TooLarge,
)

VersionState = Literal["live", "damaged"]

_LOCATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """A storage location: a directory holding ``tmp/`` (uploads in progress) and
    ``blobs/ab/cd/<sha256>`` (one file per blob, its path made from its hash only).
    ``name`` is what the database records for each blob (1-64 letters, digits,
    ``_.-``), so the directory may move as long as the name stays. ``max_size``
    caps one upload into it (None: no cap). ``quota`` caps the bytes its blobs take
    together (each blob counted once, however many versions share it; a blob
    marked for its sweep counts until its file is removed): a version whose new
    blob would pass it is refused with ``QuotaExceeded`` (None: no quota)."""

    name: str
    path: Path
    max_size: int | None = None
    quota: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _LOCATION_NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"Location name must be 1-64 letters, digits, '_', '.' or '-' (starting "
                f"with a letter or digit), got {self.name!r}"
            )
        object.__setattr__(self, "path", Path(self.path))
        if self.max_size is not None and self.max_size < 0:
            raise ConfigurationError(f"Location max_size must be >= 0, got {self.max_size}")
        if self.quota is not None and self.quota < 0:
            raise ConfigurationError(f"Location quota must be >= 0, got {self.quota}")

    @property
    def tmp(self) -> Path:
        """Where uploads in progress are written."""
        return self.path / "tmp"

    @property
    def blobs(self) -> Path:
        """The root of the blob files."""
        return self.path / "blobs"

    def blob_path(self, sha256: str) -> Path:
        """The file of the blob whose hash is ``sha256`` (lowercase hex)."""
        return self.path / "blobs" / sha256[:2] / sha256[2:4] / sha256


class VersionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a resource: its number (1, 2, 3 ... per resource), the hash and
    size of its bytes, the location holding them, when it was created (unix
    seconds), and its state (``damaged``: its blob file was found missing)."""

    resource: str
    version: int
    sha256: str
    size: int
    location: str
    created_at: float
    state: VersionState = "live"


class PutResult(msgspec.Struct, frozen=True, kw_only=True):
    """One item of a batch (``Vault.put_many``, ``POST /vault/batch``): the version
    it became, or why it did not (``code`` as the HTTP API names it, and
    ``error``, the message); an item with an error stored nothing."""

    name: str
    version: VersionInfo | None = None
    code: str | None = None
    error: str | None = None


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status and code the vault answers ``exc`` with; None for an
    exception that is not one of its refusals (a bug: ``internal``)."""
    for kind, status, code in _ERROR_STATUS:
        if isinstance(exc, kind):
            return status, code
    return None


_ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (InvalidName, 400, "invalid_name"),
    (TooLarge, 413, "too_large"),
    (QuotaExceeded, 413, "quota_exceeded"),
    (ChecksumMismatch, 400, "checksum_mismatch"),
    (BadRange, 416, "bad_range"),
    (NotFound, 404, "not_found"),
    (BlobMissing, 500, "blob_missing"),
    (LocationMismatch, 503, "location_mismatch"),
    (LocationUnavailable, 503, "location_unavailable"),
    (FiefdomError, 503, "unavailable"),
    (ValueError, 400, "invalid_request"),
    (TimeoutError, 408, "body_timeout"),
    (ConnectionError, 400, "body_incomplete"),
)


class ResourceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A resource in a listing: how many versions it has (not counting deleted
    ones), its latest version's number and size (None when it has none left), its
    metadata, and when it was created."""

    name: str
    versions: int
    latest: int | None
    size: int | None
    created_at: float
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class ResourcePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of resources by name, and the cursor of the next page (``after``), or
    None on the last page. Inserts never shift a page: the cursor is the last name."""

    resources: list[ResourceInfo]
    next: str | None


class VaultStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts: live resources and versions, blobs stored (files on disk, those
    waiting for their sweep included) and their bytes, and blobs waiting for their
    sweep. Deduplication is judged by ``blobs`` and ``bytes``."""

    resources: int
    versions: int
    blobs: int
    bytes: int
    pending_sweeps: int


class MissingBlob(msgspec.Struct, frozen=True, kw_only=True):
    """A blob whose file ``fsck`` found missing, and the versions pointing at it."""

    location: str
    sha256: str
    versions: list[tuple[str, int]]


class FsckReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Vault.fsck`` found and did.

    ``blobs_checked``: blob rows whose file was looked for; ``missing``: those whose
    file is gone (with their versions; ``damaged``: versions marked damaged by this
    run, with ``repair``); ``orphans_removed``: blob files without a row, older than
    the grace period, removed; ``orphans_kept``: younger ones, left for a later run;
    ``temp_removed``/``temp_kept``: likewise for upload temp files; ``swept``: blobs
    past their grace period removed; ``foreign``: files in ``blobs/`` that are not
    named like a blob (left alone)."""

    blobs_checked: int = 0
    missing: list[MissingBlob] = msgspec.field(default_factory=list)
    damaged: int = 0
    orphans_removed: int = 0
    orphans_kept: int = 0
    temp_removed: int = 0
    temp_kept: int = 0
    swept: int = 0
    foreign: list[str] = msgspec.field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing missing and nothing foreign."""
        return not self.missing and not self.foreign
