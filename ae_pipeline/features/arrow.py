"""Arrow / Parquet tables to feature matrices: schema checks and rejected rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ae_pipeline.features.spec import NON_FINITE, NULL_VALUE, FeatureSpec, RecordError, SchemaError


def check_arrow_schema(schema, spec: FeatureSpec) -> FeatureSpec:
    """Check that ``schema`` provides ``spec``'s columns as numbers; fill in "all numeric".

    Args:
        schema: a ``pyarrow.Schema``.
        spec: the requested features. With no ``columns``, every numeric column except the key
            and label becomes a feature.

    Returns:
        The spec with ``columns`` resolved.

    Raises:
        SchemaError: naming each missing or non-numeric column and the schema's columns.
    """
    import pyarrow.types as pat

    def numeric(t) -> bool:
        return pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t) or pat.is_decimal(t)

    names = list(schema.names)
    for role, col in (("key", spec.key_column), ("label", spec.label_column)):
        if col is not None and col not in names:
            raise SchemaError(f"{role} column {col!r} is not in the data; columns: {names}")
    if not spec.columns:
        skip = {spec.key_column, spec.label_column}
        cols = [n for n in names if n not in skip and numeric(schema.field(n).type)]
        if not cols:
            raise SchemaError(f"no numeric feature columns in the data; columns: {names}")
        return FeatureSpec(cols, spec.key_column, spec.label_column, spec.vector_field, len(cols))
    problems = []
    for col in spec.columns:
        if col not in names:
            problems.append(f"column {col!r} is missing")
        elif not numeric(schema.field(col).type):
            problems.append(f"column {col!r} has type {schema.field(col).type}, not a number")
    if problems:
        raise SchemaError("; ".join(problems) + f" (data columns: {names})")
    return spec


def table_to_matrix(table, columns: Sequence[str]) -> tuple[np.ndarray, list[RecordError]]:
    """Feature matrix of an Arrow table, rejecting rows with null, NaN or inf.

    Returns:
        ``(matrix, errors)``: the float32 rows that are complete and finite, in order, and one
        :class:`RecordError` per rejected row (its index in ``table``).
    """
    n = table.num_rows
    matrix = np.empty((n, len(columns)), dtype=np.float32)
    null = np.zeros(n, dtype=bool)
    for j, col in enumerate(columns):
        arr = table.column(col)
        if arr.null_count:
            null |= np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            arr = arr.fill_null(0)
        matrix[:, j] = arr.to_numpy().astype(np.float32, copy=False)
    finite = np.isfinite(matrix).all(axis=1)
    bad = null | ~finite
    if not bad.any():
        return matrix, []
    errors = []
    for i in np.flatnonzero(bad):
        if null[i]:
            cols = [c for c in columns if table.column(c)[int(i)].as_py() is None]
            errors.append(RecordError(int(i), NULL_VALUE, f"null in {cols}"))
        else:
            cols = [c for c, ok in zip(columns, np.isfinite(matrix[i]), strict=True) if not ok]
            errors.append(RecordError(int(i), NON_FINITE, f"NaN or inf in {cols}"))
    return matrix[~bad], errors
