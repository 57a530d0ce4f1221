"""Versioned schema migrations, one SQL file per version and backend
(``NNNN_name.sql``), applied in order by ``store.migrate()``."""

from __future__ import annotations

import importlib.resources
from typing import Literal, NamedTuple


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def load(backend: Literal["sqlite", "postgres"]) -> list[Migration]:
    """The backend's migrations in version order; versions must be 1, 2, 3, ..."""
    folder = importlib.resources.files(__name__).joinpath(backend)
    found: list[Migration] = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        number, _, rest = name.partition("_")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort()
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"{backend} migrations skip version {expected}")
    return found
