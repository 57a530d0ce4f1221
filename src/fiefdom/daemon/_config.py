"""The daemon's configuration: TOML decoded into msgspec Structs, with single
settings overridden from the environment as ``FIEFDOM_<SECTION>__<KEY>``. A wrong
key or type fails at start with a message naming the key and what was expected."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .._errors import ConfigurationError
from ..protocol import ControlSettings
from ..vault import Location

ENV_PREFIX = "FIEFDOM_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
# Bounds checked when the configuration is decoded; the message names the key.
Seconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class DaemonSection(_Section):
    name: str = "fiefdom"
    # Relative paths are resolved against the folder of the configuration file.
    data_dir: str = "data"
    shutdown_timeout: Seconds = 30.0  # a drain lets running work finish this long, then cancels
    log_level: LogLevel = "info"
    # Where logs go: stderr. "auto" writes the human console format when stderr is a
    # terminal and JSON lines otherwise (journald, a container's log collector).
    log_format: Literal["auto", "console", "json"] = "auto"
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    modules: list[str] = msgspec.field(default_factory=list)  # each has a setup(daemon) hook
    python_path: list[str] = msgspec.field(default_factory=list)  # folders to import them from


class StoreSection(_Section):
    url: str | None = None  # default: sqlite:///<data_dir>/fiefdom.db
    migrate: bool = True  # apply pending migrations at start (else refuse an old schema)
    # PostgreSQL only: the connection pool's bounds (the engine's notifications use one
    # connection more, outside it), and how long one statement may run before the
    # server cancels it (unset: no limit, PostgreSQL's default).
    pool_min_size: Annotated[int, msgspec.Meta(ge=0)] = 1
    pool_max_size: Annotated[int, msgspec.Meta(ge=2)] = 10
    statement_timeout: PositiveSeconds | None = None


class QueueSection(_Section):
    concurrency: AtLeastOne = 10
    paused: bool = False  # pause it at start; a pause is kept in the database, for every node


class RetentionSection(_Section):
    """How long final jobs are kept before the engine's pruning job deletes them."""

    enabled: bool = True  # false: keep every final job (prune them yourself)
    completed: PositiveSeconds = 24 * 3600.0
    cancelled: PositiveSeconds = 7 * 24 * 3600.0
    discarded: PositiveSeconds = 7 * 24 * 3600.0
    every: PositiveSeconds = 3600.0  # how often the pruning job runs


class JobsSection(_Section):
    enabled: bool = True
    queues: dict[str, QueueSection] = msgspec.field(
        default_factory=lambda: {"default": QueueSection()}
    )
    # Seconds between claims of an idle queue when nothing wakes it (PostgreSQL's
    # notifications and this process's own enqueues wake it at once).
    poll_interval: PositiveSeconds = 1.0
    # A claim holds a job for ``lease`` seconds, renewed every ``heartbeat`` (default:
    # a third of the lease); another engine rescues a job whose lease has expired.
    lease: PositiveSeconds = 15.0
    heartbeat: PositiveSeconds | None = None
    rescue_interval: PositiveSeconds = 2.0  # how often expired leases are looked for
    batch_size: AtLeastOne = 100  # jobs claimed (and outcomes written) per statement
    # How long a drain (SIGTERM, `fiefdom drain`, `fiefdom stop`) lets running jobs
    # finish before cancelling them and giving them back (no attempt used). Default:
    # daemon.shutdown_timeout.
    drain_timeout: Seconds | None = None
    # How many times a job may be snoozed (a handler's Snooze, which uses no attempt)
    # before the next snooze discards it; "unlimited": never.
    max_snoozes: Annotated[int, msgspec.Meta(ge=0)] | Literal["unlimited"] = 100
    retention: RetentionSection = msgspec.field(default_factory=RetentionSection)


class ClusterSection(_Section):
    # Where this daemon's node serves the other nodes of the store's cluster (they
    # forward asks and tells for the keys it owns there): loopback, any free port, by
    # default (daemons of one host). ``advertise``: the HOST:PORT the others use to
    # reach it (unset: the address it listens on), for daemons on several hosts.
    listen: str = "127.0.0.1:0"
    advertise: str | None = None


class VaultLocationSection(_Section):
    """A further storage location of the vault (``[[vault.locations]]``)."""

    # The name the database records for its blobs, and its folder (relative paths:
    # to data_dir).
    name: str
    path: str
    # As vault.quota_bytes, for this location. None: no quota.
    quota_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None


class VaultSection(_Section):
    """The vault (see docs/vault.md): resources with versions, stored in one location
    under the data folder and served over HTTP on the control address."""

    enabled: bool = True
    # The storage location's folder (relative paths: to data_dir) and the name the
    # database records for it (the folder may move as long as the name stays).
    path: str = "vault"
    location: str = "vault"
    # The largest upload taken (PUT or tus), in bytes: 413 past it.
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 << 30
    # The bytes the location's blobs may take together (each counted once): a new
    # blob past it is refused with 413 quota_exceeded. None: no quota.
    quota_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # How long an unreferenced blob, an abandoned temp file or a blob file without a
    # row is kept before it is removed (longer than any upload's commit may take).
    grace: Seconds = 3600.0
    # A resumable (tus) upload not written to for this long is removed.
    upload_expiry: PositiveSeconds = 24 * 3600.0
    # An upload whose body stalls this long between two chunks is abandoned.
    idle_timeout: PositiveSeconds = 60.0
    # Reconcile files and rows (fsck without repair) at start, in the background;
    # one summary line is logged.
    fsck_at_start: bool = True
    # Further storage locations: their versions are served, swept and checked like
    # the main one's (a disk being retired, the folder of a location a daemon used
    # before). Uploads go to the location named by upload_to.
    locations: list[VaultLocationSection] = msgspec.field(default_factory=list)
    # The location new uploads go to: vault.location (the default) or the name of
    # one of vault.locations.
    upload_to: str | None = None


class RecorderSection(_Section):
    folder: str = "flight-recorder"  # relative to data_dir
    capacity: AtLeastOne = 10_000  # events kept (debug included)


class Config(_Section):
    """The daemon's configuration: ``[daemon]``, ``[store]``, ``[control]``, ``[jobs]``,
    ``[recorder]``, ``[cluster]``, ``[vault]`` and the user modules' own
    ``[app.<module>]`` sections."""

    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    control: ControlSettings = msgspec.field(default_factory=ControlSettings)
    jobs: JobsSection = msgspec.field(default_factory=JobsSection)
    recorder: RecorderSection = msgspec.field(default_factory=RecorderSection)
    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    vault: VaultSection = msgspec.field(default_factory=VaultSection)
    app: dict[str, Any] = msgspec.field(default_factory=dict)  # free-form, for user modules
    # Where relative paths start; set by load_config, not read from the file.
    base_dir: str = "."

    @property
    def data_path(self) -> Path:
        return (Path(self.base_dir) / self.daemon.data_dir).resolve()

    @property
    def store_url(self) -> str:
        if self.store.url is not None:
            return self.store.url
        return f"sqlite:///{self.data_path / 'fiefdom.db'}"

    @property
    def drain_timeout(self) -> float:
        """How long a drain lets running jobs finish (``jobs.drain_timeout``, else
        ``daemon.shutdown_timeout``)."""
        drain = self.jobs.drain_timeout
        return self.daemon.shutdown_timeout if drain is None else drain

    @property
    def vault_path(self) -> Path:
        return (self.data_path / self.vault.path).resolve()

    def vault_locations(self) -> list[Location]:
        """The vault's storage locations, the one uploads go to first; a
        ConfigurationError names the setting that is wrong."""
        vault = self.vault
        try:
            main = Location(vault.location, self.vault_path, quota=vault.quota_bytes)
        except ConfigurationError as exc:
            raise ConfigurationError(f"vault.location: {exc}") from None
        found = [main]
        for n, extra in enumerate(vault.locations):
            where = f"vault.locations[{n}]"
            try:
                loc = Location(
                    extra.name, (self.data_path / extra.path).resolve(), quota=extra.quota_bytes
                )
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}.name: {exc}") from None
            for other in found:
                if loc.name == other.name:
                    raise ConfigurationError(
                        f"{where}.name: {loc.name!r} names another location already"
                    )
                if loc.path == other.path:
                    raise ConfigurationError(
                        f"{where}.path: {loc.path} is location {other.name!r}'s folder already"
                    )
            found.append(loc)
        if vault.upload_to is not None:
            chosen = [loc for loc in found if loc.name == vault.upload_to]
            if not chosen:
                raise ConfigurationError(
                    f"vault.upload_to: no location is named {vault.upload_to!r}; the "
                    "vault's are " + ", ".join(repr(loc.name) for loc in found)
                )
            found.remove(chosen[0])
            found.insert(0, chosen[0])
        return found

    @property
    def recorder_path(self) -> Path:
        return self.data_path / self.recorder.folder

    @property
    def admin_token_path(self) -> Path:
        return self.data_path / "admin.token"

    @property
    def endpoint_path(self) -> Path:
        """Where the running daemon writes its actual address and pid."""
        return self.data_path / "control.json"


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    overrides: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in path):
            raise ConfigurationError(f"{name}: empty part in the name of an override")
        stripped = value.strip()
        parsed: Any = value
        if stripped.startswith(("[", "{")):
            # Lists and tables are written in TOML syntax.
            try:
                parsed = tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigurationError(f"{name}: not a TOML array or table: {exc}") from None
        overrides[path] = (name, parsed)
    return overrides


def _apply(raw: dict[str, Any], path: tuple[str, ...], value: Any, env_name: str) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigurationError(
                f"{env_name}: {'.'.join(path)} cannot be set: {part!r} is not a table"
            )
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or the built-in defaults when None), apply environment overrides
    and validate. Raises ConfigurationError naming the key that is wrong."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "the defaults"
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        source = str(file)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"{file}: configuration file not found") from None
        except OSError as exc:
            raise ConfigurationError(f"{file}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{file}: not valid TOML: {exc}") from None
        base_dir = file.resolve().parent
    if "base_dir" in raw:
        raise ConfigurationError(f"{source}: 'base_dir' is not a setting (it is the file's folder)")
    overrides = _env_overrides(environ)
    if raw:
        # The file is checked strictly on its own first: TOML has types, so a value
        # of the wrong kind there ("30" for seconds) is a mistake, not text to convert.
        try:
            msgspec.convert({**raw, "base_dir": str(base_dir)}, Config, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(_explain(exc, source, {})) from None
    for key_path, (env_name, value) in overrides.items():
        _apply(raw, key_path, value, env_name)
    raw["base_dir"] = str(base_dir)
    try:
        # Not strict: environment values arrive as text and must become the field's
        # type ("9000" -> 9000); the file's own values have passed the strict check.
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(_explain(exc, source, overrides)) from None
    try:
        config.control.host_port()
    except ValueError as exc:
        origin = overrides.get(("control", "listen"))
        where = f" (from the environment variable {origin[0]})" if origin else ""
        raise ConfigurationError(f"{source}: {exc}{where}") from None
    control = config.control
    for given, missing in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        if getattr(control, given) is not None and getattr(control, missing) is None:
            raise ConfigurationError(
                f"{source}: control.{missing}: must be set with control.{given} "
                "(TLS needs both the certificate and its private key); set both, or neither"
            )
    store = config.store
    if store.pool_min_size > store.pool_max_size:
        raise ConfigurationError(
            f"{source}: store.pool_min_size: must be at most store.pool_max_size "
            f"({store.pool_max_size}), got {store.pool_min_size}"
        )
    jobs = config.jobs
    if jobs.heartbeat is not None and jobs.heartbeat >= jobs.lease:
        raise ConfigurationError(
            f"{source}: jobs.heartbeat: must be shorter than jobs.lease ({jobs.lease:g}s), "
            f"got {jobs.heartbeat:g}s; leave it unset for a third of the lease"
        )
    try:
        config.vault_locations()
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    return config


def _explain(
    exc: msgspec.ValidationError,
    source: str,
    overrides: Mapping[tuple[str, ...], tuple[str, Any]],
) -> str:
    text = str(exc)
    message, marker, where = text.rpartition(" - at `")
    if not marker:
        message, where = text, "$"
    key = where.rstrip("`").removeprefix("$").lstrip(".")
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        key = f"{key}.{field}" if key else field
        return f"{source}: unknown key {key!r} (check its spelling and section)"
    detail = message[0].lower() + message[1:] if message else "invalid value"
    origin = ""
    for key_path, (env_name, _) in overrides.items():
        if ".".join(key_path) == key:
            origin = f" (from the environment variable {env_name})"
    return f"{source}: {key}: {detail}{origin}"
