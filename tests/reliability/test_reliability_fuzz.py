"""Poison input, fuzzed: record bytes and JSON shapes through ``decode_records`` and
``ServingModel.score_records`` (all three modes), then ``to_message`` as the consumer and the
Beam job do. No crash, and every record is accounted for: one result or one dead letter with a
known reason, carrying its coordinates and (for a dead letter) the original value.

Batches of 8 to 51 records per example, 3 x 400 examples: about 28,000 records (counted; at least
10,000 asserted).
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections import Counter, namedtuple

import kit
import numpy as np
import pytest
import reliability_kit as rel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ae_pipeline.features import REASONS, decode_records
from ae_pipeline.kafka import KafkaRecord
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import MODES, ServingModel, Source, to_message

EXAMPLES = 400  # per test; about 30 records each
# Scaling values near the float32 limit overflows (such records are dead-lettered): the
# warning is expected here, the outcome is checked.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

FUZZ_SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same cases on every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def serving(trained, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fuzz-models"))
    version = kit.publish(root, trained)
    return ServingModel.load(ModelRegistry(root).path(version), device="cpu", top_k=3)


# ---------------------------------------------------------------------------- strategies
#
# Hypothesis draws a few records per example from the strategies below (shrinkable), and a
# seed for :class:`FastRecords`, which makes the bulk of each batch from the same families of
# shapes ~100x cheaper than Hypothesis can draw them; so the batches are large and the suite
# stays fast.

INT64 = (-(2**63), 2**63 - 1)
EDGE_FLOATS = [
    0.0,
    -0.0,
    5e-324,
    1.17549435e-38,
    3.4028234e38,  # float32 max: scaling may overflow it
    -3.4028234e38,
    3.5e38,  # beyond float32
    1e308,
    float("nan"),
    float("inf"),
    -float("inf"),
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(*INT64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
# Feature values: mostly plausible numbers (so that most records reach the model), otherwise an
# edge case: any double (beyond float32, subnormal, NaN, inf), an integer of any size, a number
# near the float32 limit, or any JSON value (strings, null, booleans, nesting).
plausible = st.one_of(st.floats(-1e4, 1e4, width=32), st.integers(-(10**6), 10**6))
edge_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**400), 10**400),
    st.sampled_from(EDGE_FLOATS),
    json_values,
)


@st.composite
def feature_values(draw):
    return draw(plausible if draw(st.integers(0, 7)) else edge_values)


keys = st.one_of(st.integers(*INT64), st.text(max_size=10), st.none(), json_values)


@st.composite
def json_objects(draw):
    """A record-shaped object: each feature present (any value) or missing, an id, extras."""
    obj = {}
    if draw(st.booleans()):
        obj["id"] = draw(keys)
    for c in kit.COLUMNS:
        if draw(st.integers(0, 15)):
            obj[c] = draw(feature_values())
    obj.update(draw(st.dictionaries(st.text(max_size=4), json_values, max_size=2)))
    return obj


def _dumps(obj) -> str:
    # Python's encoder writes NaN / Infinity literals and integers of any size.
    return json.dumps(obj, allow_nan=True)


def _encode(text: str, how: str, mutations: list[tuple[int, str, int, bytes]]) -> bytes | str:
    """JSON text as a record value: UTF-8 bytes, str, UTF-16, Latin-1, or mutated UTF-8."""
    if how == "str":
        return text
    if how == "utf16":
        return text.encode("utf-16")
    if how == "latin1":
        return text.encode("latin-1", errors="replace")
    raw = bytearray(text.encode())
    for at, op, bit, insert in mutations if how == "mutate" else []:
        if not raw:
            break
        at %= len(raw)
        if op == "flip":
            raw[at] ^= 1 << bit
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = insert
    return bytes(raw)


ENCODINGS = ["utf8", "utf8", "utf8", "utf8", "str", "utf16", "latin1", "mutate"]
MUTATIONS = ["flip", "cut", "insert"]
mutation = st.tuples(
    st.integers(0, 2**16),
    st.sampled_from(MUTATIONS),
    st.integers(0, 7),
    st.binary(min_size=1, max_size=4),
)


@st.composite
def json_records(draw):
    """JSON text of a record-shaped object or any JSON value (see :func:`_encode`)."""
    doc = draw(st.one_of(json_objects(), json_objects(), json_values))
    how = draw(st.sampled_from(ENCODINGS))
    return _encode(_dumps(doc), how, draw(st.lists(mutation, min_size=1, max_size=3)))


raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b"{" + b),
    st.sampled_from(kit.POISON_VALUES),
    st.just(b""),
)

Point = namedtuple("Point", kit.COLUMNS)  # a Row-like record type (has _asdict)
ODD_VALUES = [b"1.0", 1 + 2j, {1, 2}, np.float64("nan"), np.float32(3.0), np.int64(7), object()]


@st.composite
def python_records(draw):
    """Records that are Python objects (Beam elements): dicts with odd values, Row-likes,
    non-mapping values, and Kafka records with arbitrary key and value bytes."""
    kind = draw(st.sampled_from(["dict", "odd", "row", "scalar", "kafka"]))
    if kind == "dict":
        return draw(json_objects())
    if kind == "odd":
        obj = draw(json_objects())
        obj[draw(st.sampled_from(kit.COLUMNS))] = draw(st.sampled_from(ODD_VALUES))
        return obj
    if kind == "row":
        return Point(*draw(st.lists(feature_values(), min_size=6, max_size=6)))
    if kind == "scalar":
        return draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=3)))
    value = draw(st.one_of(json_records(), raw_bytes))
    if isinstance(value, str):
        value = value.encode()
    key = draw(st.binary(max_size=8) | st.none())
    return KafkaRecord("fuzz", draw(st.integers(0, 3)), 0, -1, key, value)


class FastRecords:
    """The families above, drawn from a seeded ``random.Random`` (cheap, reproducible)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def text(self, n: int = 8) -> str:
        r = self.r
        alphabet = 'abcxyz f0123_-"\\\u00e9\u2603\U0001f600\x00\n'
        return "".join(r.choice(alphabet) for _ in range(r.randint(0, n)))

    def scalar(self):
        r = self.r
        kind = r.randrange(6)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.randint(*INT64)
        if kind == 3:
            return r.choice(EDGE_FLOATS) if r.random() < 0.3 else r.uniform(-1e9, 1e9)
        if kind == 4:
            return self.text()
        return r.randint(-100, 100)

    def value(self, depth: int = 0):
        r = self.r
        if depth > 2 or r.random() < 0.6:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randint(0, 3))]
        return {self.text(4): self.value(depth + 1) for _ in range(r.randint(0, 3))}

    def feature(self):
        r = self.r
        if r.random() < 0.95:
            return r.uniform(-1e4, 1e4) if r.random() < 0.7 else r.randint(-(10**6), 10**6)
        kind = r.randrange(4)
        if kind == 0:
            return r.choice(EDGE_FLOATS)
        if kind == 1:
            return r.choice([1, -1]) * r.randint(2**62, 10 ** r.randint(19, 400))
        if kind == 2:
            return r.uniform(-3.5e38, 3.5e38)
        return self.value()

    def obj(self) -> dict:
        r = self.r
        obj: dict = {}
        if r.random() < 0.5:
            obj["id"] = r.choice([r.randint(*INT64), self.text(10), None, self.value()])
        for c in kit.COLUMNS:
            if r.random() < 15 / 16:
                obj[c] = self.feature()
        for _ in range(r.randrange(3)):
            obj[self.text(4)] = self.value()
        return obj

    def json_record(self):
        r = self.r
        doc = self.obj() if r.random() < 0.8 else self.value()
        mutations = [
            (
                r.randrange(2**16),
                r.choice(["flip", "cut", "insert"]),
                r.randrange(8),
                r.randbytes(2),
            )
            for _ in range(r.randint(1, 3))
        ]
        return _encode(_dumps(doc), r.choice(ENCODINGS), mutations)

    def raw(self) -> bytes:
        r = self.r
        kind = r.randrange(4)
        if kind == 0:
            return r.randbytes(r.randrange(64))
        if kind == 1:
            return b"{" + r.randbytes(r.randrange(64))
        if kind == 2:
            return r.choice(kit.POISON_VALUES)
        return b""

    def python_record(self):
        r = self.r
        kind = r.randrange(5)
        if kind == 0:
            return self.obj()
        if kind == 1:
            obj = self.obj()
            obj[r.choice(kit.COLUMNS)] = r.choice(ODD_VALUES)
            return obj
        if kind == 2:
            return Point(*(self.feature() for _ in kit.COLUMNS))
        if kind == 3:
            return self.value()
        value = self.json_record() if r.random() < 0.7 else self.raw()
        value = value.encode() if isinstance(value, str) else value
        key = r.choice([None, r.randbytes(r.randrange(8))])
        return KafkaRecord("fuzz", r.randrange(4), 0, -1, key, value)


# ---------------------------------------------------------------------------- the check


def _original_matches(letter: dict, value) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64decode(letter["value_b64"]) == bytes(value)
    if isinstance(value, str):
        return letter["value"] == value
    return "value" in letter


def _finite_numbers(output: dict) -> bool:
    numbers = []
    for name in ("score", "latent"):
        v = output.get(name)
        numbers.extend(v if isinstance(v, list) else [v] if v is not None else [])
    for name in ("reconstruction", "contributions"):
        v = output.get(name)
        if isinstance(v, dict):
            numbers.extend(v.values())
        elif isinstance(v, list):
            numbers.extend(v)
    return all(math.isfinite(x) for x in numbers)


def check_batch(model: ServingModel, batch: list, mode: str, tally: Counter) -> None:
    n = len(batch)
    kafka = [isinstance(v, KafkaRecord) for v in batch]
    values = [v.value if k else v for v, k in zip(batch, kafka, strict=True)]

    decoded = decode_records(values, model.spec)
    assert len(decoded.matrix) + len(decoded.errors) == n
    assert sorted(decoded.index + [e.index for e in decoded.errors]) == list(range(n))
    assert decoded.matrix.shape == (len(decoded.index), model.input_dim)
    assert np.isfinite(decoded.matrix).all()
    for err in decoded.errors:
        assert err.reason in REASONS and err.detail

    if any(kafka):  # Kafka records: coordinates come from the records themselves
        sources = None
        # Unique offsets (the drawn partitions and keys are kept).
        records = [
            KafkaRecord("fuzz", v.partition, i, -1, v.key, v.value)
            if k
            else KafkaRecord("fuzz", 9, i, -1, None, v)
            for i, (v, k) in enumerate(zip(batch, kafka, strict=True))
        ]
        coordinates = [(r.partition, r.offset) for r in records]
        inputs = records
    else:
        sources = [Source("fuzz", 0, i, key=b"k%d" % i) for i in range(n)]
        coordinates = [(0, i) for i in range(n)]
        inputs = batch
    results, dead = model.score_records(inputs, mode, sources=sources)

    # Every record: exactly one output, the same verdict as the decoder.
    assert len(results) + len(dead) == n
    where = {c: i for i, c in enumerate(coordinates)}
    assert sorted(where[(o["partition"], o["offset"])] for o in results + dead) == list(range(n))
    scored = sorted(where[(o["partition"], o["offset"])] for o in results)
    # The decoder's rows are scored, except values that overflow once scaled: non_finite.
    assert set(scored) <= set(decoded.index)
    overflowed = set(decoded.index) - set(scored)
    for o in dead:
        if where[(o["partition"], o["offset"])] in overflowed:
            assert o["reason"] == "non_finite" and "after scaling" in o["detail"], o
    reasons = {e.index: e.reason for e in decoded.errors}
    expected_reasons = [*reasons.values(), *["non_finite"] * len(overflowed)]
    assert sorted(expected_reasons) == sorted(d["reason"] for d in dead)
    for letter in dead:
        assert letter["reason"] in REASONS and letter["detail"]
        assert letter["model_version"] == model.version
        assert _original_matches(letter, values[where[(letter["partition"], letter["offset"])]])
    for result in results:
        assert result["model_version"] == model.version
        if mode == "flag":
            assert isinstance(result["is_anomaly"], bool)
        if not _finite_numbers(result):
            tally["non_finite_results"] += 1
            if mode == "flag" and not result["is_anomaly"]:
                tally["non_finite_not_flagged"] += 1
            assert mode != "flag" or result["is_anomaly"], result  # extreme -> flagged
    # As the consumer and the Beam job write them: a Kafka message of valid JSON each.
    for output in results + dead:
        _, value, headers = to_message(output)  # ints beyond 64 bits included
        decoded_output = json.loads(value)
        assert decoded_output["model_version"] == model.version
        assert dict(headers)["model_version"] == model.version.encode()
    tally["examples"] += 1
    tally["records"] += n
    tally["results"] += len(results)
    tally["dead_letters"] += len(dead)
    for letter in dead:
        tally[f"reason:{letter['reason']}"] += 1


def _run(model, drawn, fast, max_examples: int) -> Counter:
    """``max_examples`` batches of 8-48 :class:`FastRecords` (``fast(gen)``) with up to three
    Hypothesis-drawn records (``drawn``) at random places, each in a random mode."""
    tally: Counter = Counter()

    @settings(max_examples=max_examples, **FUZZ_SETTINGS)
    @given(
        drawn=st.lists(drawn, max_size=3),
        seed=st.integers(0, 2**32 - 1),
        n=st.integers(8, 48),
        mode=st.sampled_from(MODES),
    )
    def check(drawn, seed, n, mode):
        gen = FastRecords(seed)
        batch = [fast(gen) for _ in range(n)]
        for record in drawn:
            batch.insert(gen.r.randint(0, len(batch)), record)
        check_batch(model, batch, mode, tally)

    check()  # raises on the first crash or unaccounted record
    rel.FUZZ.update(tally)
    return tally


def test_fuzz_raw_bytes(serving):
    tally = _run(
        serving,
        st.one_of(raw_bytes, json_records()),
        lambda g: g.raw() if g.r.random() < 0.5 else g.json_record(),
        EXAMPLES,
    )
    assert tally["results"] > 0 and tally["dead_letters"] > 0


def test_fuzz_json_shapes(serving):
    tally = _run(serving, json_records(), FastRecords.json_record, EXAMPLES)
    assert tally["results"] > 0
    # The generators reach every reason the decoder has for JSON records.
    assert {r for r in REASONS if tally[f"reason:{r}"]} >= {
        "bad_json",
        "not_object",
        "missing_field",
        "non_numeric",
        "non_finite",
    }


def test_fuzz_python_records(serving):
    tally = _run(serving, python_records(), FastRecords.python_record, EXAMPLES)
    assert tally["results"] > 0


def test_fuzz_total_is_at_least_10000_records():
    if rel.FUZZ["records"] < 3 * EXAMPLES * 8:
        pytest.skip("counts the records of the three fuzz tests above; run them together")
    assert rel.FUZZ["records"] >= 10_000, rel.FUZZ
    rel.FUZZ.update(unaccounted=0, crashes=0)
