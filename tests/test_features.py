"""Record decoding, Arrow schema checks and scalers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ae_pipeline.features import (
    BAD_JSON,
    MISSING_FIELD,
    NON_FINITE,
    NON_NUMERIC,
    NOT_OBJECT,
    NULL_VALUE,
    WRONG_WIDTH,
    ColumnStats,
    FeatureSpec,
    Scaler,
    SchemaError,
    check_arrow_schema,
    decode_records,
    table_to_matrix,
)

SPEC = FeatureSpec(columns=["a", "b", "c"], key_column="id")


def test_decode_good_and_each_kind_of_bad_record():
    records = [
        b'{"id": 1, "a": 1, "b": 2.5, "c": -3}',
        b"not json",
        b"[1, 2, 3]",
        b'{"id": 2, "a": 1, "b": 2}',
        b'{"id": 3, "a": 1, "b": "x", "c": 3}',
        b'{"id": 4, "a": 1, "b": NaN, "c": 3}',
        {"id": 5, "a": 0, "b": 0, "c": 1e300},
        {"id": 6, "a": 4, "b": 5, "c": 6},
        b'{"id": 7, "a": true, "b": 1, "c": 1}',
    ]
    out = decode_records(records, SPEC)
    assert out.matrix.tolist() == [[1.0, 2.5, -3.0], [4.0, 5.0, 6.0]]
    assert out.index == [0, 7] and out.keys == [1, 6]
    reasons = {e.index: e.reason for e in out.errors}
    assert reasons == {
        1: BAD_JSON,
        2: NOT_OBJECT,
        3: MISSING_FIELD,
        4: NON_NUMERIC,
        5: NON_FINITE,  # a NaN literal is read leniently, then refused as non-finite
        6: NON_FINITE,
        8: NON_NUMERIC,
    }
    assert "'c'" in next(e.detail for e in out.errors if e.index == 3)


def test_vector_field_width_is_checked():
    spec = FeatureSpec(vector_field="x", width=3)
    out = decode_records([b'{"x": [1, 2, 3]}', b'{"x": [1, 2]}', b'{"y": 1}'], spec)
    assert out.matrix.shape == (1, 3)
    assert [e.reason for e in out.errors] == [WRONG_WIDTH, MISSING_FIELD]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.dictionaries(
                st.sampled_from(["a", "b", "c", "id", "z"]),
                st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.none()),
            ).map(lambda d: json.dumps(d).encode()),
        ),
        max_size=20,
    )
)
def test_every_record_is_a_row_or_an_error(records):
    out = decode_records(records, SPEC)
    assert len(out.matrix) + len(out.errors) == len(records)
    assert sorted(out.index + [e.index for e in out.errors]) == list(range(len(records)))
    assert np.isfinite(out.matrix).all()


_FIELD_VALUES = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.lists(st.floats(), max_size=2),
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.dictionaries(st.sampled_from(["a", "b", "c", "id", "z"]), _FIELD_VALUES).map(
                lambda d: json.dumps(d).encode()
            ),
            st.fixed_dictionaries({c: st.floats() for c in ("a", "b", "c", "id")}).map(
                lambda d: json.dumps(d).encode()
            ),
        ),
        max_size=20,
    ),
    st.sampled_from([SPEC, FeatureSpec(columns=["b"]), FeatureSpec(columns=["c", "a"])]),
    st.sampled_from([None, (), ("z",), ("z", "id"), ("a",)]),
)
@example(records=[b"\x000"], spec=SPEC, fields=None)  # a NUL byte: no UTF-16 guessing
def test_fast_paths_for_json_bytes_equal_the_checked_path(records, spec, fields):
    """JSON bytes take a fast path (typed ``msgspec`` decoding when ``fields`` is given, else
    ``orjson`` + item picking); ``str`` values take the field-by-field one: same outcome."""
    texts = []
    for r in records:
        try:
            texts.append(r.decode())
        except UnicodeDecodeError:
            texts.append(None)
    keep = [i for i, t in enumerate(texts) if t is not None]
    fast = decode_records([records[i] for i in keep], spec, fields=fields)
    slow = decode_records([texts[i] for i in keep], spec)
    np.testing.assert_array_equal(fast.matrix, slow.matrix)
    assert fast.index == slow.index
    assert [repr(k) for k in fast.keys] == [repr(k) for k in slow.keys]  # 1 vs 1.0 differ
    assert [(e.index, e.reason, e.detail) for e in fast.errors] == [
        (e.index, e.reason, e.detail) for e in slow.errors
    ]
    for got, whole in zip(fast.records, slow.records, strict=True):
        for name in fields or ():
            assert repr(got.get(name)) == repr(whole.get(name))


def test_typed_fast_path_is_taken_and_falls_back_per_record():
    """With ``fields``, plain-number records never reach orjson; one bad record in a batch
    costs only itself (the others keep the typed result)."""
    good = [json.dumps({"id": i, "a": i, "b": 0.5, "c": -1, "z": [i]}).encode() for i in range(50)]
    batch = [*good[:25], b'{"id": 99, "a": "x", "b": 1, "c": 1}', *good[25:]]
    out = decode_records(batch, SPEC, fields=("z",))
    assert out.index == [*range(25), *range(26, 51)]
    assert [e.reason for e in out.errors] == [NON_NUMERIC]
    assert out.records[30] == {"z": [30]} and out.keys[30] == 30
    assert out.matrix.dtype == np.float32 and out.matrix.shape == (50, 3)


def test_arrow_schema_errors_name_the_column():
    table = pa.table({"a": [1.0], "s": ["x"], "id": [1]})
    with pytest.raises(SchemaError, match="'b' is missing"):
        check_arrow_schema(table.schema, FeatureSpec(columns=["a", "b"]))
    with pytest.raises(SchemaError, match="'s' has type string"):
        check_arrow_schema(table.schema, FeatureSpec(columns=["a", "s"]))
    resolved = check_arrow_schema(table.schema, FeatureSpec(key_column="id"))
    assert resolved.columns == ["a"]


def test_table_to_matrix_rejects_null_nan_inf_rows():
    table = pa.table({"a": [1.0, None, 3.0, float("nan"), 5.0], "b": [1, 2, 3, 4, 5]})
    table = table.append_column("c", pa.array([0.0, 0.0, float("inf"), 0.0, 1.0]))
    matrix, errors = table_to_matrix(table, ["a", "b", "c"])
    assert matrix.tolist() == [[1.0, 1.0, 0.0], [5.0, 5.0, 1.0]]
    assert [(e.index, e.reason) for e in errors] == [
        (1, NULL_VALUE),
        (2, NON_FINITE),
        (3, NON_FINITE),
    ]


def test_column_stats_merge_equals_whole():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, size=(1000, 4))
    parts = [ColumnStats.of(x[i : i + 137]) for i in range(0, 1000, 137)]
    merged = ColumnStats.empty(4)
    for p in parts:
        merged = merged.merge(p)
    np.testing.assert_allclose(merged.mean, x.mean(axis=0))
    np.testing.assert_allclose(merged.std, x.std(axis=0))
    np.testing.assert_array_equal(merged.min, x.min(axis=0))


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_scaler_round_trip_and_ranges(kind):
    rng = np.random.default_rng(1)
    x = rng.uniform(-10, 50, size=(500, 3)).astype(np.float32)
    x[:, 2] = 7.0  # constant column: scale must not be 0
    scaler = Scaler.fit(kind, ColumnStats.of(x))
    z = scaler.transform(x)
    if kind == "minmax":
        assert z[:, :2].min() >= -1e-6 and z[:, :2].max() <= 1 + 1e-6
    else:
        np.testing.assert_allclose(z[:, :2].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(scaler.inverse(z), x, rtol=1e-5, atol=1e-4)
    again = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(again.transform(x), z)


def test_scaler_refuses_bad_options():
    with pytest.raises(ValueError, match="choose one of none, standard, minmax"):
        Scaler.fit("robust", ColumnStats.of(np.ones((2, 2))))
    with pytest.raises(ValueError, match="non-zero"):
        Scaler.from_dict({"kind": "standard", "offset": [0.0], "scale": [0.0]})


@pytest.mark.parametrize("big", [-(2**63) - 1, 2**64, 2**64 - 1, -(2**63)])
def test_typed_path_reads_integers_beyond_64_bits_like_the_checked_path(big):
    """orjson (the checked path) reads an integer beyond 64 bits as a float; the typed path
    gives keys and passed-through fields the same value, alone or in a batch that falls back."""
    spec = FeatureSpec(columns=["a"], key_column="id")
    records = [json.dumps({"a": i, "id": big, "z": big}).encode() for i in range(2)]
    checked = decode_records([r.decode() for r in records], spec)
    for batch in (records, [*records, b"bad"]):
        typed = decode_records(batch, spec, fields=("z",))
        assert [repr(k) for k in typed.keys] == [repr(k) for k in checked.keys]
        assert [repr(r["z"]) for r in typed.records] == [repr(r["z"]) for r in checked.records]


@pytest.mark.parametrize(
    "keys, tags",
    [
        ([1, 2**64, "k", None, 2.5, -(2**63) - 1], [1, 2, 3, 4, 5, 6]),  # mixed keys, one big
        ([1, 2, 3, 4, 5, 6], ["x", None, [1], {"a": 1}, True, 2**70]),  # fields not numbers
        ([2**63, -(2**63), 7, 8, 9, 10], [0.5, 1, 2, 3, 4, 5]),  # all numbers, at the limits
    ],
)
def test_typed_batch_keys_and_fields_equal_the_checked_path(keys, tags):
    """A batch that takes the typed path whole (its features read in one C loop, falling back
    to per-record slices when a key or field is no number) reads keys and passed-through
    fields as the checked path does."""
    spec = FeatureSpec(columns=["a", "b"], key_column="id")
    records = [
        json.dumps({"a": i, "b": -i / 3, "id": k, "tag": t}).encode()
        for i, (k, t) in enumerate(zip(keys, tags, strict=True))
    ]
    typed = decode_records(records, spec, fields=("tag",))
    checked = decode_records([r.decode() for r in records], spec)
    assert not typed.errors and typed.index == list(range(len(records)))
    np.testing.assert_array_equal(typed.matrix, checked.matrix)
    assert typed.matrix.flags.c_contiguous and typed.matrix.dtype == np.float32
    assert [repr(k) for k in typed.keys] == [repr(k) for k in checked.keys]
    assert [repr(r["tag"]) for r in typed.records] == [repr(r["tag"]) for r in checked.records]


def test_a_record_that_breaks_decoding_is_rejected_alone_as_internal():
    from ae_pipeline.features import INTERNAL, REASONS, TOO_LARGE

    class Broken:
        def _asdict(self):  # a Row-like object whose fields cannot be read
            raise RuntimeError("unreadable row")

    deep = b'{"id": 1, "a": 1, "b": 2, "c": 3, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    good = b'{"id": 2, "a": 1, "b": 2, "c": 3}'
    for fields in (None, ()):
        batch = decode_records([good, Broken(), deep, good], SPEC, fields=fields)
        assert batch.index == [0, 3] and batch.keys == [2, 2]
        assert [(e.index, e.reason) for e in batch.errors] == [(1, INTERNAL), (2, BAD_JSON)]
        assert batch.errors[0].detail == "RuntimeError: unreadable row"
    assert {INTERNAL, TOO_LARGE} <= set(REASONS)
