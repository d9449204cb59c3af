"""ReadKafkaRecords (a splittable DoFn over partitions) on FnApiRunner, Prism and Flink."""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from ae_pipeline.beam.kafka_read import ReadKafkaRecords
from ae_pipeline.kafka import TopicPartition, committed_offsets, end_offsets

pytestmark = pytest.mark.kafka

N = 60
PARTITIONS = 3


def _triples(batch):
    return [(r.topic, r.partition, r.offset) for r in batch]


def _bounded_read(options, topic, config, expected, **read_args):
    with beam.Pipeline(options=options) as p:
        triples = (
            p | ReadKafkaRecords(topic, config, bounded=True, **read_args) | beam.FlatMap(_triples)
        )
        assert_that(triples, equal_to(expected))


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
@pytest.mark.parametrize("runner", ["fnapi", pytest.param("prism", marks=pytest.mark.prism)])
def test_bounded_read_gives_exactly_the_records(
    runner, client, kafka_config, new_topic, produce, beam_options
):
    topic = new_topic(PARTITIONS)
    expected = produce(topic, N, PARTITIONS)
    _bounded_read(
        beam_options(runner),
        topic,
        kafka_config.with_group(None),
        expected,
        client=client,
        max_batch_size=7,
    )


def test_bounded_by_records_per_partition_and_by_time(
    kafka_config, new_topic, produce, beam_options
):
    topic = new_topic(PARTITIONS)
    everything = produce(topic, N, PARTITIONS)
    config = kafka_config.with_group(None)
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        first = p | ReadKafkaRecords(topic, config, max_records_per_partition=5)
        assert_that(
            first | beam.FlatMap(_triples),
            equal_to([(topic, p, o) for p in range(PARTITIONS) for o in range(5)]),
        )
    # max_seconds alone: read what arrives (here, what is there), then stop at the deadline.
    t0 = time.monotonic()
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        timed = p | ReadKafkaRecords(topic, config, max_seconds=3, poll_timeout_s=0.2)
        assert_that(timed | beam.FlatMap(_triples), equal_to(everything))
    assert 3 <= time.monotonic() - t0 < 30


def _committed_when_seen(config):
    """A DoFn step that, while the read's bundle is still running, looks up the group's
    committed offset of each batch's partition."""

    def check(batch):
        tp = batch[0].topic_partition
        committed = committed_offsets(config, [tp])[tp]
        return [(r.topic, r.partition, r.offset, committed) for r in batch]

    return beam.FlatMap(check)


@pytest.mark.parametrize(
    "runner, client",
    [("fnapi", "kafka-python"), pytest.param("prism", "confluent", marks=pytest.mark.prism)],
)
def test_group_offsets_are_committed_after_the_bundle_and_resumed(
    runner, client, kafka_config, new_topic, produce, beam_options
):
    topic = new_topic(PARTITIONS)
    first = produce(topic, N, PARTITIONS)
    # start="committed" by default with a group; a group without commits starts at earliest.
    _bounded_read(beam_options(runner), topic, kafka_config, first, client=client)
    ends = end_offsets(kafka_config, topic)
    assert committed_offsets(kafka_config, topic) == ends

    second = produce(topic, 15, PARTITIONS, start=N)
    with beam.Pipeline(options=beam_options(runner)) as p:
        seen = (
            p
            | ReadKafkaRecords(topic, kafka_config, client=client, bounded=True)
            | _committed_when_seen(kafka_config)
        )
        # Only the new records; and while they were being read, nothing past them was
        # committed: the commit waits for the bundle finalizer.
        assert_that(
            seen,
            equal_to([(t, p, o, ends[TopicPartition(t, p)]) for t, p, o in second]),
        )
    assert committed_offsets(kafka_config, topic) == end_offsets(kafka_config, topic)


@pytest.mark.flink
@pytest.mark.slow
def test_bounded_read_on_flink_batch(kafka_config, new_topic, produce, beam_options):
    topic = new_topic(PARTITIONS)
    expected = produce(topic, N, PARTITIONS)
    # Flink's portable batch mode has no bundle finalization: commits need --streaming.
    with pytest.raises(ValueError, match="commit_offsets=False, or run with --streaming"):
        _bounded_read(beam_options("flink"), topic, kafka_config, expected)
    _bounded_read(
        beam_options("flink"),
        topic,
        kafka_config,
        expected,
        client="confluent",
        commit_offsets=False,
    )
    assert set(committed_offsets(kafka_config, topic).values()) == {None}


def test_kafka_records_get_their_own_coder():
    from apache_beam import coders
    from apache_beam.typehints import native_type_compatibility

    from ae_pipeline.beam.kafka_partitions import KafkaRecordCoder
    from ae_pipeline.kafka import KafkaRecord

    batch = [
        KafkaRecord("t", 1, 7, 1_700_000_000_000, None, b"v", (("h", b"1"), ("n", None))),
        KafkaRecord("t", 0, 0, -1, b"k", None),
    ]
    hint = native_type_compatibility.convert_to_beam_type(list[KafkaRecord])
    coder = coders.registry.get_coder(hint)
    assert repr(coder) == f"ListCoder[{KafkaRecordCoder.__name__}]"
    assert coder.decode(coder.encode(batch)) == batch


@pytest.mark.prism
def test_a_committing_read_on_prism_runs_without_finalizer_tracebacks(
    kafka_config, new_topic, produce, beam_options, caplog
):
    """Prism 2.62 finalizes every bundle of a step whose transform asks for finalization, also
    those that never ran the read; the SDK harness then logs "Bundle is not in a finalizable
    state" tracebacks. The read on Prism avoids it (no reshuffle before it), and commits."""
    topic = new_topic(PARTITIONS)
    expected = produce(topic, 10, PARTITIONS - 1)  # the last partition stays empty
    caplog.set_level("ERROR")
    for _ in range(2):  # the noise came in some runs only
        _bounded_read(beam_options("prism"), topic, kafka_config, expected, start="earliest")
    assert "finalizable" not in caplog.text
    ends = {tp: n for tp, n in end_offsets(kafka_config, topic).items() if n}
    committed = committed_offsets(kafka_config, topic)
    assert {tp: committed[tp] for tp in ends} == ends


def test_the_read_gives_up_on_an_offset_it_keeps_failing_to_read_but_not_on_an_outage():
    """Pure logic: a read error that is not an outage, five times in a row at one offset,
    fails the bundle with the offset named; an outage is retried for as long as it lasts."""
    from ae_pipeline.beam.kafka_read import _ReadPartitionsFn
    from ae_pipeline.kafka import BrokerUnreachableError, KafkaClientError, KafkaConfig

    fn = _ReadPartitionsFn(
        KafkaConfig("127.0.0.1:1"),
        "kafka-python",
        {
            "batch": True,
            "max_batch_size": 10,
            "poll_timeout_s": 0.1,
            "max_bundle_seconds": 1.0,
            "idle_watermark_lag_s": 1.0,
            "max_cached_consumers": 2,
        },
    )
    fn.setup()
    tp = TopicPartition("t", 0)
    outages = [
        KafkaClientError("poll failed: KafkaTimeoutError: timed out"),
        BrokerUnreachableError("nothing answered for 30s", "127.0.0.1:1", 30.0),
    ]
    for outage in outages:
        for _ in range(20):
            fn._give_up_on_a_stuck_offset(tp, 7, outage)
    undecodable = KafkaClientError("poll failed: UnsupportedCodecError: lz4 not available")
    for offset in (7, 8, 8, 8, 8):  # a new offset starts the count again
        fn._give_up_on_a_stuck_offset(tp, offset, undecodable)
    with pytest.raises(RuntimeError, match=r"cannot read t\[0\] at offset 8: the same error 5"):
        fn._give_up_on_a_stuck_offset(tp, 8, undecodable)
