"""A real daemon with its vault, for the vault's HTTP, tus and CLI tests: the
harness of tests/daemon, tokens of each role, a small upload limit, and the store of
the dialect asked for (a fresh SQLite file, or a fresh schema on PostgreSQL)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config

MAX_UPLOAD = 8 << 20  # [vault] max_upload_bytes of the test daemons

__all__ = ["MAX_UPLOAD", "TOKENS", "DaemonProcess", "raw_request", "start"]


def start(folder: Path, store_url: str | None = None, vault: str = "") -> DaemonProcess:
    """A started daemon in ``folder`` (no user modules), with the three tokens."""
    store = f'[store]\nurl = "{store_url}"\n' if store_url else ""
    config = write_config(
        folder,
        modules=(),
        control=TOKENS_TOML,
        extra=f"{store}\n[vault]\nmax_upload_bytes = {MAX_UPLOAD}\n{vault}\n",
    )
    return DaemonProcess(config, token=TOKENS["admin"]).start()


def raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` (bytes exactly as written: a path no client library would
    normalise) to the daemon at ``url``; the status, headers and body of the reply."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


def files(path: Path) -> Iterator[Path]:
    """Every regular file below ``path``."""
    return (p for p in sorted(path.rglob("*")) if p.is_file())
