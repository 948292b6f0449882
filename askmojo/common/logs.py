"""Structured logging: `key=value` text in development, one JSON object per
line in production (for log shippers). Fields passed with `extra={...}` are
part of every record's output.

A record never carries a whole SQL statement or its parameters: an exception
is written as its frames and a bounded summary (`exception_summary`), and a
message is cut at MAX_MESSAGE_CHARS. (A SQLAlchemy error's text holds the
statement, and a failed call with a long IN list wrote megabytes per line.)

A record emitted while a call is served carries `rpc_method` (the full
method, `askmojo.metadata.v1.MetadataService/Search`, set per call by
`rpc.grpc_method_decorator` in RPC_METHOD) and, when a span is current
(tracing on), `trace_id` and `span_id` in W3C hex: a log line leads to its
trace. Both are read when a record is emitted, not per call.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from opentelemetry import trace

SUMMARY_CHARS = 200
MAX_MESSAGE_CHARS = 2000
_MAX_FRAMES = 30

# The method of the call being served in this context (None outside a call).
RPC_METHOD: ContextVar[str | None] = ContextVar("rpc_method", default=None)

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: bounded(v) if isinstance(v, str) else v
        for k, v in vars(record).items()
        if k not in _STANDARD
    }


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters not logged)"


def exception_summary(exc: BaseException, limit: int = SUMMARY_CHARS) -> str:
    """`Class: first `limit` characters of the message`, on one line. For a
    SQLAlchemy DBAPIError, the driver's own error (`exc.orig`), whose text,
    unlike the wrapper's, holds neither the statement nor the parameters."""
    orig = getattr(exc, "orig", None)
    name = type(exc).__name__
    if isinstance(orig, BaseException):
        name, exc = f"{name}: {type(orig).__name__}", orig
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{name}: {text}" if text else name


def format_exception_bounded(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> str:
    """A traceback's frames (the last _MAX_FRAMES), each exception of the
    chain as `exception_summary`: never a statement or its parameters."""
    if exc is None:
        return exc_type.__name__ if exc_type is not None else ""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 5:
        seen.add(id(current))
        frames = traceback.format_list(traceback.extract_tb(current.__traceback__)[-_MAX_FRAMES:])
        parts.append(
            "Traceback (most recent call last):\n" + "".join(frames) + exception_summary(current)
        )
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    # Oldest first, as Python prints a chain.
    return "\n\nThe above exception led to:\n\n".join(reversed(parts))


class CallContextFilter(logging.Filter):
    """Adds `rpc_method`, `trace_id` and `span_id` of the call being served
    to each record, as extras; a handler filter, so it runs in the emitting
    thread and task, and only for records that are written."""

    def filter(self, record: logging.LogRecord) -> bool:
        method = RPC_METHOD.get()
        if method is not None and not hasattr(record, "rpc_method"):
            record.rpc_method = method
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": bounded(record.getMessage()),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def formatException(self, ei: Any) -> str:
        return format_exception_bounded(*ei)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s [%(process)d] %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = bounded(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return format_exception_bounded(*ei)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(level: str, log_format: str) -> None:
    """`log_format` is "json" or "text"; `level` a logging level name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(CallContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic logs each step at INFO on its own logger; keep it, quieter.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # gRPC's Cython layer logs every event-loop lookup at DEBUG.
    logging.getLogger("grpc._cython").setLevel(logging.INFO)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
