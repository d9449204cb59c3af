"""Records to feature vectors: schema checks, scaling, and per-record validation.

One way to turn a record into a vector, shared by the batch training job, the Beam streaming
DoFns and the plain Kafka consumer:

* :func:`check_arrow_schema` refuses a Parquet/Arrow schema whose feature columns are missing or
  not numeric, naming the column.
* :func:`table_to_matrix` turns an Arrow table into a float32 matrix and the indices and reasons of
  the rows it had to reject (null, NaN, inf).
* :func:`decode_records` turns JSON bytes / dicts / ``beam.Row``-like objects into a matrix plus a
  :class:`RecordError` for every record it could not use, so nothing is lost silently.
* :class:`Scaler` (standard or min-max) is fitted from :class:`ColumnStats`, which merge in
  parallel (a Beam combiner wraps them), and is stored in the model artifact as JSON.

Example:
    >>> spec = FeatureSpec(columns=["a", "b"])
    >>> batch = decode_records([b'{"a": 1, "b": 2}', b'{"a": "x", "b": 2}', b'oops'], spec)
    >>> batch.matrix.tolist(), [e.reason for e in batch.errors]
    ([[1.0, 2.0]], ['non_numeric', 'bad_json'])
"""

from ae_pipeline.features.arrow import check_arrow_schema, table_to_matrix
from ae_pipeline.features.decoding import (
    DecodedBatch,
    decode_record,
    decode_records,
    internal_detail,
    names_of,
)
from ae_pipeline.features.scaling import SCALERS, ColumnStats, Scaler
from ae_pipeline.features.spec import (
    BAD_JSON,
    INTERNAL,
    MISSING_FIELD,
    NON_FINITE,
    NON_NUMERIC,
    NOT_OBJECT,
    NULL_VALUE,
    REASONS,
    TOO_LARGE,
    WRONG_WIDTH,
    FeatureSpec,
    RecordError,
    SchemaError,
    fingerprint,
)

__all__ = [
    "BAD_JSON",
    "INTERNAL",
    "MISSING_FIELD",
    "NON_FINITE",
    "NON_NUMERIC",
    "NOT_OBJECT",
    "NULL_VALUE",
    "REASONS",
    "SCALERS",
    "TOO_LARGE",
    "WRONG_WIDTH",
    "ColumnStats",
    "DecodedBatch",
    "FeatureSpec",
    "RecordError",
    "Scaler",
    "SchemaError",
    "check_arrow_schema",
    "decode_record",
    "decode_records",
    "fingerprint",
    "internal_detail",
    "names_of",
    "table_to_matrix",
]
