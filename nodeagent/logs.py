"""Log output: JSON lines for the DaemonSet, a readable line on a terminal, and context fields.

Context fields are key/value pairs bound to the current thread of work with :func:`bind` (a
contextvar, so each CNI worker thread has its own); :class:`ContextFilter` copies them onto
every record logged inside the block, however deep in the call stack. Fields passed with
``extra=`` are shown the same way.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("json", "text", "auto")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "nodeagent"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None)
#: Attributes every LogRecord has; anything else on a record is a context field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


@contextmanager
def bind(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add ``fields`` to every record logged in this block (by this thread of work).

    The dict yielded is the one records read: the block may add fields it learns later.
    """
    merged = {**(_context.get() or {}), **fields}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def annotate(**fields: Any) -> None:
    """Add fields learnt on the way to the block :func:`bind` opened (no-op outside one)."""
    bound = _context.get()
    if bound is not None:
        bound.update(fields)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record; explicit ``extra=`` fields win."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get() or {}
        for key, value in bound.items():
            if key not in record.__dict__ and key not in _STANDARD:
                setattr(record, key, value)
        record._bound = tuple(bound)
        return True


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a record: the bound ones first, in the order they were bound, then those
    given with ``extra=``; empty ones are left out."""
    names = [*getattr(record, "_bound", ()), *record.__dict__]
    return {k: record.__dict__[k] for k in dict.fromkeys(names) if k in record.__dict__
            and k not in _STANDARD and not k.startswith("_")
            and record.__dict__[k] is not None and record.__dict__[k] != ""}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, logger, msg, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, then `` key=value`` per field (values quoted when they need it)."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = "".join(f" {k}={_text_value(v)}" for k, v in fields_of(record).items())
        return line + pairs


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def formatter(fmt: str, stream: TextIO | None = None) -> logging.Formatter:
    """The formatter for ``fmt``; ``auto`` is text on a terminal, else JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "auto":
        stream = stream or sys.stderr
        fmt = "text" if hasattr(stream, "isatty") and stream.isatty() else "json"
    return TextFormatter() if fmt == "text" else JsonFormatter()


def setup(level: str = "warning", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt``, replacing the handler an
    earlier call installed (others, such as a test harness's, stay)."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter(fmt, stream or sys.stderr))
    handler.addFilter(ContextFilter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test harnesses swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass
