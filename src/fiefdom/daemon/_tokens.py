"""Tokens of the control channel: from the configuration (inline or in files), or,
when none is configured, an admin token the daemon writes into its data folder
with mode 0600 on first start (where the command line finds it)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .._errors import ConfigurationError
from .._log import get_logger
from ..protocol import Credential, TokenTable
from ._config import Config

log = get_logger("fiefdom.daemon")


def new_token() -> str:
    """A random token (256 bits, URL-safe) that does not begin with ``-``: one that did
    (one in 64) would be taken for an option by ``fiefdom ... --token TOKEN``."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def ensure_admin_token(path: Path) -> str:
    """Read the admin token at ``path``, creating it (0600, never world-readable) if absent."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL: two daemons starting at once must not overwrite each other's token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token_file(path)
    token = new_token()
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
        out.flush()
        os.fsync(out.fileno())
    log.info(
        "admin token written: the command line reads it from this file "
        "(FIEFDOM_TOKEN=$(cat PATH) for a client elsewhere)",
        path=str(path),
    )
    return token


def read_token_file(path: Path) -> str:
    """The token stored in ``path`` (surrounding whitespace removed)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the token file: {exc.strerror}") from None
    if not token:
        raise ConfigurationError(f"{path}: the token file is empty")
    return token


def configured_credentials(config: Config) -> list[Credential]:
    """The tokens ``control.tokens`` configures (reading their files), checked; creates
    nothing. Raises ConfigurationError naming the entry that is wrong."""
    credentials: list[Credential] = []
    for index, spec in enumerate(config.control.tokens):
        where = f"control.tokens[{index}]"
        if (spec.token is None) == (spec.token_file is None):
            raise ConfigurationError(f"{where}: give exactly one of 'token' or 'token_file'")
        if spec.token is not None:
            secret = spec.token
        else:
            assert spec.token_file is not None
            try:
                secret = read_token_file(Path(config.base_dir) / spec.token_file)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}.token_file: {exc}") from None
        if len(secret) < 16:
            raise ConfigurationError(f"{where}: a token must have at least 16 characters")
        credentials.append(Credential(secret.encode(), spec.role, spec.name or where))
    return credentials


def token_table(config: Config) -> TokenTable:
    """The tokens the daemon accepts (creating the admin token when none is configured)."""
    credentials = configured_credentials(config)
    if not credentials:
        admin = ensure_admin_token(config.admin_token_path)
        credentials.append(Credential(admin.encode(), "admin", "admin.token"))
    return TokenTable(credentials)
