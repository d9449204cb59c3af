"""Beam's cross-language Java KafkaIO, expanded from the local classpath and run in a local
Java worker pool (no Docker), on Prism: a round trip through Kafka."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from ae_pipeline.beam.kafka_read import ReadKafkaRecords
from ae_pipeline.beam.kafka_xlang import java_read, java_write
from ae_pipeline.local.java_xlang import JavaWorkerPool, java_expansion_service
from ae_pipeline.local.paths import LocalToolMissing

pytestmark = [pytest.mark.kafka, pytest.mark.prism, pytest.mark.slow, pytest.mark.beam_jars]

N = 20


@pytest.fixture(scope="module")
def java_pool():
    pool = JavaWorkerPool()
    try:
        pool.start()
    except LocalToolMissing as e:
        pytest.skip(str(e))
    yield pool
    pool.stop()


def test_java_read_and_write_round_trip_on_prism(
    java_pool, kafka_config, new_topic, produce, beam_options
):
    source, copy = new_topic(2), new_topic(1)
    produce(source, N, 2)
    config = kafka_config.with_group(None)
    service = java_expansion_service(java_pool.address)
    with beam.Pipeline(options=beam_options("prism")) as p:
        pairs = p | java_read(source, config, service, max_num_records=N)
        assert_that(
            pairs | beam.Map(lambda kv: (kv[0], kv[1])),
            equal_to([(f"k{i}".encode(), f"v{i}".encode()) for i in range(N)]),
        )
        _ = (
            pairs
            | beam.Map(lambda kv: (kv[0], kv[1] + b"!")).with_output_types(tuple[bytes, bytes])
            | java_write(copy, config, service)
        )
    with beam.Pipeline(options=beam_options("fnapi")) as p:
        copied = (
            p
            | ReadKafkaRecords(copy, config, bounded=True)
            | beam.FlatMap(lambda batch: [r.value for r in batch])
        )
        assert_that(copied, equal_to([f"v{i}!".encode() for i in range(N)]))
