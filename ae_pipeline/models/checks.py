"""What every config class shares: :class:`ConfigError` (one line naming the setting), the value
checks, and dict/JSON round trips that refuse unknown keys."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

_C = TypeVar("_C", bound="_Serializable")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{owner}.{name}={value!r} is not one of {list(choices)}")


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_ints(owner: str, name: str, values: Any, *, allow_empty: bool = True) -> None:
    _require(
        isinstance(values, list)
        and (allow_empty or values)
        and all(_is_int(v) and v > 0 for v in values),
        f"{name} must be a list of positive integers, got {values!r} ({owner}.{name})",
    )


def _check_int_at_least(owner: str, name: str, value: Any, low: int, hint: str = "") -> None:
    """Refuses anything but an int >= ``low``; the message names the setting and the fix."""
    _require(
        _is_int(value) and value >= low,
        f"{name} must be an integer >= {low}, got {value!r} ({owner}.{name}): "
        + (hint or f"set it to {low} or more"),
    )


def _check_non_negative(owner: str, name: str, value: Any) -> None:
    _require(
        _is_number(value) and value >= 0,
        f"{name} must be a finite number >= 0, got {value!r} ({owner}.{name})",
    )


def _check_in_range(
    owner: str, name: str, value: Any, low: float, high: float, *, closed: str = "[]"
) -> None:
    """Refuses a value outside ``low..high``; ``closed`` says which ends are included."""
    ok = _is_number(value)
    if ok:
        ok = (value >= low if closed[0] == "[" else value > low) and (
            value <= high if closed[1] == "]" else value < high
        )
    _require(
        ok,
        f"{name} must be in {closed[0]}{low:g}, {high:g}{closed[1]}, got {value!r} "
        f"({owner}.{name})",
    )


class _Serializable:
    """Mixin: ``to_dict`` / ``from_dict`` / JSON for (nested) config dataclasses."""

    # Field name -> config class of the value (or of each list item).
    _nested: dict[str, type[_Serializable]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict of every field (nested configs included)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """Returns the config as a JSON string with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Builds the config from a dict such as one made by ``to_dict``.

        Raises:
            ConfigError: if ``data`` has a key that is not a field (the message names the
                unknown keys and lists the valid ones) or a value is invalid.
        """
        _require(isinstance(data, Mapping), f"{cls.__name__} needs a mapping, got {data!r}")
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(valid))
        _require(
            not unknown,
            f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {valid}",
        )
        kwargs = {}
        for key, value in data.items():
            nested = cls._nested.get(key)
            if nested is not None and isinstance(value, Mapping):
                value = nested.from_dict(value)
            elif nested is not None and isinstance(value, list):
                value = [nested.from_dict(v) if isinstance(v, Mapping) else v for v in value]
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[_C], text: str) -> _C:
        """Builds the config from a JSON string made by ``to_json``."""
        return cls.from_dict(json.loads(text))

    def replace(self: _C, **changes: Any) -> _C:
        """Returns a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
