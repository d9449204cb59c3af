"""Fixtures for the Kafka layer tests: fresh topics and produced records on the real broker."""

from __future__ import annotations

import functools
import logging
import uuid

import pytest
from kit.logs import all_logs  # noqa: F401 (a fixture)

from ae_pipeline.kafka import KafkaConfig, create_producer, create_topics


@pytest.fixture
def kafka_config(bootstrap_servers) -> KafkaConfig:
    """A config for the session broker with a fresh consumer group."""
    return KafkaConfig(bootstrap_servers, group_id=f"group-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def new_topic(kafka_config):
    """``new_topic(partitions=1, prefix="t")``: creates a uniquely named topic."""

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        create_topics(kafka_config, {name: partitions})
        return name

    return make


@pytest.fixture
def produce(kafka_config):
    """``produce(topic, n, partitions, start=0)``: see :func:`produce_records`."""
    return functools.partial(produce_records, kafka_config)


def produce_records(
    config, topic: str, n: int, partitions: int, *, start: int = 0, client="confluent"
):
    """Produce records ``start..start+n-1`` round-robin over partitions (value ``v<i>``,
    key ``k<i>``) to a topic written only by this function; returns their
    ``(topic, partition, offset)`` triples."""
    try:
        producer = create_producer(config, client)
    except ImportError:
        producer = create_producer(config, "kafka-python")
    with producer:
        for i in range(start, start + n):
            producer.send(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=i % partitions)
        producer.flush(30)
    # Record i is the (i // partitions)-th record of partition i % partitions.
    return [(topic, i % partitions, i // partitions) for i in range(start, start + n)]


@pytest.fixture(scope="session")
def quiet_abandoned_clients(kafka_broker):
    """For tests that cancel streaming pipelines: Beam never tears down their DoFns, whose
    librdkafka consumers log connection errors once the broker stops at the end of the
    session; silence them just before it stops."""
    yield
    logging.getLogger("ae_pipeline.kafka.librdkafka").setLevel(logging.CRITICAL + 1)
