"""Logging of the daemon, configured once at start: every structlog event (debug
included) goes into the flight recorder's ring buffer and to the event hub's
``logs`` topic; only events at or above the configured level are written to
stderr. (Actor crashes and restarts reach the ``actors`` topic from the runtime's
event bus, never from log lines: see ``_events``.)"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..protocol import EventHub, LogEvent

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50, "exception": 40}


class FlightRecorder:
    """A ring buffer of recent log events, written to a folder on a crash and on request."""

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder = folder
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        self._events.append(dict(event_dict))
        return event_dict

    def __len__(self) -> int:
        return len(self._events)

    def dump(self, reason: str) -> tuple[Path, int]:
        """Write the buffer as JSON lines (oldest first); returns the file and the
        number of events written."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.folder / f"flight-{stamp}-{os.getpid()}-{reason}.jsonl"
        n = 1
        while path.exists():
            n += 1
            path = self.folder / f"flight-{stamp}-{os.getpid()}-{reason}-{n}.jsonl"
        events = list(self._events)
        with path.open("w", encoding="utf-8") as out:
            for event in events:
                out.write(json.dumps(event, default=repr) + "\n")
        return path, len(events)


class _HubForwarder:
    """Publishes log events to the hub's ``logs`` topic."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if not self.hub.wanted:
            return event_dict
        event = str(event_dict.get("event", ""))
        now = time.time()
        fields = {
            k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
            for k, v in event_dict.items()
            if k not in ("event", "level", "logger", "timestamp")
        }
        self.hub.publish(
            LogEvent(
                level=str(event_dict.get("level", method)),
                logger=str(event_dict.get("logger", "")),
                event=event,
                at=now,
                fields=fields,
            )
        )
        return event_dict


def _short_error(event_dict: EventDict) -> str | None:
    exc = event_dict.get("exc_info")
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    text = event_dict.get("exception")
    if isinstance(text, str) and text:
        return text.strip().splitlines()[-1]
    return None


class _LevelFilter:
    def __init__(self, level: str) -> None:
        self.level = _LEVELS[level]

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if _LEVELS.get(method, 20) < self.level:
            raise structlog.DropEvent
        return event_dict


class _NamedLogger(structlog.WriteLogger):
    """A WriteLogger that knows the name it was created with (``get_logger(name)``)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self.file = file

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(self.file, str(args[0]) if args else "")


def _add_logger_name(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _exc_to_text(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    # Keep the exception object for the hub's short summary, and add the formatted
    # traceback for the recorder and the renderer.
    exc = event_dict.get("exc_info")
    if exc:
        error = _short_error(event_dict)
        formatted = structlog.processors.format_exc_info(logger, method, dict(event_dict))
        event_dict["exception"] = formatted.get("exception", "")
        event_dict.pop("exc_info", None)
        if error is not None:
            event_dict["error"] = event_dict.get("error", error)
    return event_dict


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``daemon.log_format`` for ``stream``: ``auto`` is ``console`` on a terminal
    (a person reads it) and ``json`` otherwise (a program collects it)."""
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


def configure_logging(
    level: str,
    fmt: str,
    recorder: FlightRecorder,
    hub: EventHub,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process (once, at daemon start). ``fmt`` is
    ``console``, ``json`` or ``auto`` (console on a terminal, JSON otherwise)."""
    stream = stream or sys.stderr
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if resolve_format(fmt, stream) == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Processor] = [
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _HubForwarder(hub),
        _exc_to_text,
        recorder,
        _LevelFilter(level),
        renderer,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=_NamedLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard library (aiohttp, asyncio) log warnings and up.
    logging.basicConfig(
        level=max(logging.WARNING, _LEVELS[level]),
        stream=stream,
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
    )
