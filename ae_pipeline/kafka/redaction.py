"""Keep secrets out of logs, reprs and error messages.

A configuration key is secret when its name says so (``*password*``, ``*secret*``,
``*token*``, a JAAS config, a private or PEM key, credentials). :func:`redact` copies a
mapping with every secret value masked; :func:`scrub` removes known secret values from free
text such as a client library's error message.

Example:
    >>> redact({"sasl.username": "alice", "sasl.password": "hunter2"})
    {'sasl.username': 'alice', 'sasl.password': '***'}
    >>> scrub('Invalid value "hunter2" for "sasl.password"', ["hunter2"])
    'Invalid value "***" for "sasl.password"'
"""

from __future__ import annotations

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
