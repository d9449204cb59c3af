"""Regression tests of bugs the reliability suite found (all fixed): ints beyond 64 bits in
records or keys broke result/dead-letter serialisation (and so the plain consumer, which replayed
the batch forever); a finite value near the float32 limit overflowed when scaled and was scored
NaN, i.e. never flagged. Now such records are written, and the overflow is a non_finite dead
letter."""

from __future__ import annotations

import json
import uuid

import kit
import pytest

from ae_pipeline.consumer import ScoringConsumer
from ae_pipeline.registry import ModelRegistry
from ae_pipeline.serving import ServingModel, to_message

# Scaling a value near the float32 limit overflows (then dead-lettered): the warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

# orjson refuses the NaN of "note", so decode_records falls back to Python's json, which
# keeps the id as an int beyond 64 bits; orjson cannot write it back.
BIG_ID = (
    b'{"id": 123456789012345678901234567890, "note": NaN, '
    b'"f0": 50, "f1": -3, "f2": 0, "f3": 7, "f4": 1000, "f5": 2}'
)


@pytest.fixture(scope="module")
def serving(trained, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bug-models"))
    version = kit.publish(root, trained)
    return ServingModel.load(ModelRegistry(root).path(version), device="cpu")


@pytest.mark.parametrize("mode", ["flag", "encode", "denoise"])
def test_a_record_with_an_id_beyond_64_bits_can_be_written(serving, mode):
    results, dead = serving.score_records([BIG_ID], mode)
    for output in results + dead:
        json.loads(to_message(output)[1])


def test_the_dead_letter_of_a_python_record_with_a_huge_int_can_be_written(serving):
    results, dead = serving.score_records([{"id": 1, "f0": 2**70}], "flag")
    assert not results and dead[0]["reason"] == "missing_field"
    json.loads(to_message(dead[0])[1])


def test_an_extreme_but_finite_record_is_flagged_or_dead_lettered(serving):
    record = {"id": 1, **{c: 1.0 for c in kit.COLUMNS}, "f5": 3.0e38}  # f5's scale is ~0.1
    results, dead = serving.score_records([json.dumps(record).encode()], "flag")
    if dead:
        assert dead[0]["reason"] == "non_finite"
    else:
        assert results[0]["is_anomaly"] is True, results[0]


@pytest.mark.kafka
def test_the_consumer_survives_a_record_with_an_id_beyond_64_bits(broker, model_root):
    root, _ = model_root
    bootstrap = broker.bootstrap_servers
    inp, out, dlq = kit.new_topics(bootstrap, partitions=1)
    values = [*kit.stream_values(0, 5, poison_every=0), BIG_ID, *kit.stream_values(5, 5)]
    kit.produce(bootstrap, inp, values)
    consumer = ScoringConsumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}"},
        input_topic=inp,
        output_topic=out,
        dead_letter_topic=dlq,
        model_root=root,
        device="cpu",
    )
    with consumer:
        stats = consumer.run(max_records=len(values), idle_timeout_s=15)
    assert stats.records_in == len(values) == stats.results + stats.dead_letters
