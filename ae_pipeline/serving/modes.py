"""The output modes (``encode``, ``denoise``, ``flag``): their names and result fields."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from ae_pipeline.serving.errors import ServingError

MODES = ("encode", "denoise", "flag")
# Fields every result may carry, then those of each mode (a passthrough field may not reuse one).
_BASE_FIELDS = ("key", "model_version", "topic", "partition", "offset", "timestamp_ms")
_MODE_FIELDS = {
    "encode": ("latent",),
    "denoise": ("reconstruction",),
    "flag": ("score", "threshold", "is_anomaly", "contributions"),
}


def check_mode(mode: str) -> str:
    """Refuses anything but ``encode``, ``denoise`` or ``flag``."""
    if mode not in MODES:
        raise ServingError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def result_fields(mode: str) -> tuple[str, ...]:
    """The fields a result of ``mode`` may carry (besides passed-through ones)."""
    return _BASE_FIELDS + _MODE_FIELDS[check_mode(mode)]


def check_passthrough(fields: Iterable[str], mode: str) -> tuple[str, ...]:
    """Refuses passthrough fields that would overwrite a result's own field.

    A passed-through ``offset`` would replace the record's real offset (and ``key`` the
    message key, ``model_version`` the version header): call this before any work starts.

    Returns:
        The fields, as a tuple.

    Raises:
        ServingError: naming the first field that is empty, repeated, or the name of a result
            field of ``mode`` (:func:`result_fields`).
    """
    fields = tuple(fields)
    taken = result_fields(mode)
    seen: set[str] = set()
    for name in fields:
        if not isinstance(name, str) or not name:
            raise ServingError(f"passthrough field names must be non-empty text, got {name!r}")
        if name in taken:
            raise ServingError(
                f"passthrough field {name!r} would overwrite the result field of that name "
                f"(a {mode} result has {', '.join(taken)}); pass through other fields"
            )
        if name in seen:
            raise ServingError(f"passthrough field {name!r} is given twice")
        seen.add(name)
    return fields


_checked_passthrough = functools.lru_cache(maxsize=256)(check_passthrough)
