"""Keep secrets out of logs, reprs and error messages.

A configuration key is secret when its name says so (``*password*``, ``*secret*``,
``*token*``, a JAAS config, a private or PEM key, credentials). :func:`redact` copies a
mapping with every secret value masked; :func:`scrub` removes known secret values from free
text such as a client library's error message; :func:`guard_logs` scrubs them from the log
records of the Kafka client libraries (kafka-python logs its whole configuration, and the
SASL/PLAIN authentication bytes, at DEBUG level).

Example:
    >>> redact({"sasl.username": "alice", "sasl.password": "hunter2"})
    {'sasl.username': 'alice', 'sasl.password': '***'}
    >>> scrub('Invalid value "hunter2" for "sasl.password"', ["hunter2"])
    'Invalid value "***" for "sasl.password"'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"

_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|jaas|credential|private[._-]?key|key[._-]?pem"
    r"|keystore[._-]key$|api[._-]?key",
    re.IGNORECASE,
)


def is_secret_key(key: object) -> bool:
    """Whether a configuration key names a secret (by its name alone)."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every secret value replaced by ``"***"``.

    Nested mappings (e.g. client-specific sections) are redacted too; ``None`` values stay
    ``None`` so that a redacted config still shows which secrets are unset.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out[key] = redact(value)
        elif is_secret_key(key) and value is not None:
            out[key] = REDACTED
        else:
            out[key] = value
    return out


def secret_values(config: Mapping[str, Any]) -> list[str]:
    """The string values of every secret key in ``config`` (nested mappings included)."""
    found: list[str] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            found.extend(secret_values(value))
        elif is_secret_key(key) and value:
            found.append(str(value))
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``"***"``.

    Longer secrets are replaced first, so that a secret containing another is fully masked.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _variants(secret: str) -> set[str]:
    """The secret as it appears in text, in a str repr and in a bytes repr."""
    return {secret, repr(secret)[1:-1], repr(secret.encode("utf-8"))[2:-1]}


class _ScrubLogRecords(logging.Filter):
    """Rewrites log records that contain a registered secret (message, arguments, traceback)."""

    def __init__(self) -> None:
        super().__init__("ae_pipeline.secrets")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        return True


_LOG_FILTER = _ScrubLogRecords()
GUARDED_LOGGERS = ("kafka", "ae_pipeline")


def guard_logs(secrets: Iterable[str], prefixes: Iterable[str] = GUARDED_LOGGERS) -> None:
    """Scrub ``secrets`` from the log records of the loggers under ``prefixes``.

    A logger's filter only sees that logger's own records, so the filter goes on each logger
    under the prefixes that exists now, and on the root logger's handlers (which see every
    record that propagates, whatever logger made it). Loggers and root handlers added later
    are covered by the next call: the client factories call it each time they build a client.
    """
    for secret in secrets:
        if secret:
            _LOG_FILTER.secrets.update(_variants(secret))
    if not _LOG_FILTER.secrets:
        return
    prefixes = tuple(prefixes)
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in prefixes]
    for filterer in [*(logging.getLogger(n) for n in {*prefixes, *names}), *logging.root.handlers]:
        if _LOG_FILTER not in filterer.filters:
            filterer.addFilter(_LOG_FILTER)
