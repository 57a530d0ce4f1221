"""The library's loggers: quiet until the application says where logs go.

Every module of fiefdom logs through ``get_logger(name)``. Once the application has
configured structlog (``structlog.configure(...)``, as ``fiefdom serve`` does), events
go through that configuration. Until then they go to the standard library's
``logging`` under the same name (``fiefdom.jobs``, ``fiefdom.actor`` ...), where the
``fiefdom`` logger has only a ``NullHandler``: a program that embeds fiefdom prints
nothing of it unless it configures logging, and ``logging.basicConfig()`` shows its
warnings and errors as one line each (``event key=value ...``, with the traceback of
an exception)."""

from __future__ import annotations

import logging
from typing import Any, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

logging.getLogger("fiefdom").addHandler(logging.NullHandler())


def _to_stdlib(
    logger: WrappedLogger, method: str, event_dict: EventDict
) -> tuple[tuple[str], dict[str, Any]]:
    """The last processor on the standard-library path: ``event key=value ...`` as the
    record's message (never a format string), the exception as ``exc_info``."""
    exc_info = event_dict.pop("exc_info", None)
    event = str(event_dict.pop("event", ""))
    fields = " ".join(f"{key}={value!r}" for key, value in event_dict.items())
    message = f"{event} {fields}" if fields else event
    return (message,), ({"exc_info": exc_info} if exc_info else {})


_STDLIB_PROCESSORS: list[Processor] = [structlog.stdlib.filter_by_level, _to_stdlib]


class _LibraryLogger:
    """A logger that picks its destination at each call: structlog's configuration
    once there is one, else the standard library's logger of the same name."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context

    def bind(self, **values: Any) -> _LibraryLogger:
        return _LibraryLogger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> _LibraryLogger:
        return _LibraryLogger(self._name, dict(values))

    def unbind(self, *keys: str) -> _LibraryLogger:
        for key in keys:
            if key not in self._context:
                raise KeyError(key)
        return self.try_unbind(*keys)

    def try_unbind(self, *keys: str) -> _LibraryLogger:
        return _LibraryLogger(self._name, {k: v for k, v in self._context.items() if k not in keys})

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name, **self._context)
        return structlog.wrap_logger(
            logging.getLogger(self._name),
            processors=_STDLIB_PROCESSORS,
            wrapper_class=structlog.stdlib.BoundLogger,
            context_class=dict,
            **self._context,
        )

    def __getattr__(self, method: str) -> Any:
        return getattr(self._target(), method)

    def __repr__(self) -> str:
        return f"<fiefdom logger {self._name!r} context={self._context!r}>"


def get_logger(name: str, **values: Any) -> FilteringBoundLogger:
    """The logger ``name`` of the library (see the module docstring for where its
    events go), with ``values`` bound."""
    return cast(FilteringBoundLogger, _LibraryLogger(name, dict(values)))
