"""The daemon's data folder: checked before anything is written into it, held by one
daemon at a time (an exclusive ``flock`` on ``daemon.lock``, for the daemon's whole
life), and where the running daemon publishes its address (``control.json``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from pathlib import Path

from .._errors import ConfigurationError

LOCK_FILE = "daemon.lock"
ENDPOINT_FILE = "control.json"


def check_data_dir(path: Path) -> None:
    """Refuse a data folder the daemon could not use or create, naming
    ``daemon.data_dir``; creates nothing."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        _check_creatable(path)
        return
    except PermissionError:
        raise ConfigurationError(
            f"daemon.data_dir: cannot reach {path}: permission denied on a folder above it; "
            "give this user access to it, or set daemon.data_dir to another folder"
        ) from None
    if not stat.S_ISDIR(mode):
        raise ConfigurationError(
            f"daemon.data_dir: {path} is a file, not a folder; move it away, "
            "or set daemon.data_dir to a folder"
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"daemon.data_dir: {path} is not readable and writable by this user: permission "
            "denied; give this user access to it, or set daemon.data_dir to another folder"
        )


def _check_creatable(path: Path) -> None:
    # The nearest folder above that exists is where the first mkdir would happen.
    ancestor = path.parent
    while True:
        try:
            mode = ancestor.stat().st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            ancestor = ancestor.parent
        except PermissionError:
            mode = None
            break
    if mode is not None and not stat.S_ISDIR(mode):
        raise ConfigurationError(
            f"daemon.data_dir: cannot create {path}: {ancestor} is a file; "
            "set daemon.data_dir to a folder"
        )
    if mode is None or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"daemon.data_dir: cannot create {path}: permission denied in {ancestor}; "
            "create it for this user, or set daemon.data_dir to a folder it may write"
        )


class DataDirLock:
    """The exclusive lock of one daemon on its data folder. The lock is the open file's
    ``flock``, so it ends with the process whatever way it ends (``kill -9`` too); the
    file keeps the pid of its last holder, for the message of a daemon refused."""

    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self.path = data_path / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire_existing(self) -> None:
        """Take the lock if its file exists already (creating nothing); raise
        ConfigurationError naming the daemon that holds it."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # a new data folder: acquire() creates the file
        except PermissionError:
            raise ConfigurationError(self._no_access()) from None
        self._take(fd)

    def acquire(self) -> None:
        """Take the lock, creating the data folder and the lock file if they are new."""
        if self._fd is not None:
            return
        self.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except PermissionError:
            raise ConfigurationError(self._no_access()) from None
        self._take(fd)

    def _no_access(self) -> str:
        return (
            f"daemon.data_dir: cannot open {self.path}: permission denied; give this user "
            "access to it, or set daemon.data_dir to another folder"
        )

    def _take(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigurationError(self._refusal()) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def _refusal(self) -> str:
        holder = "another daemon"
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.path.read_text(encoding="utf-8").strip())
            holder = f"the daemon with pid {pid}"
            endpoint = read_endpoint(self.data_path)
            if endpoint is not None and endpoint.get("pid") == pid:
                holder += f" at {endpoint['url']}"
            else:
                holder += " (still starting)"
        return (
            f"daemon.data_dir: {self.data_path} is in use by {holder}; stop it first, "
            "or set daemon.data_dir to another folder"
        )

    def release(self) -> None:
        """Let the lock go. The file stays: removing it could let a starting daemon lock
        a file that is no longer the one the next daemon opens."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_endpoint(data_path: Path) -> dict[str, object] | None:
    """What the running daemon published (``url``, ``pid``, ``name``), if readable."""
    try:
        info = json.loads((data_path / ENDPOINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("url"), str) else None


def publish_endpoint(data_path: Path, url: str, name: str) -> None:
    """Write ``control.json`` (atomically: a reader never sees half of it)."""
    path = data_path / ENDPOINT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "name": name}), encoding="utf-8")
    os.replace(tmp, path)


def withdraw_endpoint(data_path: Path) -> None:
    """Remove ``control.json`` (only the daemon holding the folder's lock may)."""
    with contextlib.suppress(FileNotFoundError):
        (data_path / ENDPOINT_FILE).unlink()
