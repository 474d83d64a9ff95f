"""Structured logging: one line per event, ``<time> <level> <event> key=value ...``.

Values whose key looks secret are masked, and passwords inside URLs are removed, so
configuration and connection strings can be logged as they are.

The libraries' own loggers (asyncpg's pool, websockets, asyncio's "exception never retrieved")
go to the same handler, one line each: their message and the exception's type and text, never
a multi-line traceback (``log_level = "debug"`` keeps it, as one escaped field).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|authorization)", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
NEEDS_QUOTES = re.compile(r"[\s\"=]")


def redact(text: str) -> str:
    """Remove the password from any URL in ``text``."""
    return URL_PASSWORD.sub(r"\g<scheme>:***@", text)


def _format_value(key: str, value: Any) -> str:
    if SECRET_KEY.search(key):
        return "***"
    text = redact(str(value))
    if NEEDS_QUOTES.search(text) or not text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname.lower(), record.getMessage()]
        parts.extend(f"{key}={_format_value(key, value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += " exc=" + _format_value("exc", self.formatException(record.exc_info))
        return line


# Loggers of libraries that may log errors (with tracebacks) on their own.
FOREIGN_LOGGERS = ("asyncpg", "websockets", "asyncio")


class ForeignFormatter(EventFormatter):
    """A library's record as one event line: ``<logger>.log message="..." error="Type: text"``."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__()
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {"message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["error"] = f"{type(exc).__name__}: {exc}"
            if self._tracebacks:
                fields["exc"] = self.formatException(record.exc_info)
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname.lower(), f"{record.name}.log"]
        parts.extend(f"{key}={_format_value(key, value)}" for key, value in fields.items())
        return " ".join(parts)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger("switchyard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    foreign = logging.StreamHandler(sys.stderr)
    foreign.setFormatter(ForeignFormatter(tracebacks=level.lower() == "debug"))
    for name in FOREIGN_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = [foreign]
        # Their info chatter (websockets' "server listening") stays out of the event log.
        library.setLevel(max(logging.WARNING, root.level))
        library.propagate = False


class EventLogger:
    """``log.info("task.claimed", task_id=3)`` writes one structured line."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"switchyard.{name}")

    def _log(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc=True)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)
