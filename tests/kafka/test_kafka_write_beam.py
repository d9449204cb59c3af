"""WriteKafkaRecords: a round trip through Kafka, and delivery failures that fail the job."""

from __future__ import annotations

import time
import uuid

import apache_beam as beam
import pytest

from ae_pipeline.beam import ReadKafkaRecords, WriteKafkaRecords
from ae_pipeline.kafka import KafkaRecord, TopicPartition, create_consumer, topic_partitions

pytestmark = pytest.mark.kafka

N = 40
PARTITIONS = 2


def _consume_all(config, topic: str, n: int) -> list[KafkaRecord]:
    with create_consumer(config.with_group(None)) as consumer:
        parts = consumer.partitions(topic)
        consumer.assign({TopicPartition(topic, p): 0 for p in parts})
        out: list[KafkaRecord] = []
        deadline = time.monotonic() + 20
        while len(out) < n and time.monotonic() < deadline:
            out.extend(consumer.poll(0.5, 500))
        assert consumer.poll(0.3, 500) == []
    return out


@pytest.mark.parametrize(
    "read_client, write_client", [("kafka-python", "confluent"), ("confluent", "kafka-python")]
)
def test_round_trip_of_batches_records_and_tuples(
    read_client, write_client, kafka_config, new_topic, produce, beam_options
):
    source, copy, tuples = new_topic(PARTITIONS), new_topic(1), new_topic(1)
    produce(source, N, PARTITIONS)
    config = kafka_config.with_group(None)
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        batches = p | ReadKafkaRecords(source, config, client=read_client, bounded=True)
        _ = batches | "CopyBatches" >> WriteKafkaRecords(copy, config, client=write_client)
        _ = (
            p
            | beam.Impulse()
            | beam.FlatMap(lambda _: [(b"k1", b"v1", [("h", b"x")]), ("k2", "v2"), (None, b"v3")])
            | "WriteTuples" >> WriteKafkaRecords(tuples, config, client=write_client)
        )
    copied = _consume_all(config, copy, N)
    assert sorted((r.key, r.value) for r in copied) == sorted(
        (f"k{i}".encode(), f"v{i}".encode()) for i in range(N)
    )
    written = sorted(_consume_all(config, tuples, 3), key=lambda r: r.value)
    assert [(r.key, r.value, r.headers) for r in written] == [
        (b"k1", b"v1", (("h", b"x"),)),
        (b"k2", b"v2", ()),
        (None, b"v3", ()),
    ]


def test_records_keep_their_own_topics_without_a_topic(kafka_config, new_topic, beam_options):
    a, b = new_topic(1), new_topic(1)
    records = [KafkaRecord(a, 0, -1, -1, b"ka", b"va"), KafkaRecord(b, 0, -1, -1, None, b"vb")]
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        _ = (
            p
            | beam.Impulse()
            | beam.FlatMap(lambda _: records)
            | WriteKafkaRecords(None, kafka_config)
        )
    assert [(r.key, r.value) for r in _consume_all(kafka_config, a, 1)] == [(b"ka", b"va")]
    assert [(r.key, r.value) for r in _consume_all(kafka_config, b, 1)] == [(None, b"vb")]


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_delivery_failure_fails_the_bundle_with_a_clear_error(client, kafka_config, beam_options):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"small-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_config.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "200"})])
    finally:
        admin.close()
    topic_partitions(kafka_config, topic)
    p = beam.Pipeline(options=beam_options("fnapi"))
    _ = (
        p
        | beam.Impulse()
        | beam.Map(lambda _: (b"k", b"x" * 5_000))
        | WriteKafkaRecords(topic, kafka_config, client=client)
    )
    t0 = time.monotonic()
    with pytest.raises(Exception, match="records were not delivered") as info:
        p.run().wait_until_finish()
    assert "DeliveryError" in str(info.value)
    # A record too large is not worth sending again (only an unreachable broker is): the
    # bundle fails at once, not after WriteKafkaRecords' retry_timeout_s.
    assert time.monotonic() - t0 < 60


def test_unsupported_elements_are_refused(kafka_config, beam_options):
    p = beam.Pipeline(options=beam_options("fnapi"))
    _ = p | beam.Impulse() | beam.Map(lambda _: 42) | WriteKafkaRecords("t", kafka_config)
    with pytest.raises(Exception, match="takes \\(key, value"):
        p.run().wait_until_finish()


def test_a_message_over_max_message_bytes_is_returned_and_the_rest_written(
    kafka_config, new_topic, beam_options
):
    """One message over the limit is never sent (the broker would refuse it, and with it the
    bundle's other partitions): it comes back on the output; the others are all written."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.util import assert_that, equal_to

    topic = new_topic(PARTITIONS)
    config = kafka_config.with_group(None)
    small = [KafkaRecord(topic, i % PARTITIONS, 0, -1, b"k%d" % i, b"v%d" % i) for i in range(10)]
    big = KafkaRecord(topic, 0, 0, -1, b"big", b"x" * 5000, (("h", b"y"),))
    p = beam.Pipeline(options=beam_options("fnapi"))
    refused = (
        p
        | beam.Create([[*small[:5], big, *small[5:]]], reshuffle=False)
        | WriteKafkaRecords(None, config, max_message_bytes=2000)
    )
    assert_that(
        refused | beam.MapTuple(lambda t, k, v, h: (t, k, len(v), h)),
        equal_to([(topic, b"big", 5000, [("h", b"y")])]),
    )
    result = p.run()
    result.wait_until_finish()
    written = _consume_all(config, topic, 10)
    assert sorted(r.value for r in written) == sorted(r.value for r in small)
    counters = result.metrics().query(MetricsFilter().with_name("records_too_large"))["counters"]
    assert sum(c.committed for c in counters) == 1
