"""What the features are (:class:`FeatureSpec`), why a record is rejected (:data:`REASONS`,
:class:`RecordError`), and the data's fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Reasons a record can be rejected; stable strings, used in dead letters and metrics.
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
NON_NUMERIC = "non_numeric"
NON_FINITE = "non_finite"
WRONG_WIDTH = "wrong_width"
NULL_VALUE = "null_value"
# A failure while decoding, scoring or serialising one record that none of the reasons above
# describes (``detail`` starts with the exception type): the record is isolated, not the batch.
INTERNAL = "internal"
# A result whose message would exceed the output's size limit (a huge passed-through field).
TOO_LARGE = "too_large"
REASONS = (
    BAD_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    NON_NUMERIC,
    NON_FINITE,
    WRONG_WIDTH,
    NULL_VALUE,
    INTERNAL,
    TOO_LARGE,
)


class SchemaError(ValueError):
    """The data's schema cannot provide the requested feature columns."""


@dataclass(frozen=True)
class RecordError:
    """Why one record was rejected.

    Attributes:
        index: position of the record in the batch it came in.
        reason: one of :data:`REASONS`.
        detail: a human-readable explanation naming the field.
    """

    index: int
    reason: str
    detail: str


@dataclass
class FeatureSpec:
    """Which fields of a record are features, and how records carry them.

    Attributes:
        columns: feature names, in model input order. Empty means "all numeric fields of a
            Parquet schema" (resolved by :func:`check_arrow_schema`); for JSON records a
            ``vector_field`` can be used instead.
        key_column: a field passed through as the record key (optional).
        label_column: a label field for supervised fine-tuning / evaluation (optional).
        vector_field: JSON records may carry the features as one array under this name, e.g.
            ``{"id": 7, "x": [0.1, 0.2, ...]}``; its width must equal ``len(columns)`` or
            ``width``.
        width: expected vector width when ``columns`` is empty (e.g. image pixels).
    """

    columns: list[str] = field(default_factory=list)
    key_column: str | None = None
    label_column: str | None = None
    vector_field: str | None = None
    width: int | None = None

    @property
    def dim(self) -> int:
        if self.columns:
            return len(self.columns)
        if self.width is None:
            raise ValueError("FeatureSpec has neither columns nor width; its dimension is unknown")
        return self.width

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "key_column": self.key_column,
            "label_column": self.label_column,
            "vector_field": self.vector_field,
            "width": self.width,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        unknown = set(data) - {"columns", "key_column", "label_column", "vector_field", "width"}
        if unknown:
            raise ValueError(f"unknown FeatureSpec keys: {sorted(unknown)}")
        return cls(**dict(data))


def fingerprint(parts: Iterable[str]) -> str:
    """A short stable hash of strings (schema, row counts, file names) for the artifact."""
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
