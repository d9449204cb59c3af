"""Log lines for log pipelines: ``--log_format json`` writes one JSON object per line.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; a record logged
with ``extra={"fields": {...}}`` (the consumer's progress and drift lines) adds those fields
under ``fields``, so a log pipeline reads the figures without parsing the message. A traceback
goes in ``exception``.

Example:
    >>> import logging
    >>> record = logging.LogRecord("ae", logging.INFO, __file__, 1, "%d records", (5,), None)
    >>> record.fields = {"records": 5}
    >>> line = json.loads(JsonFormatter().format(record))
    >>> line["message"], line["fields"]
    ('5 records', {'records': 5})
"""

from __future__ import annotations

import datetime as _dt
import json
import logging

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line["fields"] = fields
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_log_format(log_format: str) -> None:
    """Sets the root handlers' formatter: ``text`` leaves them, ``json`` writes JSON lines.

    Raises:
        ValueError: not one of :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


__all__ = ["LOG_FORMATS", "JsonFormatter", "use_log_format"]
