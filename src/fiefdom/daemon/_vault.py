"""The daemon's vault (the ``[vault]`` section): one storage location under the
data folder, the vault on the daemon's store (each resource's commits and deletes in
its actor of the daemon's system, one at a time), its HTTP routes mounted on the
control server, its sweep jobs on the daemon's engine, and a supervised service
that reconciles files and rows once at start (``fsck`` without repair, one summary
line) and removes expired resumable uploads from then on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._errors import ConfigurationError, FiefdomError, LocationMismatch
from .._log import get_logger
from ..jobs import JobEngine
from ..protocol._server import HttpMount
from ..supervisors import ActorSystem
from ..vault import VAULT_DOMAIN, Vault, VaultHttp
from ..vault._disk import prepare
from ._config import Config
from ._jobs import JobRegistrar
from ._storage import Store

log = get_logger("fiefdom.vault")


class _EngineNode:
    """The fencing of the daemon's vault: the epochs of the engine's node, whichever
    it is now (a restart of the engine gives it a new one). Before the engine has
    started, and once it has stopped, this daemon owns nothing: a commit is refused
    (``OwnerUnavailable``, HTTP 503) rather than run unfenced."""

    def __init__(self, engine: Callable[[], JobEngine | None]) -> None:
        self._engine = engine

    def epoch(self, partition: int) -> int | None:
        engine = self._engine()
        node = None if engine is None else engine.ownership
        return None if node is None else node.epoch(partition)


class DaemonVault:
    """The vault of one daemon run (nothing at all when ``vault.enabled`` is false)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.vault: Vault | None = None
        self.http: VaultHttp | None = None

    def open(
        self,
        store: Store,
        system: ActorSystem,
        registrar: JobRegistrar | None = None,
        engine: Callable[[], JobEngine | None] = lambda: None,
    ) -> list[HttpMount]:
        """Create the vault on ``store``, its commits and deletes run in per-resource
        actors of ``system`` (its location's folders made now: a location that cannot
        be written fails the start, naming the setting); returns the routes to mount
        on the control server.

        ``registrar`` (the daemon's job engine is to run): the cluster places the
        vault's domain, as it does the modules' domains, so that each resource's
        commits and deletes run in its actor on the daemon owning it (forwarded
        there from the others), and each is fenced with the epoch under which the
        engine's node (``engine()``, whichever it is now) owns it."""
        settings = self.config.vault
        if not settings.enabled:
            return []
        locations = self.config.vault_locations()
        for location in locations:
            try:
                prepare(location)
                (location.path / "uploads").mkdir(exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"vault.path: cannot use {location.path} as the storage of the vault's "
                    f"location {location.name!r}: {exc}"
                ) from exc
        self.vault = Vault(
            store,
            locations,
            system=system,
            ownership=None if registrar is None else _EngineNode(engine),
            grace=settings.grace,
            max_size=settings.max_upload_bytes,
        )
        if registrar is not None:
            assert self.vault.domain is not None
            registrar.domain(VAULT_DOMAIN, self.vault.domain)
        self.http = VaultHttp(
            self.vault,
            max_upload=settings.max_upload_bytes,
            upload_expiry=settings.upload_expiry,
            idle_timeout=settings.idle_timeout,
        )
        return [self.http.mount]

    async def attach(self) -> None:
        """Check that the location's folder is the one the store knows under its name
        (recording it the first time): a daemon whose folder is another one fails
        its start with one line naming both and the settings to change."""
        if self.vault is None:
            return
        try:
            await self.vault.attach()
        except LocationMismatch as exc:
            settings = (
                "vault.path and vault.location"
                if exc.location == self.config.vault.location
                else "vault.locations"
            )
            raise ConfigurationError(
                f"{settings.split()[0]}: {exc} (settings {settings}; or vault.enabled = false)"
            ) from None

    def register(self, engine: JobEngine) -> None:
        """Run the vault's sweep jobs on the daemon's engine."""
        if self.vault is not None:
            self.vault.register(engine)

    async def background(self) -> None:
        """The reconciliation at start, then the expiry of resumable uploads and the
        sweep of due blobs, until cancelled: run by the daemon as its supervised
        service ``vault``, the last child of its tree, so that it stops before the
        store it uses closes."""
        assert self.vault is not None
        assert self.http is not None
        if self.config.vault.fsck_at_start:
            await self._fsck()
        # Often enough that an expired upload goes within a tenth of its expiry.
        every = max(1.0, min(600.0, self.config.vault.upload_expiry / 10))
        while True:
            try:
                removed = await self.http.uploads.expire()
                if removed:
                    log.info("expired resumable uploads removed", removed=removed)
            except (FiefdomError, OSError) as exc:
                log.warning("removing expired uploads failed", error=str(exc) or type(exc).__name__)
            try:
                # What the sweep jobs left (a blob in a location their daemon lacks,
                # a job given up): swept here once due, by a daemon that has it.
                swept = await self.vault.sweep_due()
                if swept:
                    log.info("due blobs swept", swept=swept)
            except (FiefdomError, OSError) as exc:
                log.warning("sweeping due blobs failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(every)

    async def _fsck(self) -> None:
        assert self.vault is not None
        try:
            report = await self.vault.fsck(repair=False)
        except (FiefdomError, OSError) as exc:
            log.warning("vault fsck at start failed", error=str(exc) or type(exc).__name__)
            return
        log.info(
            "vault checked",
            paths=[str(loc.path) for loc in self.vault.locations.values()],
            blobs_checked=report.blobs_checked,
            missing=len(report.missing),
            missing_versions=sum(len(m.versions) for m in report.missing),
            orphans_removed=report.orphans_removed,
            orphans_kept=report.orphans_kept,
            temp_removed=report.temp_removed,
            temp_kept=report.temp_kept,
            swept=report.swept,
            foreign=len(report.foreign),
            clean=report.clean,
        )
