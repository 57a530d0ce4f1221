"""What a test may not leave behind, read from /proc and pg_stat_activity: file descriptors
(sockets and SQLite files named as such), child processes and PostgreSQL connections. The
conftest's guard takes a Snapshot before each test and fails the test on what is new after it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

SQLITE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite", ".sqlite3")


def open_fds() -> dict[int, str]:
    """Every open descriptor of this process and what it points at."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir used to read the directory, closed since
            continue
    return fds


def _address(text: str) -> str:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp* prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}" if ip.version == 4 else f"[{ip}]:{int(port, 16)}"


def _sockets() -> dict[str, str]:
    """Socket inode -> a readable description, for this process's network namespace."""
    found: dict[str, str] = {}
    for kind in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/self/net/{kind}") as table:
                lines = table.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = _address(fields[1]), _address(fields[2]), fields[9]
            peer = "" if remote.endswith(":0") else f" -> {remote}"
            note = " (PostgreSQL)" if remote.endswith(":5432") else ""
            found[inode] = f"{kind[:3].upper()} socket {local}{peer}{note}"
    try:
        with open("/proc/self/net/unix") as table:
            lines = table.readlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        path = fields[7] if len(fields) > 7 else "(unnamed)"
        found[fields[6]] = f"unix socket {path}"
    return found


def describe_fds(fds: dict[int, str]) -> list[str]:
    """One line per descriptor: sockets with their addresses, SQLite files called so."""
    sockets = _sockets() if any(t.startswith("socket:[") for t in fds.values()) else {}
    lines = []
    for fd, target in sorted(fds.items()):
        if target.startswith("socket:["):
            what = sockets.get(target[len("socket:[") : -1], target)
        elif target.endswith(SQLITE_SUFFIXES):
            what = f"SQLite database file {target}"
        else:
            what = target
        lines.append(f"fd {fd}: {what}")
    return lines


def child_processes() -> dict[tuple[int, int], str]:
    """This process's children, alive or not yet reaped: (pid, start time) -> description."""
    me = os.getpid()
    children: dict[tuple[int, int], str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                text = stat.read()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        rest = text[text.rindex(")") + 2 :].split()
        if int(rest[1]) != me:
            continue
        state, started = rest[0], int(rest[19])
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmd:
                command = cmd.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = ""
        label = "zombie, never waited for" if state == "Z" else f"state {state}"
        children[(int(entry.name), started)] = f"pid {entry.name} ({label}): {command[:200]}"
    return children


class PostgresWatch:
    """Lists the server backends connected to one database, through a connection of its own
    (to the maintenance database, so it never counts itself) on a loop in its own thread: test
    loops come and go, and the guard runs between them."""

    def __init__(self, admin_url: str, database: str) -> None:
        import asyncpg

        self.database = database
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="postgres-watch", daemon=True
        )
        self._thread.start()
        self._connection = self._call(asyncpg.connect(admin_url))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def backends(self) -> dict[tuple[int, str], str]:
        """(backend pid, start) -> who it serves, for every connection to the database."""
        rows = self._call(
            self._connection.fetch(
                "SELECT pid, backend_start::text AS started, application_name, host(client_addr)"
                " AS addr, client_port, state, left(query, 120) AS query FROM pg_stat_activity"
                " WHERE datname = $1 AND backend_type = 'client backend'",
                self.database,
            )
        )
        return {
            (row["pid"], row["started"]): (
                f"backend pid {row['pid']} for client {row['addr']}:{row['client_port']}"
                f" (application_name {row['application_name']!r}, {row['state']},"
                f" last query {row['query']!r})"
            )
            for row in rows
        }

    def close(self) -> None:
        self._call(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@dataclass(frozen=True)
class Snapshot:
    """The resources a test could leak, at one instant."""

    fds: dict[int, str]
    children: dict[tuple[int, int], str]
    backends: dict[tuple[int, str], str] = field(default_factory=dict)

    @classmethod
    def take(cls, postgres: PostgresWatch | None) -> Snapshot:
        return cls(
            fds=open_fds(),
            children=child_processes(),
            backends=postgres.backends() if postgres is not None else {},
        )

    def new_since(self, before: Snapshot) -> Snapshot:
        """What this snapshot holds that `before` did not (an fd number reused for another
        file counts as new)."""
        return Snapshot(
            fds={fd: t for fd, t in self.fds.items() if before.fds.get(fd) != t},
            children={k: v for k, v in self.children.items() if k not in before.children},
            backends={k: v for k, v in self.backends.items() if k not in before.backends},
        )

    def empty(self) -> bool:
        return not (self.fds or self.children or self.backends)

    def report(self, database: str | None) -> list[str]:
        lines = []
        if self.fds:
            lines.append(f"{len(self.fds)} file descriptor(s) left open:")
            lines += [f"  {line}" for line in describe_fds(self.fds)]
        if self.children:
            lines.append(f"{len(self.children)} child process(es) left behind:")
            lines += [f"  {line}" for line in self.children.values()]
        if self.backends:
            lines.append(
                f"{len(self.backends)} PostgreSQL connection(s) to {database} left open"
                " (pg_stat_activity):"
            )
            lines += [f"  {line}" for line in self.backends.values()]
        return lines


def wait_for_release(
    before: Snapshot,
    postgres: PostgresWatch | None,
    *,
    grace: float,
    poll: Callable[[], None],
    clock: Callable[[], float],
) -> Snapshot:
    """What is still new since `before` once everything the test let go of is gone, or at
    the deadline: a server backend exits a moment after its client hung up, and a child
    that has exited is reaped by a watcher thread. `poll` waits a little between looks."""
    deadline = clock() + grace
    while True:
        leaked = Snapshot.take(postgres).new_since(before)
        if leaked.empty() or clock() >= deadline:
            return leaked
        poll()
