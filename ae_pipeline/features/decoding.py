"""Records (JSON bytes, dicts, ``beam.Row``) to feature matrices: a typed fast path (msgspec) for
plain records and a checked path that says what is wrong with the others.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

try:  # orjson is a Beam dependency and several times faster than json
    import orjson as _json

    _JSONDecodeError: type[Exception] = _json.JSONDecodeError
except ImportError:  # pragma: no cover - fallback
    import json as _json

    _JSONDecodeError = ValueError

from ae_pipeline.features.spec import (
    BAD_JSON,
    INTERNAL,
    MISSING_FIELD,
    NON_FINITE,
    NON_NUMERIC,
    NOT_OBJECT,
    WRONG_WIDTH,
    FeatureSpec,
    RecordError,
)


@dataclass
class DecodedBatch:
    """The outcome of :func:`decode_records`.

    Attributes:
        matrix: float32 ``(n_good, dim)`` features of the usable records, in input order.
        index: for each matrix row, the index of its record in the input.
        keys: the key field of each usable record (None where absent).
        errors: one :class:`RecordError` per rejected record.
        records: the parsed objects of the usable records (for passing fields through).
    """

    matrix: np.ndarray
    index: list[int]
    keys: list[Any]
    errors: list[RecordError]
    records: list[Any]


_INVALID = object()


def _loads_lenient(raw: Any) -> Any:
    """Second chance for text orjson refuses: Python's parser accepts NaN/Infinity literals,
    so such records are reported as ``non_finite`` rather than ``bad_json``."""
    import json

    try:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            # UTF-8 only (RFC 8259), as orjson reads bytes and as text is read: Python's json
            # would guess UTF-16 or UTF-32 from a NUL byte.
            raw = bytes(raw).decode("utf-8")
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested too deeply
        return _INVALID


def _as_mapping(obj: Any) -> Mapping[str, Any] | None:
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "_asdict"):  # beam.Row / NamedTuple
        return obj._asdict()
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    return None


_NUMBER_TYPES = frozenset((int, float))


def names_of(spec: FeatureSpec) -> list[str] | None:
    """Feature names for messages (None when features come as one array field)."""
    return None if spec.vector_field is not None else list(spec.columns)


def _float_or_inf(value: float) -> float:
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes, list, dict)):
        raise TypeError
    return float(value)


def decode_record(obj: Any, spec: FeatureSpec) -> tuple[np.ndarray, Any, Any]:
    """One record to ``(vector, key, parsed)``; raises :class:`RecordError`-carrying ValueError.

    Accepts JSON bytes/str, a mapping, or a Row-like object. See :func:`decode_records`.
    """
    out = decode_records([obj], spec)
    if out.errors:
        err = out.errors[0]
        raise ValueError(f"{err.reason}: {err.detail}")
    return out.matrix[0], out.keys[0], out.records[0]


@functools.lru_cache(maxsize=64)
def _typed_decoder(
    columns: tuple[str, ...], key_column: str | None, fields: tuple[str, ...]
) -> Callable[[Any], Any]:
    """A schema-driven JSON decoder (``msgspec``) for records whose features are all plain
    numbers: one C call per record returns a struct whose ``astuple`` is ``(f_1, ..., f_D,
    [key,] *fields)``; it raises ``msgspec.DecodeError`` for anything else (the checked path
    then says why).

    Parsing straight into typed fields is ~2x faster than ``orjson.loads`` into a dict and
    skips the per-field Python work; unknown fields are ignored. The field names are
    positional (``c0``...) and renamed to the record's, so any column name works; the names
    must be distinct (the caller checks).
    """
    names = [*columns, *([key_column] if key_column is not None else []), *fields]
    specs: list[tuple] = [(f"c{j}", float) for j in range(len(columns))]
    if key_column is not None:
        specs.append(("k", Any, None))
    specs += [(f"p{j}", Any, None) for j in range(len(fields))]
    rename = {spec[0]: name for spec, name in zip(specs, names, strict=True)}
    # gc=False: one object fewer per record for the garbage collector to count and traverse
    # (a decoded record holds JSON values only, so it cannot be part of a reference cycle).
    struct = msgspec.defstruct("Record", specs, kw_only=True, rename=rename, gc=False)
    return msgspec.json.Decoder(struct).decode


def decode_records(
    objs: Iterable[Any], spec: FeatureSpec, *, fields: Sequence[str] | None = None
) -> DecodedBatch:
    """Decode a batch of records into a feature matrix; every record is a row or an error.

    Args:
        objs: JSON ``bytes``/``str`` values, mappings, or ``beam.Row``-like objects.
        spec: which fields are features (``columns``) or the array field (``vector_field``).
        fields: the fields a caller will read from ``records`` (besides key and features);
            with a value, ``records`` may hold only these (a mapping per record, or None when
            no fields are asked for), which lets JSON bytes take a typed fast path. ``None``
            keeps each whole parsed record.

    Returns:
        A :class:`DecodedBatch`; ``len(matrix) + len(errors)`` equals the number of inputs.
    """
    dim = spec.dim
    rows: list[np.ndarray] = []
    index: list[int] = []
    keys: list[Any] = []
    parsed: list[Any] = []
    errors: list[RecordError] = []
    columns = spec.columns
    # C-speed picking of the feature fields (a missing one raises KeyError: slow path below).
    pick = operator.itemgetter(*columns) if columns and spec.vector_field is None else None
    key_column = spec.key_column
    typed = None
    if fields is not None and columns and spec.vector_field is None:
        fields = tuple(fields)
        names = [*columns, key_column, *fields]
        if len(set(names)) == len(names):  # else a name is used twice: the dict paths below
            typed = _typed_decoder(tuple(columns), key_column, fields)
    if typed is not None:
        # The whole batch at C speed; a record it cannot take: record by record below. Only
        # ASCII bytes: msgspec does not check the UTF-8 of the fields it skips, orjson does.
        objs = objs if isinstance(objs, (list, tuple)) else list(objs)
        try:
            if all(map(bytes.isascii, objs)):
                return _typed_batch(list(map(typed, objs)), spec, fields)
        # TypeError: not bytes; RecursionError: nested too deeply (even in an ignored field)
        except (msgspec.DecodeError, TypeError, RecursionError):
            pass
    for i, obj in enumerate(objs):
        try:
            if typed is not None and type(obj) is bytes and obj.isascii():
                try:
                    values = _astuple(typed(obj))
                except (msgspec.DecodeError, RecursionError):
                    pass  # the checked path below says why
                else:
                    has_key = key_column is not None
                    rows.append(values[:dim])
                    index.append(i)
                    keys.append(_as_orjson(values[dim]) if has_key else None)
                    extra = map(_as_orjson, values[dim + has_key :])
                    parsed.append(dict(zip(fields, extra, strict=True)) if fields else None)
                    continue
            if pick is not None and type(obj) is bytes:
                # Fast path for the common case: JSON bytes of an object with every feature a plain
                # number. Anything else falls through to the checks below, which say why.
                try:
                    record = _json.loads(obj)
                    values = pick(record) if type(record) is dict else None
                except Exception:
                    values = None
                if values is not None:
                    if len(columns) == 1:
                        values = (values,)
                    if _NUMBER_TYPES.issuperset(map(type, values)):
                        rows.append(values)
                        index.append(i)
                        keys.append(record.get(key_column) if key_column else None)
                        parsed.append(record)
                        continue
            if isinstance(obj, (bytes, bytearray, memoryview, str)):
                try:
                    obj = _json.loads(obj)
                except (_JSONDecodeError, UnicodeDecodeError, TypeError) as e:
                    obj = _loads_lenient(obj)
                    if obj is _INVALID:
                        errors.append(RecordError(i, BAD_JSON, f"not valid JSON: {e}"[:200]))
                        continue
            record = _as_mapping(obj)
            if record is None:
                errors.append(
                    RecordError(i, NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
                )
                continue
            if spec.vector_field is not None:
                values = record.get(spec.vector_field)
                if values is None:
                    errors.append(RecordError(i, MISSING_FIELD, f"field {spec.vector_field!r}"))
                    continue
                if not isinstance(values, (list, tuple)):
                    errors.append(
                        RecordError(i, NON_NUMERIC, f"field {spec.vector_field!r} is not an array")
                    )
                    continue
                if len(values) != dim:
                    errors.append(
                        RecordError(
                            i,
                            WRONG_WIDTH,
                            f"{spec.vector_field!r} has {len(values)} values, not {dim}",
                        )
                    )
                    continue
                names = None
            else:
                missing = [c for c in columns if c not in record]
                if missing:
                    errors.append(RecordError(i, MISSING_FIELD, f"fields {missing} are missing"))
                    continue
                values = [record[c] for c in columns]
                names = columns
            # Fast check: plain numbers only (bool is an int subclass, so compare exact types).
            if not all(type(v) in _NUMBER_TYPES for v in values):
                bad = []
                for j, v in enumerate(values):
                    try:
                        _number(v)
                    except (TypeError, ValueError, OverflowError):
                        bad.append(names[j] if names else j)
                if bad:
                    errors.append(RecordError(i, NON_NUMERIC, f"non-numeric values in {bad[:10]}"))
                    continue
                values = [_number(v) for v in values]
            rows.append(values)
            index.append(i)
            keys.append(record.get(spec.key_column) if spec.key_column else None)
            parsed.append(record)
        except Exception as err:  # a record no check foresaw: isolated, not the batch
            errors.append(RecordError(i, INTERNAL, internal_detail(err)))
            del rows[len(index) :], keys[len(index) :], parsed[len(index) :]
    return _to_batch(rows, index, keys, parsed, errors, spec)


def internal_detail(err: BaseException) -> str:
    """The ``detail`` of an ``internal`` rejection: the exception type, then its message
    (at most 200 characters)."""
    try:
        text = str(err)
    except Exception:  # a message that cannot even be shown
        text = ""
    return f"{type(err).__name__}: {text}"[:200]


_astuple = msgspec.structs.astuple


def _as_orjson(value: Any) -> Any:
    """A key or passed-through value as the checked path (orjson) reads it: an integer beyond
    64 bits becomes a float there, while msgspec keeps it exact."""
    if type(value) is int and not -(2**63) <= value <= 2**64 - 1:
        return float(value)
    return value


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _as_orjson_all(values: list[Any]) -> list[Any]:
    """:func:`_as_orjson` of each value; C-speed checks when no integer is out of range."""
    kinds = set(map(type, values))
    if int not in kinds:
        return values
    ints = values if len(kinds) == 1 else [v for v in values if type(v) is int]
    if min(ints) >= _INT64_MIN and max(ints) <= _UINT64_MAX:
        return values
    return list(map(_as_orjson, values))


_KEY = operator.attrgetter("k")  # the key field of a typed record (see _typed_decoder)


def _typed_batch(structs: list[Any], spec: FeatureSpec, fields: tuple[str, ...]) -> DecodedBatch:
    """A :class:`DecodedBatch` of records that all took the typed path (``structs``: what the
    decoder of :func:`_typed_decoder` returned for each)."""
    dim = spec.dim
    n = len(structs)
    has_key = spec.key_column is not None
    keys = _as_orjson_all(list(map(_KEY, structs))) if has_key else [None] * n
    width = dim + has_key + len(fields)
    try:
        # Every value of every record as float64 in one C loop, then the feature columns. The
        # records' tuples are made one at a time and freed at once: none of them is alive when
        # the garbage collector runs (the structs are not tracked by it).
        wide = np.fromiter(
            itertools.chain.from_iterable(map(_astuple, structs)), np.float64, n * width
        )
        wide = wide.reshape(n, width)[:, :dim]
    except (TypeError, ValueError, OverflowError):  # a key or field is no number: features only
        rows = [_astuple(r)[:dim] for r in structs]
        wide = np.array(rows, dtype=np.float64).reshape(n, dim)
    first = dim + has_key
    parsed = (
        [dict(zip(fields, map(_as_orjson, _astuple(r)[first:]), strict=True)) for r in structs]
        if fields
        else [None] * n
    )
    return _to_batch(wide, list(range(n)), keys, parsed, [], spec)


def _to_batch(
    rows: list | np.ndarray,
    index: list[int],
    keys: list,
    parsed: list,
    errors: list[RecordError],
    spec,
) -> DecodedBatch:
    """Rows of plain numbers (or their float64 matrix) to the float32 matrix, moving
    non-finite or out-of-float32-range rows to ``errors`` (sorted by index)."""
    dim = spec.dim
    # One conversion for the whole batch, then vectorised finiteness / range checks.
    if isinstance(rows, np.ndarray):
        wide = rows
    else:
        try:
            wide = np.array(rows, dtype=np.float64).reshape(len(rows), dim)
        except OverflowError:  # an int beyond float64: find it row by row
            wide = np.array(
                [[_float_or_inf(v) for v in row] for row in rows], dtype=np.float64
            ).reshape(len(rows), dim)
    with np.errstate(over="ignore", invalid="ignore"):
        bad_rows = ~np.isfinite(wide).all(axis=1) | (
            np.abs(wide).max(axis=1, initial=0.0) > np.finfo(np.float32).max
        )
    if bad_rows.any():
        cols = names_of(spec)
        for r in np.flatnonzero(bad_rows):
            vec = wide[r]
            where = [cols[j] if cols else j for j in np.flatnonzero(~np.isfinite(vec))]
            detail = f"NaN or inf in {where[:10]}" if where else "value out of float32 range"
            errors.append(RecordError(index[r], NON_FINITE, detail))
        keep = ~bad_rows
        wide = wide[keep]
        index = [x for x, k in zip(index, keep, strict=True) if k]
        keys = [x for x, k in zip(keys, keep, strict=True) if k]
        parsed = [x for x, k in zip(parsed, keep, strict=True) if k]
        errors.sort(key=lambda e: e.index)
    return DecodedBatch(wide.astype(np.float32), index, keys, errors, parsed)
